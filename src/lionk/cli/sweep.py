"""lionk sweep: learning rate x weight decay grids for Lion and AdamW (the Lion paper's robustness figure).

Each optimizer is run on the task of lionk compare (same model, data, schedule, initial weights and
batches) over a grid centred on its own setting: AdamW's --lr and --weight-decay, Lion's
from_adamw(lr, wd, factor); grid points are the centre times --lr-multipliers and --wd-multipliers.
The final validation loss of every run is drawn as two heatmaps side by side on one colour scale
(sweep.png); a diverged run shows as a grey cell.

--batch-sizes B1,B2,... runs the batch-size ablation instead: both optimizers at their centre settings,
every batch size trained on the same number of tokens (--steps x --batch-size x context), so a batch
B run takes round(steps * batch_size / B) steps; it writes sweep_batch.png (final validation loss
against batch size). Both modes write sweep.json into --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
from pathlib import Path

from . import CLIError
from ._deps import pyplot, require
from .checks import output_dir
from .compare import add_task_arguments, settings_from
from .data import load_corpus
from .machine import machine
from .training import OptimSpec, Settings, hyperparameters, initial_state, parse_float_list, train

OPTIMIZERS = ("lion", "adamw")
#: What --quick costs here (the default grid: 18 runs), for --help.
QUICK_HELP = "18 runs with the default grid, about 30 s on 2 quiet CPU cores"


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
            grids[name] = {"lr": lrs, "weight_decay": wds, "val_loss": losses, "centre": [lr0, wd0]}
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


def _cell_text_colour(cmap, norm, value: float) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell's colour)."""
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def plot_grid(grids: dict, title: str, path: Path) -> None:
    """One heatmap per optimizer (rows: weight decay, columns: learning rate) on one colour scale, with its values."""
    plt = pyplot("sweep")
    finite = [v for g in grids.values() for row in g["val_loss"] for v in row if math.isfinite(v)]
    vmin, vmax = (min(finite), max(finite)) if finite else (0.0, 1.0)
    cap = statistics.median(finite) + 2 * (statistics.median(finite) - vmin) if finite else vmax
    capped = vmax > cap > vmin  # a few bad runs would wash out the rest: colour up to the cap, print exact numbers
    vmax = cap if capped else vmax
    n_lr, n_wd = (len(next(iter(grids.values()))[k]) for k in ("lr", "weight_decay"))
    cell = 1.05
    fig, axes = plt.subplots(
        1, len(grids), figsize=(len(grids) * (cell * n_lr + 1.3) + 1.2, cell * n_wd + 1.7), layout="constrained", squeeze=False
    )
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="0.8")
    norm = plt.Normalize(vmin, vmax)
    for ax, (name, g) in zip(axes[0], grids.items()):
        values = [[v if math.isfinite(v) else math.nan for v in row] for row in g["val_loss"]]
        image = ax.imshow(values, origin="lower", cmap=cmap, norm=norm, aspect="auto")
        for i, row in enumerate(g["val_loss"]):
            for j, v in enumerate(row):
                finite_cell = math.isfinite(v)
                colour = _cell_text_colour(cmap, norm, v) if finite_cell else "black"
                ax.text(j, i, f"{v:.3f}" if finite_cell else "diverged", ha="center", va="center", fontsize=10, color=colour)
        ax.set_xticks(range(len(g["lr"])), [f"{v:.2g}" for v in g["lr"]])
        ax.set_yticks(range(len(g["weight_decay"])), [f"{v:.2g}" for v in g["weight_decay"]])
        lr0, wd0 = g["centre"]
        panel = f"{name}: centre lr {lr0:.2g}, wd {wd0:.2g}"
        if lr0 in g["lr"] and wd0 in g["weight_decay"]:  # outline the centre cell
            j, i = g["lr"].index(lr0), g["weight_decay"].index(wd0)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="tab:red", lw=2.5))
            panel += " (outlined)"
        ax.set(xlabel="learning rate", ylabel="weight decay", title=panel)
    label = "final validation loss (lower is better)" + (f"; colours stop at {cap:.2f}" if capped else "")
    fig.colorbar(image, ax=axes[0].tolist(), label=label, extend="max" if capped else "neither")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_batches(curves: dict, title: str, path: Path) -> None:
    """Final validation loss against batch size (log axis, one tick per batch size), one line per optimizer."""
    plt = pyplot("sweep")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for name, c in curves.items():
        ax.plot(c["batch_size"], c["val_loss"], "o-", label=name)
    sizes = curves[OPTIMIZERS[0]]["batch_size"]
    ax.set(xscale="log", xlabel="batch size (every run trains on the same number of tokens)", ylabel="final validation loss")
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.minorticks_off()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="optimizer")
    fig.savefig(path, dpi=100)
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
            raise CLIError(f"invalid --batch-sizes {args.batch_sizes!r}: must be positive integers")
        batch_sizes = sorted(int(v) for v in values)
    corpus = load_corpus(args.data)
    corpus.check_context(settings.block_size)
    out = output_dir(args.out, ("sweep.png" if batch_sizes is None else "sweep_batch.png", "sweep.json"))
    pyplot("sweep")  # fail before training when matplotlib is missing
    require("tqdm", "sweep")
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
    parser = subparsers.add_parser(
        "sweep",
        help="lr x weight-decay grids for Lion and AdamW; batch-size ablation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--lr-multipliers",
        default="0.333,1,3",
        metavar="M1,M2,...",
        help="lr grid as multiples of each optimizer's centre lr: distinct positive numbers (default 0.333,1,3)",
    )
    parser.add_argument(
        "--wd-multipliers",
        default="0.1,1,10",
        metavar="M1,M2,...",
        help="weight-decay grid as multiples of each optimizer's centre: distinct positive numbers (default 0.1,1,10)",
    )
    parser.add_argument(
        "--batch-sizes",
        metavar="B1,B2,...",
        help="run the batch-size ablation at a fixed token budget instead of the grid: distinct positive integers",
    )
    add_task_arguments(
        parser,
        steps=200,
        eval_interval=200,
        quick_help=QUICK_HELP,
        out_help="directory for sweep.png (or sweep_batch.png) and sweep.json, created if missing (default: the current directory)",
    )
    parser.set_defaults(func=run, parser_defaults={a.dest: a.default for a in parser._actions})
