"""``lionk compare``: train a small character-level GPT with several optimizers from the same start on the same batches.

Prints a table (final train and validation loss, training tokens/s, median optimizer-step time, optimizer state
bytes, process peak RSS) and writes ``compare.png`` (loss curves) and ``compare.json`` (settings, machine, every
curve) into ``--out`` (default: the current directory). AdamW's settings default to nanoGPT's for its CPU "baby"
model (lr 1e-3, wd 0.1 on 2-D weights, betas (0.9, 0.99), 100 warm-up steps, cosine to lr/10, clip 1.0); Lion's
come from :func:`lionk.from_adamw` with the same schedule shape.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from . import CLIError
from ._deps import pyplot, require
from .data import load_corpus
from .training import RunResult, Settings, initial_state, parse_optims, train

QUICK = dict(steps=150, batch_size=8, block_size=32, n_layer=2, n_head=2, n_embd=64, warmup=15, eval_interval=50, eval_iters=5)


def add_task_arguments(parser: argparse.ArgumentParser, *, steps: int, eval_interval: int) -> None:
    """Arguments shared by ``compare`` and ``sweep``: the data, the model, the AdamW baseline and its schedule."""
    d = Settings()
    parser.add_argument("--data", metavar="PATH", help="a UTF-8 text file (default: source of this Python's standard library)")
    parser.add_argument("--steps", type=int, default=steps, help=f"optimizer steps per run (default {steps})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per batch (default {d.batch_size})")
    parser.add_argument("--block-size", type=int, default=d.block_size, help=f"context length (default {d.block_size})")
    parser.add_argument("--n-layer", type=int, default=d.n_layer)
    parser.add_argument("--n-head", type=int, default=d.n_head)
    parser.add_argument("--n-embd", type=int, default=d.n_embd)
    parser.add_argument("--lr", type=float, default=d.adamw_lr, help=f"AdamW peak lr; Lion's is lr/factor (default {d.adamw_lr})")
    parser.add_argument(
        "--weight-decay", type=float, default=d.adamw_wd, help=f"AdamW weight decay; Lion's is wd*factor (default {d.adamw_wd})"
    )
    parser.add_argument("--factor", type=float, default=d.factor, help=f"from_adamw factor (default {d.factor:g})")
    parser.add_argument("--warmup", type=int, default=d.warmup, help=f"linear warm-up steps (default {d.warmup})")
    parser.add_argument("--grad-clip", type=float, default=d.grad_clip, help="global gradient-norm clip, 0 = none (default 1.0)")
    parser.add_argument("--eval-interval", type=int, default=eval_interval, help=f"steps between loss estimates (default {eval_interval})")
    parser.add_argument("--eval-iters", type=int, default=d.eval_iters, help=f"batches per loss estimate (default {d.eval_iters})")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the initial weights and of the batches")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="a tiny model and a short run (well under a minute on 2 CPU cores)")
    parser.add_argument("--out", default=".", metavar="DIR", help="directory for the PNG and JSON (default: current directory)")


def settings_from(args: argparse.Namespace) -> Settings:
    """The Settings the arguments ask for; ``--quick`` replaces the task shape with :data:`QUICK` (explicit flags still win)."""
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
    if not args.factor > 0:
        raise CLIError(f"invalid --factor: {args.factor} (must be > 0)")
    settings = Settings(**values)
    settings.check()
    if settings.n_embd % settings.n_head:
        raise CLIError(f"invalid --n-embd {settings.n_embd}: must be a multiple of --n-head {settings.n_head}")
    if args.threads is not None:
        if args.threads <= 0:
            raise CLIError(f"invalid --threads: {args.threads} (must be > 0)")
        torch.set_num_threads(args.threads)
    return settings


def output_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {path} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
    }


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


def format_table(results: list[RunResult]) -> str:
    header = f"{'optimizer':<28} {'train':>7} {'val':>7} {'tokens/s':>9} {'opt step ms':>11} {'state bytes':>11} {'peak RSS MB':>11}"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.label:<28} {r.final_train:>7.4f} {r.final_val:>7.4f} {r.tokens_per_s:>9.0f} {r.optimizer_step_ms:>11.3f} "
            f"{r.state_bytes:>11,d} {r.peak_rss_mb:>11.0f}"
        )
    return "\n".join(lines)


def plot_curves(results: list[RunResult], title: str, path: Path, command: str) -> None:
    plt = pyplot(command)
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for r in results:
        ema, smooth = None, []
        for loss in r.step_loss:
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            smooth.append(ema)
        (line,) = ax_train.plot(range(1, len(smooth) + 1), smooth, lw=1, label=r.label)
        ax_val.plot([s for s, _ in r.val_loss], [v for _, v in r.val_loss], "o-", ms=3, color=line.get_color(), label=r.label)
    ax_train.set(title="training loss (EMA 0.95 of the batch loss)", xlabel="step", ylabel="cross-entropy (nats/char)")
    ax_val.set(title="validation loss", xlabel="step")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
    ax_val.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    specs = parse_optims(args.optim)
    settings = settings_from(args)
    out = output_dir(args.out)
    corpus = load_corpus(args.data)
    corpus.check_context(settings.block_size)
    pyplot("compare")  # fail before training when matplotlib is missing
    print(
        f"corpus: {corpus.source}: vocab {corpus.vocab_size}, {len(corpus.train):,} train / {len(corpus.val):,} val chars; "
        f"model {settings.n_layer}x{settings.n_embd} (heads {settings.n_head}, context {settings.block_size}); "
        f"{settings.steps} steps at batch {settings.batch_size}; {torch.get_num_threads()} threads"
    )
    results = run_all(specs, corpus, settings, "compare")
    print(format_table(results))
    lion_runs = [r for r in results if r.diagnostics]
    if lion_runs:
        print("\nconstraint diagnostics at the end (lionk.diagnostics; Lion keeps |wd*x| <= 1):")
        for r in lion_runs:
            print(f"{r.label}:\n  " + r.diagnostics.replace("\n", "\n  "))
    title = f"{Path(corpus.source).name if args.data else 'python-stdlib'}: {settings.steps} steps, batch {settings.batch_size}"
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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compare", help="train a small character-level GPT with several optimizers", description=__doc__)
    parser.add_argument(
        "--optim",
        default="lion,adamw",
        help="comma-separated optimizers lion, lionsf, adamw, each name[:key=value...] with keys kernel, lr, wd, beta1, beta2, "
        "factor, cautious, mode (lionsf: agreement|averaging), schedule (cosine|constant) "
        "(e.g. lion,lion:cautious=1,lionsf:mode=averaging,adamw; default lion,adamw)",
    )
    add_task_arguments(parser, steps=1000, eval_interval=250)
    parser.set_defaults(func=run, parser_defaults={a.dest: a.default for a in parser._actions})
