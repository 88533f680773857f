"""lionk toy / compare / sweep: exact pieces (optimum solver, schedule, parsing, determinism), tiny end-to-end runs, one-line errors."""

import contextlib
import io
import json
import math
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import lionk.cli.runs
from lionk.cli import main
from lionk.cli.compare import format_diagnostics, format_table
from lionk.cli.data import load_corpus, stdlib_text
from lionk.cli.gpt import GPT, GPTConfig
from lionk.cli.machine import OtherLoad
from lionk.cli.runs import seed_list, worker_count
from lionk.cli.stats import paired_difference, plus_minus, spread
from lionk.cli.toy import run_kernel, theoretical_optimum
from lionk.cli.training import (
    OptimSpec,
    RunResult,
    Settings,
    _make_optimizer,
    hyperparameters,
    initial_state,
    lr_at,
    parse_optims,
    schedule_of,
    train,
)
from lionk.kernels import get_kernel

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
TINY = ["--steps", "4", "--batch-size", "2", "--block-size", "8", "--n-layer", "1", "--n-head", "2", "--n-embd", "16"]
TINY += ["--eval-iters", "1", "--eval-interval", "2", "--warmup", "1", "--threads", "1", "--jobs", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    return path


def _error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


# -- toy ---------------------------------------------------------------------------------------


H, A = (1.0, 4.0), (2.5, 0.6)


@pytest.mark.parametrize("wd", [1.0, 0.5, 2.0])
def test_optimum_closed_forms(wd):
    """sign: clip(a, 1/wd); quadratic: (H + wd I)^-1 H a; l2 with isotropic H: a * min(1, (1/wd)/||a||)."""
    assert theoretical_optimum(get_kernel("sign"), H, A, wd) == pytest.approx([max(-1 / wd, min(1 / wd, a)) for a in A], abs=1e-12)
    assert theoretical_optimum(get_kernel("quadratic"), H, A, wd) == pytest.approx([h * a / (h + wd) for h, a in zip(H, A)], abs=1e-12)
    scale = min(1.0, (1 / wd) / math.hypot(*A))
    assert theoretical_optimum(get_kernel("l2"), (3.0, 3.0), A, wd) == pytest.approx([a * scale for a in A], abs=1e-12)


def test_optimum_satisfies_the_fixed_point_condition():
    """wd x* = grad K(H (a - x*)) for Huber and relativistic (elementwise), and the KKT point of the l2 ball."""
    for spec in ("huber(a=1.0)", "relativistic(a=1.0)", "huber(a=0.3)"):
        kernel = get_kernel(spec)
        x = torch.tensor(theoretical_optimum(kernel, H, A, 1.0), dtype=torch.float64)
        c = torch.tensor(H, dtype=torch.float64) * (torch.tensor(A, dtype=torch.float64) - x)
        assert torch.allclose(x, kernel.direction(c), atol=1e-12)
    x = torch.tensor(theoretical_optimum(get_kernel("l2"), H, A, 1.0), dtype=torch.float64)
    assert float(x.norm()) == pytest.approx(1.0, abs=1e-12)
    grad = torch.tensor(H, dtype=torch.float64) * (x - torch.tensor(A, dtype=torch.float64))
    assert float(grad[0] * x[1] - grad[1] * x[0]) == pytest.approx(0.0, abs=1e-12)  # -grad f parallel to x
    assert float(grad @ x) < 0


def test_toy_runs_reach_the_optimum_within_the_phase1_bound():
    class Args:
        steps, lr, wd, beta1, beta2, tol = 600, 0.05, 1.0, 0.9, 0.99, 1e-3

    for spec, norm in (("sign", math.inf), ("l2", 2.0)):
        optimum = torch.tensor(theoretical_optimum(get_kernel(spec), H, A, 1.0), dtype=torch.float64)
        for traj in run_kernel(spec, norm, Args):
            assert float((traj.points[-1] - optimum).norm()) < 1e-3
            assert traj.steps_in is not None and traj.bound_steps is not None
            assert traj.steps_in <= traj.bound_steps


def test_toy_cli_prints_tables_and_writes_png(tmp_path, capsys):
    assert main(["toy", "--steps", "100", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("sign (Lion)", "l2", "quadratic", "Huber", "relativistic"):
        assert label in out
    assert "steps in" in out and "bound" in out
    assert (tmp_path / "toy.png").stat().st_size > 1000


# -- data, model, schedule, parsing -----------------------------------------------------------


def test_corpus_split_and_batches(text_file):
    corpus = load_corpus(str(text_file))
    n = len(text_file.read_text())
    assert len(corpus.train) == int(n * 0.9) and len(corpus.train) + len(corpus.val) == n
    assert corpus.chars == "".join(sorted(set(text_file.read_text())))
    x, y = corpus.batch("train", 3, 8, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_default_corpus_is_stdlib_source_and_deterministic():
    text = stdlib_text(5000)
    assert len(text) == 5000 and text == stdlib_text(5000)
    assert "import" in stdlib_text()


def test_gpt_baby_shape():
    model = GPT(GPTConfig(vocab_size=65))
    n = sum(p.numel() for p in model.parameters())
    assert n - 64 * 128 == 795_904  # nanoGPT prints 0.80M (position embeddings excluded)
    assert model.lm_head.weight is model.wte.weight
    logits, loss = model(torch.zeros(2, 64, dtype=torch.long), torch.zeros(2, 64, dtype=torch.long))
    assert logits.shape == (2, 64, 65) and loss.ndim == 0


def test_lr_schedule_is_nanogpts():
    s = Settings(steps=2000, warmup=100, min_lr_ratio=0.1)
    assert lr_at(0, 1e-3, s) == pytest.approx(1e-3 / 101)
    assert lr_at(99, 1e-3, s) == pytest.approx(1e-3 * 100 / 101)
    assert lr_at(100, 1e-3, s) == pytest.approx(1e-3)
    assert lr_at(1050, 1e-3, s) == pytest.approx(1e-4 + 0.5 * 0.9e-3)
    assert lr_at(2000, 1e-3, s) == pytest.approx(1e-4)


def test_parse_optims_and_hyperparameters():
    specs = parse_optims("lion,lion:kernel=l2,lion:kernel=huber(a=0.5):lr=1e-4,adamw:wd=0.01")
    assert [s.name for s in specs] == ["lion", "lion", "lion", "adamw"]
    s = Settings()
    assert hyperparameters(specs[0], s) | {} == {
        "lr": pytest.approx(1e-3 / 3),
        "weight_decay": pytest.approx(0.3),
        "betas": (0.9, 0.99),
        "kernel": "sign",
        "cautious": False,
        "momentum_dtype": None,
        "stochastic_rounding": True,
        "gradient_release": False,
        "weight_decay_mode": "decoupled",
    }
    assert hyperparameters(specs[1], s)["kernel"] == "l2"
    assert hyperparameters(specs[2], s)["kernel"] == "huber(a=0.5)" and hyperparameters(specs[2], s)["lr"] == 1e-4
    assert hyperparameters(specs[3], s) == {"lr": 1e-3, "weight_decay": 0.01, "betas": (0.9, 0.99)}


def test_training_is_deterministic_and_shares_start_and_batches(text_file):
    corpus = load_corpus(str(text_file))
    s = Settings(steps=3, batch_size=2, block_size=8, n_layer=1, n_head=2, n_embd=16, warmup=1, eval_interval=3, eval_iters=1)
    init = initial_state(s, corpus.vocab_size)
    a = train(OptimSpec("lion", "lion"), corpus, s, init)
    b = train(OptimSpec("lion", "lion"), corpus, s, init)
    c = train(OptimSpec("adamw", "adamw"), corpus, s, init)
    assert a.step_loss == b.step_loss and a.val_loss == b.val_loss
    assert a.step_loss[0] == c.step_loss[0]  # same weights, same first batch
    step_bytes = 2 * a.state_bytes - c.state_bytes  # Lion: one moment, AdamW: two; both: a float32 step per tensor
    assert 0 < step_bytes < 0.01 * a.state_bytes and step_bytes % 4 == 0


def test_gradient_release_and_wd_modes_in_training(text_file):
    """release=1 steps inside backward: without clipping the same run as without it, bitwise, with fewer gradients
    held at once; wd_mode=independent with wd = peak lr * wd is the decoupled run (the same per-step decay)."""
    corpus = load_corpus(str(text_file))
    s = Settings(
        steps=4, batch_size=2, block_size=8, n_layer=1, n_head=2, n_embd=128, warmup=1, eval_interval=4, eval_iters=1, grad_clip=0.0
    )
    init = initial_state(s, corpus.vocab_size)
    plain = train(OptimSpec("lion", "lion"), corpus, s, init)
    released = train(OptimSpec("lion:release=1", "lion", {"release": "1"}), corpus, s, init)
    assert released.step_loss == plain.step_loss and released.val_loss == plain.val_loss
    assert released.memory["gradients"] < plain.memory["gradients"] == 4.0
    assert released.memory["step_temporaries"] is None and plain.memory["step_temporaries"] is not None
    peak_lr = plain.hyperparameters["lr"]
    independent = train(OptimSpec("i", "lion", {"wd_mode": "independent", "wd": repr(peak_lr * 0.3)}), corpus, s, init)
    assert independent.step_loss == pytest.approx(plain.step_loss, rel=1e-6)
    assert independent.diagnostics[0]["decay"] == pytest.approx(0.3)
    cautious = train(OptimSpec("c", "lion", {"wd_mode": "cautious"}), corpus, s, init)
    assert cautious.diagnostics[0]["constraint"] == "not enforced (cautious decay)" and cautious.diagnostics[0]["stationarity"] is None


def test_release_clips_per_tensor(text_file):
    """Under gradient release --grad-clip clips each tensor's gradient on its own (max_grad_norm)."""
    corpus = load_corpus(str(text_file))
    s = Settings(steps=2, batch_size=2, block_size=8, n_layer=1, n_head=2, n_embd=16, warmup=1, eval_interval=2, eval_iters=1)
    spec = OptimSpec("lion:release=1", "lion", {"release": "1"})
    model = GPT(s.model_config(corpus.vocab_size))
    opt = _make_optimizer(spec, model, hyperparameters(spec, s), grad_clip=0.5)
    assert opt.gradient_release and all(g["max_grad_norm"] == 0.5 for g in opt.param_groups)
    plain = OptimSpec("lion", "lion")
    assert _make_optimizer(plain, model, hyperparameters(plain, s), grad_clip=0.5).param_groups[0]["max_grad_norm"] is None


# -- compare and sweep end to end ---------------------------------------------------------------


def test_compare_writes_table_png_json(tmp_path, text_file, capsys):
    assert main(["compare", "--data", str(text_file), "--optim", "lion,lion:kernel=l2,adamw", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    for col in ("train", "val", "tokens/s", "opt step ms", "state bytes", "peak RSS MB", "lion:kernel=l2", "together", "step temp"):
        assert col in out
    assert "runs that follow others in one process reuse memory" in out  # their peak RSS is not their own alone
    report = json.loads((tmp_path / "compare.json").read_text())
    lion, adamw = report["runs"][0]["memory"], report["runs"][2]["memory"]
    assert lion["weights"] == lion["gradients"] == 4.0 and adamw["state"] > 2 * lion["state"] - 0.1
    assert lion["together"] == pytest.approx(lion["weights"] + lion["gradients"] + lion["state"])
    assert report["runs"][0]["params"] > 0 and report["runs"][0]["peak_rss_mb"] > 0
    assert [r["label"] for r in report["runs"]] == ["lion", "lion:kernel=l2", "adamw"]
    assert report["runs"][0]["val_loss"][-1][0] == 4 and len(report["runs"][0]["step_loss"]) == 4
    assert (tmp_path / "compare.png").stat().st_size > 1000


def test_compare_quick_on_default_corpus(tmp_path, capsys):
    assert main(["compare", "--quick", "--steps", "6", "--eval-iters", "1", "--threads", "1", "--jobs", "1", "--out", str(tmp_path)]) == 0
    assert "python-stdlib" in capsys.readouterr().out


def test_sweep_grid_and_batch_sizes(tmp_path, text_file, capsys):
    common = ["--data", str(text_file), "--out", str(tmp_path), *TINY]
    assert main(["sweep", "--lr-multipliers", "1,3", "--wd-multipliers", "1", *common]) == 0
    grid = json.loads((tmp_path / "sweep.json").read_text())["grid"]
    assert len(grid["lion"]["lr"]) == 2 and len(grid["adamw"]["val_loss"]) == 1
    assert grid["lion"]["lr"][0] == pytest.approx(1e-3 / 3) and grid["adamw"]["weight_decay"] == [0.1]
    assert (tmp_path / "sweep.png").stat().st_size > 1000
    assert main(["sweep", "--batch-sizes", "2,4", *common]) == 0
    curves = json.loads((tmp_path / "sweep.json").read_text())["batch_sizes"]
    assert curves["lion"]["batch_size"] == [2, 4] and curves["lion"]["steps"] == [4, 2]  # same tokens
    assert curves["lion"]["lr_multiplier"] == [pytest.approx(1.0)] * 2
    assert (tmp_path / "sweep_batch.png").exists()
    capsys.readouterr()


def test_sweep_grids_centred_on_each_optimizers_own_point(tmp_path, text_file, capsys):
    """--lion-lr and --lion-weight-decay move Lion's centre off from_adamw's; AdamW's stays at --lr and --weight-decay."""
    argv = ["sweep", "--lr-multipliers", "0.5,2", "--wd-multipliers", "1,3", "--lr", "4e-3", "--lion-lr", "7e-4"]
    assert main([*argv, "--lion-weight-decay", "2.7", "--data", str(text_file), "--out", str(tmp_path), *TINY]) == 0
    grid = json.loads((tmp_path / "sweep.json").read_text())["grid"]
    assert grid["lion"]["centre"] == [7e-4, 2.7] and grid["adamw"]["centre"] == [4e-3, 0.1]
    assert grid["lion"]["lr"] == [pytest.approx(3.5e-4), pytest.approx(1.4e-3)]
    assert grid["lion"]["weight_decay"] == [pytest.approx(2.7), pytest.approx(8.1)]
    assert grid["adamw"]["lr"] == [pytest.approx(2e-3), pytest.approx(8e-3)]
    assert grid["adamw"]["weight_decay"] == [pytest.approx(0.1), pytest.approx(0.3)]
    capsys.readouterr()


def test_sweep_batch_sizes_step_matched_with_the_lr_retuned_per_batch(tmp_path, text_file, capsys):
    """--batch-budget steps: every batch size takes --steps steps; with an lr grid, each point is the grid's best run at
    that batch size (checked against the runs in the JSON) and says which lr multiplier won."""
    common = ["--data", str(text_file), "--out", str(tmp_path), *TINY]
    argv = ["sweep", "--batch-sizes", "2,4", "--batch-budget", "steps", "--lr-multipliers", "0.1,1,10", *common]
    assert main(argv) == 0
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["batch_budget"] == "steps" and len(report["runs"]) == 2 * 2 * 3
    for name, curve in report["batch_sizes"].items():
        assert curve["steps"] == [4, 4]
        for b, lr, mult, val in zip(curve["batch_size"], curve["lr"], curve["lr_multiplier"], curve["val_loss"]):
            rows = [e for e in report["summary"] if (e["optimizer"], e["batch_size"]) == (name, b)]
            assert len(rows) == 3 and val == min(e["final_val"]["mean"] for e in rows)
            assert lr == next(e["lr"] for e in rows if e["final_val"]["mean"] == val)
            assert mult in (pytest.approx(0.1), pytest.approx(1.0), pytest.approx(10.0))
    out = capsys.readouterr().out
    assert "batch 2 (4 steps, best lr" in out


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="tiny shakespeare not available")
def test_real_text_tiny_shakespeare(tmp_path, capsys):
    corpus = load_corpus(str(SHAKESPEARE))
    assert corpus.vocab_size == 65 and (len(corpus.train), len(corpus.val)) == (1_003_854, 111_540)  # nanoGPT's prepare.py
    argv = ["compare", "--data", str(SHAKESPEARE), "--optim", "adamw", "--steps", "30", "--n-layer", "1", "--n-embd", "32", "--n-head", "2"]
    assert (
        main(
            [
                *argv,
                "--block-size",
                "16",
                "--eval-iters",
                "2",
                "--eval-interval",
                "30",
                "--warmup",
                "5",
                "--threads",
                "1",
                "--jobs",
                "1",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    run = json.loads((tmp_path / "compare.json").read_text())["runs"][0]
    (step0, val0), (step30, val30) = run["val_loss"][0], run["val_loss"][-1]
    assert (step0, step30) == (0, 30) and val0 > math.log(65) - 0.3  # starts near a uniform guess over 65 characters
    assert val30 < val0 - 0.2  # and has learned from real text after 30 steps
    capsys.readouterr()


# -- errors (the full matrix is in test_cli_errors.py) ----------------------------------------------------------


def test_corpus_too_small_for_context(tmp_path, capsys):
    small = tmp_path / "small.txt"
    small.write_text("abcdefghij" * 10)
    code, err = _error(capsys, ["compare", "--data", str(small), "--block-size", "64", "--out", str(tmp_path)])
    assert code == 2 and len(err) == 1 and "too small for context 64" in err[0]


def test_missing_matplotlib_names_the_extra(tmp_path, text_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, err = _error(capsys, ["compare", "--data", str(text_file), "--out", str(tmp_path), *TINY])
    assert code == 2 and len(err) == 1 and "pip install 'lionk[cli]'" in err[0]
    code, err = _error(capsys, ["toy", "--steps", "5", "--out", str(tmp_path)])
    assert code == 2 and "pip install 'lionk[cli]'" in err[0]


def test_lionsf_and_schedule_options(tmp_path, capsys):
    specs = parse_optims("lionsf,lionsf:mode=averaging,lion:schedule=constant:cautious=1")
    assert [schedule_of(s) for s in specs] == ["constant", "constant", "constant"]
    assert schedule_of(parse_optims("lion")[0]) == "cosine"
    s = Settings(steps=10, warmup=2)
    assert lr_at(9, 1.0, s, "constant") == 1.0 and lr_at(9, 1.0, s) < 0.2 and lr_at(0, 1.0, s, "constant") == 1 / 3
    argv = ["compare", "--quick", "--steps", "6", "--eval-interval", "3", "--threads", "1", "--jobs", "1", "--out", str(tmp_path)]
    assert main([*argv, "--optim", "lionsf:mode=averaging,lion:cautious=1"]) == 0
    out = capsys.readouterr().out
    assert "constraint diagnostics" in out and "box ||x||_inf <= 1/wd" in out
    runs = json.loads((tmp_path / "compare.json").read_text())["runs"]
    assert runs[0]["hyperparameters"]["mode"] == "averaging" and runs[1]["hyperparameters"]["cautious"] is True


def test_compare_low_precision_storage_options(tmp_path):
    """momentum=int8 stores int8 codes (state ~1/4 of float32's); weights=bfloat16 trains bf16 weights."""
    assert main(["compare", "--quick", "--steps", "4", "--eval-interval", "4", "--jobs", "1", "--out", str(tmp_path),
                 "--optim", "lion,lion:momentum=int8,lion:weights=bfloat16:sr=0"]) == 0  # fmt: skip
    runs = json.loads((tmp_path / "compare.json").read_text())["runs"]
    assert runs[1]["hyperparameters"]["momentum_dtype"] == "int8" and runs[1]["state_bytes"] < 0.4 * runs[0]["state_bytes"]
    assert runs[2]["hyperparameters"]["stochastic_rounding"] is False
    step_bytes = 2 * runs[2]["state_bytes"] - runs[0]["state_bytes"]  # bf16 momentum follows the bf16 weights; float32 steps
    assert 0 < step_bytes < 0.01 * runs[0]["state_bytes"] and step_bytes % 4 == 0


# -- what a run reports ----------------------------------------------------------------------------------------------


def test_final_loss_does_not_depend_on_how_often_the_run_is_evaluated(text_file):
    """Every estimate uses the same batches, and evaluating draws none from the training stream."""
    corpus = load_corpus(str(text_file))
    s = Settings(steps=6, batch_size=2, block_size=8, n_layer=1, n_head=2, n_embd=16, warmup=1, eval_iters=2)
    init = initial_state(s, corpus.vocab_size)
    for spec in (OptimSpec("lion", "lion"), OptimSpec("adamw", "adamw")):
        often = train(spec, corpus, replace(s, eval_interval=1), init)
        once = train(spec, corpus, replace(s, eval_interval=6), init)
        assert often.step_loss == once.step_loss
        assert often.val_loss[-1] == once.val_loss[-1] and often.train_loss[-1] == once.train_loss[-1]
        assert often.val_loss[0] == once.val_loss[0]  # the same batches at every estimate


def test_runs_at_different_batch_sizes_are_scored_on_the_same_windows(text_file):
    """The evaluation batches do not depend on the training batch size: before any step, the estimates agree exactly."""
    corpus = load_corpus(str(text_file))
    s = Settings(steps=1, batch_size=2, block_size=8, n_layer=1, n_head=2, n_embd=16, warmup=0, eval_interval=1, eval_iters=2)
    init = initial_state(s, corpus.vocab_size)
    small, large = (train(OptimSpec("lion", "lion"), corpus, replace(s, batch_size=b), init) for b in (2, 7))
    assert small.val_loss[0] == large.val_loss[0] and small.train_loss[0] == large.train_loss[0]
    assert small.val_loss[-1] != large.val_loss[-1]  # the step itself did see different batches


def test_nuclear_kernel_runs_with_sign_on_the_1d_weights(text_file, capsys, tmp_path):
    """nuclear takes matrices only; the CLI gives the norm gains sign instead of failing."""
    spec = parse_optims("lion:kernel=nuclear")[0]
    hp = hyperparameters(spec, Settings())
    assert hp["kernel"] == "nuclear" and hp["vector_kernel"] == "sign"
    assert "vector_kernel" not in hyperparameters(parse_optims("lion:kernel=l2")[0], Settings())
    assert main(["compare", "--data", str(text_file), "--optim", "lion:kernel=nuclear", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "kernel nuclear takes matrices only; the 1-D weights (norm gains) use sign" in out


def _result(label: str, other_load: float | None, diagnostics=()) -> RunResult:
    return RunResult(label, {}, [[0, 3.0]], [[0, 3.1]], [3.0], 1000.0, 1.0, 100, 10.0, 1.0, other_load, list(diagnostics))


def test_table_says_when_the_speed_figures_are_contended():
    torch.set_num_threads(os.cpu_count())  # every CPU is needed: any other load contends
    quiet = format_table([_result("lion", 0.01), _result("adamw", 0.02)])
    assert "other load" in quiet and "contended" not in quiet
    busy = format_table([_result("lion", 0.45), _result("adamw", 0.02)])
    assert "note: other work took 45% (lion)" in busy and "contended" in busy
    assert "does not say how busy" in format_table([_result("lion", None)])


def test_diagnostics_table_has_a_row_per_group_and_no_empty_columns():
    groups = [
        {"group": "2-D weights", "weight_decay": 0.3, "kernel": "sign", "constraint": "box ||x||_inf <= 1/wd",
         "boundary_fraction": 0.25, "max_scaled": 1.0, "stationarity": 1e-3},
        {"group": "1-D weights", "weight_decay": 0.0, "kernel": "sign", "constraint": "none",
         "boundary_fraction": None, "max_scaled": None, "stationarity": 2e-3},
    ]  # fmt: skip
    text = format_diagnostics([_result("lion", None, groups), _result("adamw", None)])
    lines = text.splitlines()
    assert "tensor" not in text and "shape" not in text
    assert [line.split()[0] for line in lines[4:]] == ["lion", "lion"]
    assert "25.0%" in lines[4] and "none (wd = 0)" in lines[5]


def test_measured_other_load_is_a_share_or_unknown():
    share = OtherLoad().share()
    assert share is None or 0.0 <= share <= 1.0


def test_run_records_the_diagnostics_of_lion_runs_only(text_file):
    corpus = load_corpus(str(text_file))
    s = Settings(steps=2, batch_size=2, block_size=8, n_layer=1, n_head=2, n_embd=16, warmup=1, eval_interval=2, eval_iters=1)
    init = initial_state(s, corpus.vocab_size)
    lion = train(OptimSpec("lion", "lion"), corpus, s, init)
    assert [g["group"] for g in lion.diagnostics] == ["2-D weights", "1-D weights"]
    assert lion.diagnostics[0]["constraint"].startswith("box") and lion.diagnostics[1]["constraint"] == "none"
    assert train(OptimSpec("adamw", "adamw"), corpus, s, init).diagnostics == []


def test_compare_png_names_every_contender_with_its_final_loss(tmp_path, text_file, monkeypatch):
    """One legend below both panels: a line per contender, its label and its final validation loss as in the JSON."""
    import json

    import matplotlib.figure

    legends = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        legends.append([[t.get_text() for t in legend.get_texts()] for legend in fig.legends])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    assert main(["compare", "--data", str(text_file), "--optim", "lion,adamw", "--out", str(tmp_path), *TINY]) == 0
    runs = json.loads((tmp_path / "compare.json").read_text())["runs"]
    assert legends == [[[f"{r['label']}: final val {r['val_loss'][-1][1]:.4f}" for r in runs]]]


# -- seeds, processes, resume ---------------------------------------------------------------------------------------


def test_summaries_against_hand_calculations():
    """spread: mean and sample sd; paired_difference: mean difference and sd(d) / sqrt(n); one value: no spread."""
    assert spread([1.0, 2.0, 4.0]) == {"mean": pytest.approx(7 / 3), "sd": pytest.approx(math.sqrt(7 / 3)), "n": 3}
    d = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 4.0])  # differences 2, 3, 0
    assert d == {"mean": pytest.approx(5 / 3), "se": pytest.approx(math.sqrt(7 / 3) / math.sqrt(3)), "n": 3}
    assert spread([2.5]) == {"mean": 2.5, "sd": None, "n": 1} and paired_difference([2.5], [2.0])["se"] is None
    assert plus_minus({"mean": 1.89941, "sd": 0.01234}) == "1.8994 ± 0.0123" and plus_minus(spread([1.89941])) == "1.8994"
    assert plus_minus({"mean": -0.05, "se": 0.004}, "se") == "-0.0500 ± 0.0040"
    assert seed_list(1337, 3) == [1337, 1338, 1339]
    assert worker_count(None, 100) == (os.cpu_count() or 1) and worker_count(None, 1) == 1 and worker_count(4, 2) == 2


def _compare(tmp_path: Path, *argv: str) -> tuple[dict, str]:
    """compare lion,adamw on the tiny task with argv; its JSON and its standard output."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["compare", "--data", str(corpus), "--optim", "lion,adamw", "--out", str(tmp_path), *TINY, *argv]) == 0
    return json.loads((tmp_path / "compare.json").read_text()), out.getvalue()


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """compare --seeds 3 in one process, run once for the tests below."""
    return _compare(tmp_path_factory.mktemp("three_seeds"), "--seeds", "3")


def _curves(run: dict) -> tuple:
    return run["step_loss"], run["train_loss"], run["val_loss"]


def test_seeds_give_different_runs_and_a_seed_the_same_run(three_seeds, tmp_path):
    report, _ = three_seeds
    assert report["seeds"] == [1337, 1338, 1339]
    assert [(r["label"], r["seed"]) for r in report["runs"]] == [(label, s) for label in ("lion", "adamw") for s in report["seeds"]]
    lion = [r for r in report["runs"] if r["label"] == "lion"]
    assert len({json.dumps(_curves(r)) for r in lion}) == 3  # each seed: its own weights and batches
    alone, text = _compare(tmp_path, "--seed", "1338")
    assert _curves(alone["runs"][0]) == _curves(lion[1])  # seed 1338 of three is the run of --seed 1338
    assert [r["seed"] for r in alone["runs"]] == [1338, 1338] and alone["summary"]["lion"]["final_val"]["sd"] is None
    assert "±" not in text and "val - adamw" not in text  # one seed: today's table
    header = f"{'optimizer':<28} {'train':>7} {'val':>7} {'tokens/s':>9} {'opt step ms':>11} {'state bytes':>11} {'other load':>10}"
    assert header in text.splitlines()


def test_seed_summaries_are_those_of_the_recorded_runs(three_seeds):
    """mean, sample sd, the paired difference to adamw and its standard error, computed by hand from the runs in the JSON."""
    report, text = three_seeds
    final = {(r["label"], r["seed"]): (r["train_loss"][-1][1], r["val_loss"][-1][1]) for r in report["runs"]}
    lion, adamw = report["summary"]["lion"], report["summary"]["adamw"]
    for i, loss in enumerate(("final_train", "final_val")):
        mine = [final["lion", s][i] for s in report["seeds"]]
        base = [final["adamw", s][i] for s in report["seeds"]]
        assert lion[loss]["mean"] == pytest.approx(statistics.mean(mine), rel=1e-12)
        assert lion[loss]["sd"] == pytest.approx(statistics.stdev(mine), rel=1e-9)
        differences = [m - b for m, b in zip(mine, base)]
        assert lion["minus_adamw"][loss]["mean"] == pytest.approx(statistics.mean(differences), rel=1e-9)
        assert lion["minus_adamw"][loss]["se"] == pytest.approx(statistics.stdev(differences) / math.sqrt(3), rel=1e-9)
    assert "minus_adamw" not in adamw and lion["minus_adamw"]["baseline"] == "adamw"
    row = next(line for line in text.splitlines() if line.startswith("lion   "))  # the table row, not an evaluation line
    assert f"{lion['final_val']['mean']:.4f} ± {lion['final_val']['sd']:.4f}" in row
    assert plus_minus(lion["minus_adamw"]["final_val"], "se") in row
    assert "over 3 seeds (1337..1339)" in text and "val - adamw" in text


def test_two_processes_give_the_runs_of_one_bitwise(three_seeds, tmp_path, capfd):
    report, _ = three_seeds
    parallel, text = _compare(tmp_path, "--seeds", "3", "--jobs", "2")
    assert [_curves(r) for r in parallel["runs"]] == [_curves(r) for r in report["runs"]]
    assert parallel["summary"] == report["summary"]
    assert "in each of 2 processes" in text and "--jobs 1 for speed figures" in text
    assert "adamw (seed 1339): train " in capfd.readouterr().err  # a line per finished run


def _savefig_spy(monkeypatch) -> list:
    """The figures saved while the test runs."""
    import matplotlib.figure

    figures = []
    save = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        figures.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return figures


def test_plots_with_seeds_show_their_spread(tmp_path, text_file, monkeypatch, capsys):
    """compare.png: a band per contender in each panel, said in the legend; sweep.png: ± sd in each cell; sweep_batch.png: error bars."""
    figures = _savefig_spy(monkeypatch)
    common = ["--data", str(text_file), "--out", str(tmp_path), "--seeds", "2", *TINY]
    assert main(["compare", "--optim", "lion,adamw", *common]) == 0
    assert main(["sweep", "--lr-multipliers", "1,3", "--wd-multipliers", "1", *common]) == 0
    assert main(["sweep", "--batch-sizes", "2,4", *common]) == 0
    compare, grid, batches = figures
    assert all(len(ax.collections) == 2 for ax in compare.axes)
    (legend,) = compare.legends
    assert "band ± 1 sd" in legend.get_title().get_text()
    assert all(" ± " in t.get_text().split("final val ")[1] for t in legend.get_texts())
    cells = [t.get_text() for ax in grid.axes[:2] for t in ax.texts]
    assert len(cells) == 4 and all("\n± " in t for t in cells) and "2 seeds" in grid.texts[0].get_text()
    assert [c.has_yerr for c in batches.axes[0].containers] == [True, True]
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert all(sd is not None for sd in sweep["batch_sizes"]["lion"]["val_loss_sd"]) and len(sweep["runs"]) == 8
    for name in ("compare.png", "sweep.png", "sweep_batch.png"):
        assert (tmp_path / name).stat().st_size > 1000
    capsys.readouterr()


def test_sweep_resume_trains_only_the_runs_not_recorded(tmp_path, text_file, monkeypatch, capsys):
    """The JSON is rewritten after every run: an interrupted sweep keeps its finished runs, and --resume trains the rest
    (and more seeds) only; the grid is the mean over the seeds of the recorded runs."""
    trained = []

    def counting(spec, corpus, settings, init, **kwargs):
        if len(trained) == stop_after:
            raise KeyboardInterrupt
        trained.append((spec.name, settings.seed))
        return train(spec, corpus, settings, init, **kwargs)

    monkeypatch.setattr(lionk.cli.runs, "train", counting)
    argv = ["sweep", "--data", str(text_file), "--lr-multipliers", "1", "--wd-multipliers", "1", "--out", str(tmp_path), *TINY]
    stop_after = 3
    assert main([*argv, "--seeds", "2"]) == 130
    assert len(json.loads((tmp_path / "sweep.json").read_text())["runs"]) == 3
    stop_after = None
    assert main([*argv, "--seeds", "2", "--resume"]) == 0
    assert trained[3:] == [("adamw", 1338)]
    assert main([*argv, "--seeds", "3", "--resume"]) == 0
    assert trained[4:] == [("lion", 1339), ("adamw", 1339)]
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert len(report["runs"]) == 6 and report["seeds"] == [1337, 1338, 1339]
    lion = [r["val_loss"][-1][1] for r in report["runs"] if r["label"].startswith("lion")]
    assert report["grid"]["lion"]["val_loss"] == [[pytest.approx(statistics.mean(lion), rel=1e-12)]]
    assert report["grid"]["lion"]["val_loss_sd"] == [[pytest.approx(statistics.stdev(lion), rel=1e-9)]]
    assert "resume: 4 of the 6 runs are recorded" in capsys.readouterr().out
    assert main([*argv, "--seeds", "3", "--resume", "--steps", "5"]) == 2
    assert "--resume: " in capsys.readouterr().err and len(trained) == 6


def test_compare_resume_adds_seeds(tmp_path, monkeypatch):
    trained = []

    def counting(spec, corpus, settings, init, **kwargs):
        trained.append((spec.label, settings.seed))
        return train(spec, corpus, settings, init, **kwargs)

    first, _ = _compare(tmp_path)
    monkeypatch.setattr(lionk.cli.runs, "train", counting)
    second, text = _compare(tmp_path, "--seeds", "2", "--resume")
    assert trained == [("lion", 1338), ("adamw", 1338)]
    assert [_curves(r) for r in second["runs"] if r["seed"] == 1337] == [_curves(r) for r in first["runs"]]
    assert "resume: 2 of the 4 runs are recorded" in text
