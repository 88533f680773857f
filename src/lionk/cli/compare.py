"""lionk compare: train a small character-level GPT with several optimizers, from the same start on the same batches.

Prints a table (final train and validation loss, training tokens/s, median optimizer-step time, optimizer
state bytes, process peak RSS, and the share of the machine's CPU time that other work took meanwhile),
then the constraint diagnostics of each Lion run, and writes compare.png (loss curves) and compare.json
(settings, machine, every curve) into --out (default: the current directory).

AdamW's settings default to nanoGPT's for its CPU "baby" model (lr 1e-3, weight decay 0.1 on the 2-D
weights, betas (0.9, 0.99), 100 warm-up steps, cosine to lr/10, gradient clip 1.0); Lion's come from
lionk.from_adamw (lr / factor, weight decay * factor) with the same schedule shape.

Speed figures are wall-clock: when other work shares the machine they slow down and are not comparable
between runs. The "other load" column says how much of the machine that work took during each run.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any

import torch

from ._deps import pyplot, require
from .checks import integer, output_dir
from .data import load_corpus
from .machine import contended, machine
from .training import MEMORY_STEPS, OPTION_HELP, RunResult, Settings, hyperparameters, initial_state, parse_optims, train

#: --quick's task: a tiny model and short runs (explicit flags still win).
QUICK = dict(steps=150, batch_size=8, block_size=32, n_layer=2, n_head=2, n_embd=64, warmup=15, eval_interval=50, eval_iters=5)


def add_task_arguments(parser: argparse.ArgumentParser, *, steps: int, eval_interval: int, quick_help: str, out_help: str) -> None:
    """Arguments shared by compare and sweep: the data, the model, the AdamW baseline and its schedule."""
    d = Settings()
    q = QUICK
    parser.add_argument("--data", metavar="FILE", help="a UTF-8 text file to train on (default: source of this Python's standard library)")
    parser.add_argument("--steps", type=int, metavar="N", default=steps, help=f"optimizer steps per run (default {steps})")
    parser.add_argument("--batch-size", type=int, metavar="N", default=d.batch_size, help=f"sequences per batch (default {d.batch_size})")
    parser.add_argument(
        "--block-size", type=int, metavar="N", default=d.block_size, help=f"context length in characters (default {d.block_size})"
    )
    parser.add_argument("--n-layer", type=int, metavar="N", default=d.n_layer, help=f"transformer blocks (default {d.n_layer})")
    parser.add_argument(
        "--n-head", type=int, metavar="N", default=d.n_head, help=f"attention heads; must divide --n-embd (default {d.n_head})"
    )
    parser.add_argument("--n-embd", type=int, metavar="N", default=d.n_embd, help=f"model width (default {d.n_embd})")
    parser.add_argument(
        "--lr", type=float, metavar="X", default=d.adamw_lr, help=f"AdamW's peak lr, > 0; Lion's is lr/factor (default {d.adamw_lr:g})"
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        metavar="X",
        default=d.adamw_wd,
        help=f"AdamW's weight decay, >= 0; Lion's is wd*factor (default {d.adamw_wd:g})",
    )
    parser.add_argument("--factor", type=float, metavar="X", default=d.factor, help=f"the from_adamw factor, > 0 (default {d.factor:g})")
    parser.add_argument("--warmup", type=int, metavar="N", default=d.warmup, help=f"linear warm-up steps, >= 0 (default {d.warmup})")
    parser.add_argument(
        "--grad-clip",
        type=float,
        metavar="X",
        default=d.grad_clip,
        help=f"global gradient-norm clip, >= 0; 0 = none (default {d.grad_clip:g})",
    )
    parser.add_argument(
        "--eval-interval", type=int, metavar="N", default=eval_interval, help=f"steps between loss estimates (default {eval_interval})"
    )
    parser.add_argument(
        "--eval-iters", type=int, metavar="N", default=d.eval_iters, help=f"batches per loss estimate and split (default {d.eval_iters})"
    )
    parser.add_argument(
        "--seed", type=int, metavar="N", default=d.seed, help=f"seed of the initial weights and of the batches (default {d.seed})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: torch's choice, one per CPU); on a machine shared with other work, "
        "fewer threads than the free CPUs keep the speed figures meaningful",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a tiny model ({q['n_layer']} layers, width {q['n_embd']}, context {q['block_size']}, batch {q['batch_size']}) "
        f"and {q['steps']} steps per run: {quick_help}",
    )
    parser.add_argument("--out", default=".", metavar="DIR", help=out_help)


def settings_from(args: argparse.Namespace) -> Settings:
    """The Settings the arguments ask for; --quick replaces the task shape with QUICK (explicit flags still win)."""
    values: dict[str, Any] = dict(
        steps=args.steps,
        batch_size=args.batch_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
        adamw_lr=args.lr,
        adamw_wd=args.weight_decay,
        factor=args.factor,
        warmup=args.warmup,
        grad_clip=args.grad_clip,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        seed=args.seed,
    )
    if args.quick:
        defaults = args.parser_defaults
        for key, value in QUICK.items():
            if values[key] == defaults[key]:
                values[key] = value
    settings = Settings(**values)
    settings.check()
    if args.threads is not None:
        torch.set_num_threads(integer("--threads", args.threads, 1))
    return settings


def run_all(specs, corpus, settings: Settings, command: str) -> list[RunResult]:
    """Train every spec from the same initial weights with a tqdm bar per run; evaluation lines go above the bars."""
    tqdm = require("tqdm", command).tqdm
    init = initial_state(settings, corpus.vocab_size)
    results = []
    for spec in specs:
        with tqdm(total=settings.steps, desc=spec.label, unit="step", leave=False, dynamic_ncols=True) as bar:

            def progress(step: int, loss: float, bar=bar) -> None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")

            results.append(train(spec, corpus, settings, init, progress=progress, log=bar.write))
    return results


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(results: list[RunResult]) -> str:
    """The results table, with a note under it when other work competed for this process's CPUs in some run."""
    width = max(28, *(len(r.label) for r in results))
    header = f"{'optimizer':<{width}} {'train':>7} {'val':>7} {'tokens/s':>9} {'opt step ms':>11} {'state bytes':>11} {'other load':>10}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.label:<{width}} {r.final_train:>7.4f} {r.final_val:>7.4f} {r.tokens_per_s:>9.0f} {r.optimizer_step_ms:>11.3f} "
            f"{r.state_bytes:>11,d} {_share(r.other_load):>10}"
        )
    busy = [r for r in results if contended(r.other_load, torch.get_num_threads())]
    if busy:
        lines.append(
            f"note: other work took {', '.join(f'{_share(r.other_load)} ({r.label})' for r in busy)} of this machine's CPU time "
            "during these runs: tokens/s and step times are contended, not comparable between runs (the losses are not "
            "affected); to compare speed, rerun on a quiet machine or with fewer --threads than the CPUs other work leaves free"
        )
    elif all(r.other_load is None for r in results):
        lines.append("note: tokens/s and step times are wall-clock; this platform does not say how busy the machine was")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_memory(results: list[RunResult]) -> str:
    """Where the training memory goes: bytes per parameter of the weights, gradients and optimizer state at their
    peaks, their largest sum at one moment, a step's temporaries, and the run's peak resident memory."""
    width = max(len("optimizer"), *(len(r.label) for r in results))
    n = results[0].params
    lines = [
        f"memory, bytes per parameter ({n:,d} parameters), measured on the live tensors over the first {MEMORY_STEPS} steps: each at its",
        "peak; 'together' is the largest sum of the three at one moment; 'step temp' what optimizer.step() allocated beyond",
        "them (- under gradient release, whose steps run inside backward); activations are not counted, peak RSS counts all",
        f"{'optimizer':<{width}}  {'weights':>7} {'gradients':>9} {'state':>6} {'together':>8} {'step temp':>9} {'peak RSS MB':>11}",
    ]
    for r in results:
        m = r.memory
        lines.append(
            f"{r.label:<{width}}  {m['weights']:>7.2f} {m['gradients']:>9.2f} {m['state']:>6.2f} {m['together']:>8.2f} "
            f"{_fmt(m['step_temporaries'], '.2f'):>9} {r.peak_rss_mb:>11.0f}"
        )
    if not all(r.peak_rss_per_run for r in results):
        lines.append("note: peak RSS is the process's since it started (this platform cannot reset it between runs)")
    return "\n".join(lines)


def format_diagnostics(results: list[RunResult]) -> str:
    """One row per Lion run and param group: the constraint and how the weights sit in it (lionk.diagnostics)."""
    runs = [r for r in results if r.diagnostics]
    width = max(len("optimizer"), *(len(r.label) for r in runs))
    lines = [
        "constraint diagnostics at the end (lionk.diagnostics): with weight decay wd, Lion keeps every weight in |wd*x| <= 1;",
        "'at boundary' is the share of weights with |wd*x| >= 0.99, S the stationarity score per weight (0 at a constrained optimum);",
        "with wd_mode=independent the box's wd is wd / peak lr (the coefficient of the per-step decay 1 - lr * wd)",
        f"{'optimizer':<{width}}  {'weights':<11} {'wd':>6} {'kernel':<14} {'constraint':<31} "
        f"{'at boundary':>11} {'max|wd*x|':>9} {'S':>10}",
    ]
    for r in runs:
        for g in r.diagnostics:
            constraint = "none (wd = 0)" if g["constraint"] == "none" else g["constraint"]
            lines.append(
                f"{r.label:<{width}}  {g['group']:<11} {g['weight_decay']:>6.3g} {g['kernel']:<14} {constraint:<31} "
                f"{_fmt(g['boundary_fraction'], '.1%'):>11} {_fmt(g['max_scaled'], '.4f'):>9} {_fmt(g['stationarity'], '.3e'):>10}"
            )
    return "\n".join(lines)


def plot_curves(results: list[RunResult], title: str, path: Path, command: str) -> None:
    """Training loss (smoothed batch loss) and validation loss against step, one line per run, a legend in each panel."""
    plt = pyplot(command)
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True, layout="constrained")
    for r in results:
        ema, smooth = None, []
        for loss in r.step_loss:
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            smooth.append(ema)
        (line,) = ax_train.plot(range(1, len(smooth) + 1), smooth, lw=1.2, label=r.label)
        ax_val.plot([s for s, _ in r.val_loss], [v for _, v in r.val_loss], "o-", ms=4, color=line.get_color(), label=r.label)
    ax_train.set(title="training loss (moving average of the batch loss)", xlabel="step", ylabel="cross-entropy (nats per character)")
    ax_val.set(title="validation loss (same batches at every estimate)", xlabel="step")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(title="optimizer")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    specs = parse_optims(args.optim)
    settings = settings_from(args)
    corpus = load_corpus(args.data)
    corpus.check_context(settings.block_size)
    out = output_dir(args.out, ("compare.png", "compare.json"))
    pyplot("compare")  # fail before training when matplotlib is missing
    require("tqdm", "compare")
    print(
        f"corpus: {corpus.source}: vocab {corpus.vocab_size}, {len(corpus.train):,} train / {len(corpus.val):,} val chars; "
        f"model {settings.n_layer}x{settings.n_embd} (heads {settings.n_head}, context {settings.block_size}); "
        f"{settings.steps} steps at batch {settings.batch_size}; {torch.get_num_threads()} threads"
    )
    for spec in specs:
        if "vector_kernel" in (hp := hyperparameters(spec, settings)):
            print(f"{spec.label}: kernel {hp['kernel']} takes matrices only; the 1-D weights (norm gains) use {hp['vector_kernel']}")
    results = run_all(specs, corpus, settings, "compare")
    print(format_table(results))
    print("\n" + format_memory(results))
    if any(r.diagnostics for r in results):
        print("\n" + format_diagnostics(results))
    source = Path(corpus.source).name if args.data else "python-stdlib"
    title = f"{source}: model {settings.n_layer}x{settings.n_embd}, {settings.steps} steps at batch {settings.batch_size}"
    png, js = out / "compare.png", out / "compare.json"
    plot_curves(results, title, png, "compare")
    report = {
        "command": "compare",
        "corpus": {
            "source": corpus.source,
            "vocab_size": corpus.vocab_size,
            "train_chars": len(corpus.train),
            "val_chars": len(corpus.val),
        },
        "settings": settings.__dict__ | {"betas": list(settings.betas)},
        "machine": machine(),
        "runs": [r.to_json() for r in results],
    }
    js.write_text(json.dumps(report, indent=1))
    print(f"wrote {png} and {js}")
    return 0


def optim_keys() -> str:
    """The --optim keys and their values, as an aligned list for the end of --help."""
    width = max(len(key) for key in OPTION_HELP)
    lines = ["--optim entries are name:key=value:key=value..., e.g. lion,lion:kernel=huber(a=0.5):lr=1e-4,lionsf:mode=averaging,adamw"]
    for key, text in OPTION_HELP.items():
        lines += textwrap.wrap(text, 100, initial_indent=f"  {key:<{width}}  ", subsequent_indent=" " * (width + 4))
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="train a small character-level GPT with several optimizers",
        description=__doc__,
        epilog=optim_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--optim",
        default="lion,adamw",
        metavar="SPECS",
        help="comma-separated optimizers lion, lionsf (schedule-free Lion) and adamw, each with options (see the keys below; "
        "default lion,adamw)",
    )
    add_task_arguments(
        parser,
        steps=1000,
        eval_interval=250,
        quick_help="2 runs, about 10 s on 2 quiet CPU cores",
        out_help="directory for compare.png and compare.json, created if missing (default: the current directory)",
    )
    parser.set_defaults(func=run, parser_defaults={a.dest: a.default for a in parser._actions})
