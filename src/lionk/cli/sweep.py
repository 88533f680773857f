"""``lionk sweep``: learning rate x weight decay grids for Lion and AdamW (the Lion paper's robustness figure).

Each optimizer is run on the task of ``lionk compare`` (same model, data, schedule, initial weights and
batches) over a grid centred on its own setting: AdamW's ``--lr`` and ``--weight-decay``, Lion's
``from_adamw(lr, wd, factor)``; grid points are the centre times ``--lr-multipliers`` and ``--wd-multipliers``.
The final validation loss of every run is drawn as two heatmaps side by side with one colour scale
(``sweep.png``); a diverged run shows as a blank cell.

``--batch-sizes B1,B2,...`` runs the batch-size ablation instead: both optimizers at their centre settings,
every batch size trained on the same number of tokens (``--steps`` x ``--batch-size`` x context), so a batch
``B`` run takes ``round(steps * batch_size / B)`` steps; it writes ``sweep_batch.png`` (final validation loss
against batch size). Both modes write ``sweep.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

from . import CLIError
from ._deps import pyplot, require
from .compare import add_task_arguments, machine, output_dir, settings_from
from .data import load_corpus
from .training import OptimSpec, Settings, hyperparameters, initial_state, parse_float_list, train

OPTIMIZERS = ("lion", "adamw")


def _centre(name: str, settings: Settings) -> tuple[float, float]:
    hp = hyperparameters(OptimSpec(name, name), settings)
    return hp["lr"], hp["weight_decay"]


def _spec(name: str, lr: float, wd: float) -> OptimSpec:
    return OptimSpec(f"{name}:lr={lr:.3g}:wd={wd:.3g}", name, {"lr": repr(lr), "wd": repr(wd)})


def run_grid(corpus, settings: Settings, lr_mults: list[float], wd_mults: list[float]) -> dict:
    """Final validation loss for every (optimizer, lr, wd); rows are weight decays, columns learning rates."""
    tqdm = require("tqdm", "sweep").tqdm
    init = initial_state(settings, corpus.vocab_size)
    grids = {}
    with tqdm(total=len(OPTIMIZERS) * len(lr_mults) * len(wd_mults), desc="sweep", unit="run", dynamic_ncols=True) as bar:
        for name in OPTIMIZERS:
            lr0, wd0 = _centre(name, settings)
            lrs, wds = [lr0 * m for m in lr_mults], [wd0 * m for m in wd_mults]
            losses = []
            for wd in wds:
                row = []
                for lr in lrs:
                    result = train(_spec(name, lr, wd), corpus, settings, init)
                    row.append(result.final_val)
                    bar.update(1)
                    bar.set_postfix_str(f"{result.label}: val {result.final_val:.3f}")
                losses.append(row)
            grids[name] = {"lr": lrs, "weight_decay": wds, "val_loss": losses}
    return grids


def run_batches(corpus, settings: Settings, batch_sizes: list[int]) -> dict:
    """Final validation loss against batch size at a fixed token budget, both optimizers at their centre settings."""
    tqdm = require("tqdm", "sweep").tqdm
    tokens = settings.steps * settings.batch_size
    out = {name: {"batch_size": [], "steps": [], "val_loss": []} for name in OPTIMIZERS}
    with tqdm(total=len(OPTIMIZERS) * len(batch_sizes), desc="batch sizes", unit="run", dynamic_ncols=True) as bar:
        for b in batch_sizes:
            steps = max(1, round(tokens / b))
            s = dataclasses.replace(settings, batch_size=b, steps=steps, eval_interval=steps, warmup=min(settings.warmup, steps // 10))
            init = initial_state(s, corpus.vocab_size)
            for name in OPTIMIZERS:
                lr, wd = _centre(name, settings)
                result = train(_spec(name, lr, wd), corpus, s, init)
                for key, value in (("batch_size", b), ("steps", steps), ("val_loss", result.final_val)):
                    out[name][key].append(value)
                bar.update(1)
                bar.set_postfix_str(f"{name} batch {b}: val {result.final_val:.3f}")
    return out


def plot_grid(grids: dict, title: str, path: Path) -> None:
    plt = pyplot("sweep")
    finite = [v for g in grids.values() for row in g["val_loss"] for v in row if math.isfinite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    fig, axes = plt.subplots(1, len(grids), figsize=(5.2 * len(grids), 4.2))
    for ax, (name, g) in zip(axes, grids.items()):
        image = ax.imshow(g["val_loss"], origin="lower", cmap="viridis_r", vmin=vmin, vmax=vmax)
        for i, row in enumerate(g["val_loss"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.3f}" if math.isfinite(v) else "div", ha="center", va="center", fontsize=8, color="w")
        ax.set_xticks(range(len(g["lr"])), [f"{v:.2g}" for v in g["lr"]])
        ax.set_yticks(range(len(g["weight_decay"])), [f"{v:.2g}" for v in g["weight_decay"]])
        ax.set(xlabel="learning rate", ylabel="weight decay", title=f"{name}: final validation loss")
    fig.colorbar(image, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_batches(curves: dict, title: str, path: Path) -> None:
    plt = pyplot("sweep")
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, c in curves.items():
        ax.plot(c["batch_size"], c["val_loss"], "o-", label=name)
    ax.set(xscale="log", xlabel="batch size (same number of tokens)", ylabel="final validation loss", title=title)
    ax.set_xticks(curves[OPTIMIZERS[0]]["batch_size"], [str(b) for b in curves[OPTIMIZERS[0]]["batch_size"]])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    settings = dataclasses.replace(settings, eval_interval=settings.steps)  # only the final loss is used
    lr_mults = parse_float_list(args.lr_multipliers, "--lr-multipliers")
    wd_mults = parse_float_list(args.wd_multipliers, "--wd-multipliers")
    batch_sizes = None
    if args.batch_sizes is not None:
        values = parse_float_list(args.batch_sizes, "--batch-sizes")
        if any(v != int(v) for v in values):
            raise CLIError(f"invalid --batch-sizes {args.batch_sizes!r} (expected positive integers)")
        batch_sizes = sorted({int(v) for v in values})
    out = output_dir(args.out)
    corpus = load_corpus(args.data)
    corpus.check_context(settings.block_size)
    pyplot("sweep")  # fail before training when matplotlib is missing
    source = Path(corpus.source).name if args.data else "python-stdlib"
    report = {
        "command": "sweep",
        "corpus": corpus.source,
        "settings": settings.__dict__ | {"betas": list(settings.betas)},
        "machine": machine(),
    }
    if batch_sizes is None:
        grids = run_grid(corpus, settings, lr_mults, wd_mults)
        png = out / "sweep.png"
        plot_grid(
            grids, f"{source}: {settings.steps} steps at batch {settings.batch_size}, model {settings.n_layer}x{settings.n_embd}", png
        )
        report["grid"] = grids
        for name, g in grids.items():
            best = min(
                ((v, lr, wd) for wd, row in zip(g["weight_decay"], g["val_loss"]) for lr, v in zip(g["lr"], row) if math.isfinite(v)),
                default=None,
            )
            spread = [v for row in g["val_loss"] for v in row if math.isfinite(v)]
            text = (
                "all runs diverged"
                if best is None
                else f"best val {best[0]:.4f} at lr {best[1]:.3g}, wd {best[2]:.3g}; worst {max(spread):.4f}"
            )
            print(f"{name}: {text}")
    else:
        curves = run_batches(corpus, settings, batch_sizes)
        png = out / "sweep_batch.png"
        tokens = settings.steps * settings.batch_size * settings.block_size
        plot_batches(curves, f"{source}: {tokens:,} training tokens per run", png)
        report["batch_sizes"] = curves
        for name, c in curves.items():
            print(
                f"{name}: "
                + ", ".join(f"batch {b} ({s} steps): val {v:.4f}" for b, s, v in zip(c["batch_size"], c["steps"], c["val_loss"]))
            )
    js = out / "sweep.json"
    js.write_text(json.dumps(report, indent=1))
    print(f"wrote {png} and {js}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sweep", help="lr x weight-decay grids for Lion and AdamW; batch-size ablation", description=__doc__)
    parser.add_argument(
        "--lr-multipliers", default="0.333,1,3", help="lr grid as multiples of each optimizer's centre lr (default 0.333,1,3)"
    )
    parser.add_argument("--wd-multipliers", default="0.1,1,10", help="weight-decay grid as multiples of the centre (default 0.1,1,10)")
    parser.add_argument(
        "--batch-sizes", metavar="B1,B2,...", help="run the batch-size ablation at a fixed token budget instead of the grid"
    )
    add_task_arguments(parser, steps=200, eval_interval=200)
    parser.set_defaults(func=run, parser_defaults={a.dest: a.default for a in parser._actions})
