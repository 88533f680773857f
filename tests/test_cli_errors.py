"""Bad input to every lionk command: one line on stderr, exit status 2, no traceback, and before any long work starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lionk.cli.bench
import lionk.cli.compare
import lionk.cli.sweep
import lionk.cli.toy
from lionk.cli import main
from lionk.cli.training import Settings

SRC = Path(__file__).resolve().parents[1] / "src"
SYS_DIR = Path("/sys")
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.fixture(autouse=True)
def _no_long_work(monkeypatch):
    """Every case here must be refused before training, the toy runs or the bench rounds begin."""

    def refuse(*args, **kwargs):
        raise AssertionError("the long work started before the bad input was refused")

    monkeypatch.setattr(lionk.cli.compare, "run_jobs", refuse)
    monkeypatch.setattr(lionk.cli.sweep, "run_jobs", refuse)
    monkeypatch.setattr(lionk.cli.toy, "run_kernel", refuse)
    monkeypatch.setattr(lionk.cli.bench, "run_bench", refuse)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def files(tmp_path):
    """A text file, a file, a binary file, a UTF-8 file with NUL bytes, and a directory holding compare.png as a directory."""
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question.\n" * 40)
    plain = tmp_path / "plain"
    plain.write_text("x")
    binary = tmp_path / "binary"
    binary.write_bytes(bytes(range(256)) * 8)
    nul = tmp_path / "nul.txt"
    nul.write_text("text\x00with a nul byte\n" * 20)
    clash = tmp_path / "clash"
    (clash / "compare.png").mkdir(parents=True)
    (clash / "toy.png").mkdir()
    return {"text": str(text), "plain": str(plain), "binary": str(binary), "nul": str(nul), "clash": str(clash), "dir": str(tmp_path)}


def check_one_line(capsys, argv: list[str], fragment: str, command: str | None = None) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"lionk {command or argv[0]}: error:" if command != "" else "lionk: error:"), lines[0]
    assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in captured.err
    return lines[0]


# -- paths: --out, --json, --data ------------------------------------------------------------------------------------

OUT_CASES = [
    ("{plain}/sub", "Not a directory"),
    ("{plain}", "exists and is not a directory"),
]


@pytest.mark.parametrize("command", ["compare", "sweep", "toy"])
@pytest.mark.parametrize("out, fragment", OUT_CASES)
def test_out_that_cannot_hold_the_files(capsys, files, command, out, fragment):
    check_one_line(capsys, [command, "--out", out.format(**files)], fragment)


@pytest.mark.parametrize("command, name", [("compare", "compare.png"), ("toy", "toy.png")])
def test_out_where_an_output_file_is_a_directory(capsys, files, command, name):
    check_one_line(capsys, [command, "--out", files["clash"]], f"{name} is a directory")


@pytest.mark.skipif(not SYS_DIR.is_dir(), reason="no /sys here")
@pytest.mark.parametrize("command", ["compare", "sweep", "toy"])
def test_out_under_sys(capsys, command):
    check_one_line(capsys, [command, "--out", "/sys/lionk-test-out"], "--out /sys/lionk-test-out: cannot create")
    check_one_line(capsys, [command, "--out", "/sys"], "cannot write into /sys")


@pytest.mark.skipif(ROOT, reason="root writes into read-only directories")
@pytest.mark.parametrize("command", ["compare", "sweep", "toy"])
def test_out_in_a_read_only_directory(capsys, tmp_path, command):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        check_one_line(capsys, [command, "--out", str(locked)], "cannot write into")
        check_one_line(capsys, [command, "--out", str(locked / "new")], "cannot create")
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    "json_path, fragment",
    [
        ("{dir}", "is a directory (give a file name"),
        ("{plain}/bench.json", "exists and is not a directory"),
        ("{plain}/sub/bench.json", "cannot create the directory"),
    ],
)
def test_bench_json_that_cannot_be_written(capsys, files, json_path, fragment):
    check_one_line(capsys, ["bench", "--json", json_path.format(**files)], fragment)


@pytest.mark.skipif(not SYS_DIR.is_dir(), reason="no /sys here")
def test_bench_json_under_sys(capsys):
    check_one_line(capsys, ["bench", "--json", "/sys/bench.json"], "cannot write into /sys")


@pytest.mark.parametrize("command", ["compare", "sweep"])
@pytest.mark.parametrize(
    "data, fragment",
    [
        ("{binary}", "is not UTF-8 text (byte 0x80 at offset 128)"),
        ("{nul}", "contains NUL bytes"),
        ("{dir}", "is a directory, not a UTF-8 text file"),
        ("{dir}/missing.txt", "file not found"),
        ("/dev/null", "is not a regular file"),
    ],
)
def test_data_that_is_not_a_text_file(capsys, files, command, data, fragment):
    check_one_line(capsys, [command, "--data", data.format(**files), "--out", files["dir"]], fragment)


# -- numbers ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["compare", "sweep"])
@pytest.mark.parametrize(
    "flag, value, fragment",
    [
        ("--lr", "0", "invalid --lr 0: must be a finite number > 0"),
        ("--lr", "-1", "invalid --lr -1: must be a finite number > 0"),
        ("--lr", "inf", "invalid --lr inf: must be a finite number > 0"),
        ("--lr", "nan", "invalid --lr nan"),
        ("--weight-decay", "-1", "invalid --weight-decay -1: must be a finite number >= 0"),
        ("--grad-clip", "-1", "invalid --grad-clip -1: must be a finite number >= 0"),
        ("--factor", "0", "invalid --factor 0: must be a finite number > 0"),
        ("--steps", "0", "invalid --steps 0: must be an integer >= 1"),
        ("--batch-size", "-3", "invalid --batch-size -3"),
        ("--warmup", "-1", "invalid --warmup -1: must be an integer >= 0"),
        ("--eval-iters", "0", "invalid --eval-iters 0"),
        ("--threads", "0", "invalid --threads 0"),
        ("--seed", "-1", "invalid --seed -1"),
        ("--seeds", "0", "invalid --seeds 0: must be an integer >= 1"),
        ("--seeds", "-3", "invalid --seeds -3: must be an integer >= 1"),
        ("--seeds", "two", "argument --seeds: invalid int value: 'two'"),
        ("--jobs", "0", "invalid --jobs 0: must be an integer >= 1"),
        ("--jobs", "-1", "invalid --jobs -1: must be an integer >= 1"),
        ("--jobs", "1.5", "argument --jobs: invalid int value: '1.5'"),
        ("--n-embd", "30", "must be a multiple of --n-head 4"),
        ("--steps", "abc", "argument --steps: invalid int value: 'abc'"),
        ("--lr", "fast", "argument --lr: invalid float value: 'fast'"),
    ],
)
def test_task_numbers(capsys, files, command, flag, value, fragment):
    line = check_one_line(capsys, [command, flag, value, "--out", files["dir"]], fragment)
    assert "ratio" not in line  # no option the user cannot set


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--steps", "0"], "invalid --steps 0"),
        (["--lr", "2", "--wd", "1"], "need lr*wd <= 1"),
        (["--lr", "0"], "invalid --lr 0: must be a finite number > 0"),
        (["--lr", "nan"], "invalid --lr nan"),
        (["--wd", "-1"], "invalid --wd -1: must be a finite number > 0"),
        (["--beta1", "1"], "invalid --beta1 1: must be in [0, 1)"),
        (["--beta2", "-0.1"], "invalid --beta2 -0.1: must be in [0, 1)"),
        (["--tol", "0"], "invalid --tol 0"),
    ],
)
def test_toy_numbers(capsys, files, argv, fragment):
    check_one_line(capsys, ["toy", *argv, "--out", files["dir"]], fragment)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--lr-multipliers", "1,,2"], "invalid --lr-multipliers '1,,2': an empty entry"),
        (["--lr-multipliers", ""], "an empty entry"),
        (["--lr-multipliers", "0,1"], "invalid value '0' in --lr-multipliers '0,1': must be a finite number > 0"),
        (["--lr-multipliers", "1,inf"], "invalid value 'inf'"),
        (["--lr-multipliers", "1,1"], "a value is repeated"),
        (["--wd-multipliers", "-1"], "invalid value '-1' in --wd-multipliers"),
        (["--batch-sizes", "4,x"], "invalid value 'x' in --batch-sizes"),
        (["--batch-sizes", "2.5"], "must be positive integers"),
        (["--batch-sizes", "0"], "invalid value '0'"),
        (["--batch-budget", "steps"], "--batch-budget applies only to the batch-size ablation: give --batch-sizes too"),
        (["--lion-lr", "0"], "invalid --lion-lr 0: must be a finite number > 0"),
        (["--lion-lr", "nan"], "invalid --lion-lr nan"),
        (["--lion-weight-decay", "-0.1"], "invalid --lion-weight-decay -0.1: must be a finite number >= 0"),
    ],
)
def test_sweep_grids(capsys, files, argv, fragment):
    check_one_line(capsys, ["sweep", *argv, "--out", files["dir"]], fragment)


# -- --resume -----------------------------------------------------------------------------------------------------------


def _recorded(directory: str, name: str, command: str, corpus: str = "text.txt", **settings) -> None:
    """A JSON file in directory as command writes it for the task of --steps 200 --data DIRECTORY/corpus, but for settings."""
    task = Settings(steps=200, eval_interval=200).to_json() | settings
    corpus = str(Path(directory) / corpus)
    (Path(directory) / name).write_text(json.dumps({"command": command, "corpus": corpus, "settings": task, "runs": []}))


@pytest.mark.parametrize(
    "recorded, fragment",
    [
        ({"steps": 100, "eval_interval": 100}, "holds runs with --steps 100, not 200: give the same --steps or another --out"),
        ({"adamw_lr": 0.003}, "holds runs with --lr 0.003, not 0.001"),
        ({"n_embd": 64}, "holds runs with --n-embd 64, not 128"),
        ({"betas": [0.9, 0.95]}, "holds runs with betas [0.9, 0.95], not [0.9, 0.99]"),
        ({"corpus": "other.txt"}, 'holds runs with --data "'),
    ],
)
def test_sweep_resume_on_another_task(capsys, files, recorded, fragment):
    """The seed may differ (more seeds extend the runs); any other setting may not."""
    _recorded(files["dir"], "sweep.json", "sweep", **recorded)
    check_one_line(capsys, ["sweep", "--resume", "--seed", "7", "--data", files["text"], "--out", files["dir"]], fragment)


def test_resume_from_a_file_that_is_not_the_commands(capsys, files):
    argv = ["compare", "--resume", "--data", files["text"], "--out", files["dir"]]
    _recorded(files["dir"], "compare.json", "sweep")
    check_one_line(capsys, argv, "was written by lionk sweep, not lionk compare")
    Path(files["dir"], "compare.json").write_text('{"command": "compare"')
    check_one_line(capsys, argv, "is not a lionk compare JSON file")


# -- option strings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optim, fragment",
    [
        ("lion,sgd", "unknown optimizer 'sgd'"),
        ("lion,,adamw", "empty entry"),
        ("lion,lion", "duplicate entries"),
        ("lion:kernel=nope", "unknown kernel 'nope' in --optim entry 'lion:kernel=nope' (kernels: sign, l2, lp(p=..)"),
        ("lion:kernel=huber(a=-1)", "invalid kernel 'huber(a=-1)'"),
        ("adamw:kernel=l2", "option 'kernel' does not apply to adamw"),
        ("lion:lr=abc", "invalid lr 'abc' in --optim entry 'lion:lr=abc': must be a finite number > 0"),
        ("lion:lr=0", "invalid lr '0'"),
        ("lion:lr=inf", "invalid lr 'inf'"),
        ("lion:wd=-1", "invalid wd '-1'"),
        ("lion:beta1=1", "invalid beta1 '1' in --optim entry 'lion:beta1=1': must be in [0, 1)"),
        ("lion:factor=0", "invalid factor '0'"),
        ("lion:cautious=maybe", "invalid cautious 'maybe' in --optim entry 'lion:cautious=maybe': must be 0 or 1"),
        ("lion:sr=2", "invalid sr '2'"),
        ("lion:lr=1e-4:lr=2e-4", "option 'lr' given twice"),
        ("lion:speed=9", "invalid option 'speed=9'"),
        ("lionsf:mode=fast", "invalid mode 'fast'"),
        ("lion:mode=averaging", "option 'mode' does not apply to lion"),
        ("lion:schedule=step", "invalid schedule 'step'"),
        ("lion:momentum=int4", "invalid momentum 'int4'"),
        ("adamw:momentum=int8", "option 'momentum' does not apply to adamw"),
        ("lion:weights=float16", "invalid weights 'float16'"),
    ],
)
def test_optim_strings(capsys, files, optim, fragment):
    line = check_one_line(capsys, ["compare", "--optim", optim, "--out", files["dir"]], fragment)
    assert "'lion'" not in line.split("kernels:")[-1]  # the undocumented alias is not offered


# -- bench ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--device", "bogus"], "invalid --device 'bogus': must be cpu or cuda[:N]"),
        (["--device", "meta"], "invalid --device 'meta'"),
        (["--size", "abc"], "invalid --size 'abc'"),
        (["--size", "10"], "at least 1k"),
        (["--size", "inf"], "invalid --size 'inf'"),
        (["--small-tensors", "10"], "invalid --small-tensors '10'"),
        (["--roof-size", "x"], "invalid --roof-size 'x'"),
        (["--rounds", "0"], "invalid --rounds 0: must be an integer >= 1"),
        (["--rounds", "20", "--max-rounds", "10"], "invalid --max-rounds 10: must be an integer >= 20"),
        (["--warmup", "-1"], "invalid --warmup -1"),
        (["--layers", "0"], "invalid --layers 0"),
        (["--tolerance", "0"], "invalid --tolerance 0"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["--size", "100G"], "GB is free: give a smaller --size"),
    ],
)
def test_bench_arguments(capsys, argv, fragment):
    check_one_line(capsys, ["bench", *argv], fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_bench_cuda_without_cuda(capsys):
    check_one_line(capsys, ["bench", "--device", "cuda"], "CUDA is not available")


# -- the command itself -----------------------------------------------------------------------------------------------


def test_no_command_or_an_unknown_one(capsys):
    check_one_line(capsys, [], "the following arguments are required", command="")
    check_one_line(capsys, ["train"], "invalid choice: 'train'", command="")
    check_one_line(capsys, ["toy", "--bogus"], "unrecognized arguments: --bogus", command="")


def test_a_real_process_prints_one_line_and_exits_2(tmp_path):
    """The same promise from outside: python -m lionk, a real stderr, a real exit status."""
    plain = tmp_path / "plain"
    plain.write_text("x")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    for argv in (["compare", "--out", f"{plain}/sub"], ["bench", "--device", "bogus"], ["sweep", "--lr-multipliers", "1,,2"]):
        proc = subprocess.run([sys.executable, "-m", "lionk", *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout == ""
