"""lionk sweep: learning rate x weight decay grids for Lion and AdamW (the Lion paper's robustness figure).

Each optimizer is run on the task of lionk compare (same model, data, schedule, initial weights and
batches) over a grid centred on its own setting: AdamW's --lr and --weight-decay, Lion's
from_adamw(lr, wd, factor) or --lion-lr and --lion-weight-decay; grid points are the centre times
--lr-multipliers and --wd-multipliers. To compare how robust the two are, centre each grid on its own
tuned point (--lr, --weight-decay, --lion-lr, --lion-weight-decay) and give both the same multipliers.
The final validation loss of every run is drawn as two heatmaps side by side on one colour scale
(sweep.png); a diverged run shows as a grey cell.

--batch-sizes B1,B2,... runs the batch-size ablation instead. With --batch-budget tokens (the default) every
batch size trains on the same number of tokens (--steps x --batch-size x context), so a batch B run takes
round(steps * batch_size / B) steps; with --batch-budget steps every batch size takes --steps steps. At each
batch size both optimizers run the grid of --lr-multipliers x --wd-multipliers around their centre settings
(in this mode both default to 1: the centre alone), and sweep_batch.png draws the best final validation loss
of each optimizer's grid against batch size, each point labelled with the lr multiplier that won: give
several lr multipliers to re-tune the lr per batch size. Both modes write sweep.json into --out.

--seeds N runs every setting with the seeds --seed, ..., --seed + N - 1: the heatmaps then show the mean final
loss over them with its sample standard deviation in each cell, and sweep_batch.png error bars of one standard
deviation. --jobs J trains J runs at a time in separate processes. sweep.json is rewritten after every finished
run; --resume skips the (setting, seed) runs it already holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
from pathlib import Path

from . import CLIError
from ._deps import pyplot, require
from .checks import number, output_dir
from .compare import FINAL_LOSSES, add_task_arguments, settings_from
from .data import load_corpus
from .machine import machine
from .runs import Job, Record, recorded_runs, run_jobs, run_name, seed_list, threads_per_run, worker_count
from .stats import plus_minus, spread
from .training import OptimSpec, RunResult, Settings, hyperparameters, parse_float_list

OPTIMIZERS = ("lion", "adamw")
#: The grids' multipliers when none are given (the batch-size ablation then runs the centre alone).
LR_GRID, WD_GRID = "0.333,1,3", "0.1,1,10"
#: What --quick costs here (the default grid: 18 runs), for --help.
QUICK_HELP = "18 runs with the default grid, about 30 s on 2 quiet CPU cores"


Centres = dict[str, tuple[float, float]]


def centres_from(settings: Settings, lion_lr: float | None, lion_wd: float | None) -> Centres:
    """Each optimizer's grid centre (lr, weight decay): AdamW's --lr and --weight-decay; Lion's --lion-lr and
    --lion-weight-decay where given, else from_adamw(lr, wd, factor) = (lr / factor, wd * factor)."""
    centres = {}
    for name in OPTIMIZERS:
        hp = hyperparameters(OptimSpec(name, name), settings)
        centres[name] = (hp["lr"], hp["weight_decay"])
    lr0, wd0 = centres["lion"]
    centres["lion"] = (lr0 if lion_lr is None else lion_lr, wd0 if lion_wd is None else lion_wd)
    return centres


def _spec(name: str, lr: float, wd: float) -> OptimSpec:
    return OptimSpec(f"{name}:lr={lr:.3g}:wd={wd:.3g}", name, {"lr": repr(lr), "wd": repr(wd)})


@dataclasses.dataclass(frozen=True)
class Point:
    """One setting of a sweep: optimizer at lr and wd on the task settings (its batch size and steps), trained once
    per seed; name is what progress lines call it."""

    optimizer: str
    lr: float
    wd: float
    settings: Settings
    name: str

    def jobs(self, seeds: list[int]) -> list[Job]:
        spec = _spec(self.optimizer, self.lr, self.wd)
        return [Job(spec, dataclasses.replace(self.settings, seed=seed), run_name(self.name, seed, seeds)) for seed in seeds]


def grid_points(settings: Settings, centres: Centres, lr_mults: list[float], wd_mults: list[float]) -> list[Point]:
    """Every (optimizer, wd, lr) of the grids, weight decays outer, learning rates inner: the centre times the multipliers."""
    points = []
    for name in OPTIMIZERS:
        lr0, wd0 = centres[name]
        for wd in (wd0 * m for m in wd_mults):
            points += [Point(name, lr, wd, settings, _spec(name, lr, wd).label) for lr in (lr0 * m for m in lr_mults)]
    return points


def batch_points(
    settings: Settings, centres: Centres, batch_sizes: list[int], lr_mults: list[float], wd_mults: list[float], budget: str
) -> list[Point]:
    """At every batch size, each optimizer's grid (its centre times the multipliers), trained for --steps steps
    (budget "steps") or on the tokens of --steps x --batch-size (budget "tokens")."""
    tokens = settings.steps * settings.batch_size
    points = []
    for b in batch_sizes:
        steps = settings.steps if budget == "steps" else max(1, round(tokens / b))
        s = dataclasses.replace(settings, batch_size=b, steps=steps, eval_interval=steps, warmup=min(settings.warmup, steps // 10))
        for name in OPTIMIZERS:
            lr0, wd0 = centres[name]
            for wd in (wd0 * m for m in wd_mults):
                points += [Point(name, lr, wd, s, f"{_spec(name, lr, wd).label} batch {b}") for lr in (lr0 * m for m in lr_mults)]
    return points


def summarize(points: list[Point], runs: list[list[RunResult]]) -> list[dict]:
    """Per point (runs: its runs, one per seed): the setting, the seeds, and the mean and sample standard deviation
    of the final train and val loss over them."""
    return [
        {
            "optimizer": point.optimizer,
            "lr": point.lr,
            "weight_decay": point.wd,
            "batch_size": point.settings.batch_size,
            "steps": point.settings.steps,
            "seeds": [r.seed for r in point_runs],
        }
        | {loss: spread([getattr(r, loss) for r in point_runs]) for loss in FINAL_LOSSES}
        for point, point_runs in zip(points, runs, strict=True)
    ]


def grid_from(summary: list[dict], centres: Centres, lr_mults: list[float]) -> dict:
    """Per optimizer, its lrs and weight decays, its centre, and the final validation loss: mean (val_loss) and sample
    standard deviation (val_loss_sd, None for one seed) over the seeds; rows are weight decays, columns learning rates."""
    grids = {}
    for name in OPTIMIZERS:
        entries = [e for e in summary if e["optimizer"] == name]
        rows = [entries[i : i + len(lr_mults)] for i in range(0, len(entries), len(lr_mults))]
        grids[name] = {
            "lr": [e["lr"] for e in rows[0]],
            "weight_decay": [row[0]["weight_decay"] for row in rows],
            "val_loss": [[e["final_val"]["mean"] for e in row] for row in rows],
            "val_loss_sd": [[e["final_val"]["sd"] for e in row] for row in rows],
            "centre": list(centres[name]),
        }
    return grids


def best_per_batch(summary: list[dict], name: str) -> list[dict]:
    """The optimizer's summary entry with the lowest mean final validation loss at each batch size, by batch size
    (a diverged entry never wins unless all did)."""
    best = {}
    for e in (e for e in summary if e["optimizer"] == name):
        held = best.get(e["batch_size"])
        if held is None or (math.isfinite(e["final_val"]["mean"]) and not e["final_val"]["mean"] >= held["final_val"]["mean"]):
            best[e["batch_size"]] = e
    return [best[b] for b in sorted(best)]


def batches_from(summary: list[dict], centres: Centres) -> dict:
    """Per optimizer, against batch size, its best grid point (best_per_batch): the steps, its lr and weight decay and
    their multiples of the centre (lr_multiplier, wd_multiplier), and its final validation loss, mean (val_loss) and
    sample standard deviation (val_loss_sd, None for one seed) over the seeds."""
    curves = {}
    for name in OPTIMIZERS:
        lr0, wd0 = centres[name]
        entries = best_per_batch(summary, name)
        curves[name] = {
            "batch_size": [e["batch_size"] for e in entries],
            "steps": [e["steps"] for e in entries],
            "lr": [e["lr"] for e in entries],
            "weight_decay": [e["weight_decay"] for e in entries],
            "lr_multiplier": [e["lr"] / lr0 for e in entries],
            "wd_multiplier": [e["weight_decay"] / wd0 if wd0 else 1.0 for e in entries],
            "val_loss": [e["final_val"]["mean"] for e in entries],
            "val_loss_sd": [e["final_val"]["sd"] for e in entries],
        }
    return curves


def _cell_text_colour(cmap, norm, value: float) -> str:
    """Black on light cells, white on dark ones (relative luminance of the cell's colour)."""
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "white"


def _cell_text(mean: float, sd: float | None) -> str:
    """A heatmap cell's annotation: the mean final loss, and under it ± its standard deviation over the seeds."""
    if not math.isfinite(mean):
        return "diverged"
    return f"{mean:.3f}" if sd is None else f"{mean:.3f}\n± {sd:.3f}"


def plot_grid(grids: dict, title: str, path: Path, seeds: int) -> None:
    """One heatmap per optimizer (rows: weight decay, columns: learning rate) on one colour scale, with its values:
    with several seeds, the colour and the first number are the mean over them, the second their sample standard deviation."""
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
        for i, (row, sd_row) in enumerate(zip(g["val_loss"], g["val_loss_sd"])):
            for j, (v, sd) in enumerate(zip(row, sd_row)):
                colour = _cell_text_colour(cmap, norm, v) if math.isfinite(v) else "black"
                ax.text(j, i, _cell_text(v, sd), ha="center", va="center", fontsize=10 if seeds == 1 else 9, color=colour)
        ax.set_xticks(range(len(g["lr"])), [f"{v:.2g}" for v in g["lr"]])
        ax.set_yticks(range(len(g["weight_decay"])), [f"{v:.2g}" for v in g["weight_decay"]])
        lr0, wd0 = g["centre"]
        panel = f"{name}: centre lr {lr0:.2g}, wd {wd0:.2g}"
        if lr0 in g["lr"] and wd0 in g["weight_decay"]:  # outline the centre cell
            j, i = g["lr"].index(lr0), g["weight_decay"].index(wd0)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="tab:red", lw=2.5))
            panel += " (outlined)"
        ax.set(xlabel="learning rate", ylabel="weight decay", title=panel)
    label = ("mean " if seeds > 1 else "") + "final validation loss (lower is better)" + (f"; colours stop at {cap:.2f}" if capped else "")
    fig.colorbar(image, ax=axes[0].tolist(), label=label, extend="max" if capped else "neither")
    if seeds > 1:
        title += f"\neach cell: the mean final validation loss over {seeds} seeds, under it ± their sample standard deviation"
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_batches(curves: dict, title: str, path: Path, seeds: int, budget: str, tuned: bool) -> None:
    """Final validation loss against batch size (log axis, one tick per batch size), one line per optimizer; with several
    seeds, the mean over them with error bars of ± one sample standard deviation; with a grid per batch size (tuned),
    each point is the grid's best and is labelled with its lr (and its weight decay, when that was tuned too); a weight
    decay that is the same at every point is named in the legend."""
    plt = pyplot("sweep")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for i, (name, c) in enumerate(curves.items()):
        one_wd = len(set(c["weight_decay"])) == 1
        label = name + (f", wd {c['weight_decay'][0]:.3g}" if one_wd else "") + (" (best of its grid)" if tuned else "")
        ax.errorbar(c["batch_size"], c["val_loss"], yerr=c["val_loss_sd"] if seeds > 1 else None, fmt="o-", capsize=4, label=label)
        if tuned:
            for b, v, lr, wd in zip(c["batch_size"], c["val_loss"], c["lr"], c["weight_decay"]):
                text = f"lr {lr:.3g}" + ("" if one_wd else f", wd {wd:.3g}")
                offset = (6, 4) if i == 0 else (6, -12)  # the first optimizer's labels above its points, the second's below
                ax.annotate(text, (b, v), textcoords="offset points", xytext=offset, fontsize=8)
    sizes = curves[OPTIMIZERS[0]]["batch_size"]
    ylabel = "final validation loss" + (f" (mean of {seeds} seeds, bars ± 1 sd)" if seeds > 1 else "")
    matched = "the same number of steps" if budget == "steps" else "the same number of tokens"
    ax.set(xscale="log", xlabel=f"batch size (every run trains for {matched})", ylabel=ylabel)
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
    seeds = seed_list(settings.seed, args.seeds)
    batch_sizes = None
    if args.batch_sizes is not None:
        values = parse_float_list(args.batch_sizes, "--batch-sizes")
        if any(v != int(v) for v in values):
            raise CLIError(f"invalid --batch-sizes {args.batch_sizes!r}: must be positive integers")
        batch_sizes = sorted(int(v) for v in values)
    elif args.batch_budget is not None:
        raise CLIError("--batch-budget applies only to the batch-size ablation: give --batch-sizes too")
    lr_default, wd_default = ("1", "1") if batch_sizes else (LR_GRID, WD_GRID)
    lr_mults = parse_float_list(args.lr_multipliers if args.lr_multipliers is not None else lr_default, "--lr-multipliers")
    wd_mults = parse_float_list(args.wd_multipliers if args.wd_multipliers is not None else wd_default, "--wd-multipliers")
    budget = args.batch_budget or "tokens"
    lion_lr = None if args.lion_lr is None else number("--lion-lr", args.lion_lr, 0.0, low_open=True)
    lion_wd = None if args.lion_weight_decay is None else number("--lion-weight-decay", args.lion_weight_decay, 0.0)
    centres = centres_from(settings, lion_lr, lion_wd)
    corpus = load_corpus(args.data)
    corpus.check_context(settings.block_size)
    out = output_dir(args.out, ("sweep.png" if batch_sizes is None else "sweep_batch.png", "sweep.json"))
    pyplot("sweep")  # fail before training when matplotlib is missing
    require("tqdm", "sweep")
    source = Path(corpus.source).name if args.data else "python-stdlib"
    js = out / "sweep.json"
    head = {"command": "sweep", "corpus": corpus.source, "settings": settings.to_json(), "seeds": seeds, "machine": machine()}
    if batch_sizes is None:
        points = grid_points(settings, centres, lr_mults, wd_mults)
    else:
        points = batch_points(settings, centres, batch_sizes, lr_mults, wd_mults, budget)
    jobs = [job for point in points for job in point.jobs(seeds)]
    record = Record(js, head, jobs, recorded_runs(js, head) if args.resume else [])
    workers = worker_count(args.jobs, len(record.missing(jobs)))
    if workers > 1 or len(seeds) > 1:
        print(
            f"{len(points)} settings x {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}); {threads_per_run(workers)} threads"
            + (f" in each of {workers} processes" if workers > 1 else "")
        )
    desc = "sweep" if batch_sizes is None else "batch sizes"
    results = run_jobs(jobs, corpus, record, workers=workers, command="sweep", desc=desc, bar_per_run=False)
    summary = summarize(points, [results[i : i + len(seeds)] for i in range(0, len(results), len(seeds))])
    if len(seeds) > 1:
        print(f"final validation loss: mean ± sample standard deviation over {len(seeds)} seeds")
    if batch_sizes is None:
        grids = grid_from(summary, centres, lr_mults)
        png = out / "sweep.png"
        title = f"{source}: {settings.steps} steps at batch {settings.batch_size}, model {settings.n_layer}x{settings.n_embd}"
        plot_grid(grids, title, png, len(seeds))
        record.write(summary=summary, grid=grids)
        for name in OPTIMIZERS:
            finite = [e for e in summary if e["optimizer"] == name and math.isfinite(e["final_val"]["mean"])]
            if not finite:
                print(f"{name}: all runs diverged")
                continue
            best = min(finite, key=lambda e: e["final_val"]["mean"])
            worst = max(finite, key=lambda e: e["final_val"]["mean"])
            print(
                f"{name}: best val {plus_minus(best['final_val'])} at lr {best['lr']:.3g}, wd {best['weight_decay']:.3g}; "
                f"worst {plus_minus(worst['final_val'])}"
            )
    else:
        curves = batches_from(summary, centres)
        png = out / "sweep_batch.png"
        tuned = len(lr_mults) * len(wd_mults) > 1
        if budget == "steps":
            title = f"{source}: {settings.steps} steps per run"
        else:
            title = f"{source}: {settings.steps * settings.batch_size * settings.block_size:,} training tokens per run"
        if tuned:
            title += "\nbest of lr x " + ",".join(f"{m:g}" for m in lr_mults)
            title += ", wd x " + ",".join(f"{m:g}" for m in wd_mults) if len(wd_mults) > 1 else ""
        plot_batches(curves, title, png, len(seeds), budget, tuned)
        record.write(summary=summary, batch_sizes=curves, batch_budget=budget)
        for name in OPTIMIZERS:
            tuning = ", best lr {lr:.3g}, wd {weight_decay:.3g}" if tuned else ""
            points = [
                f"batch {e['batch_size']} ({e['steps']} steps" + tuning.format(**e) + f"): val {plus_minus(e['final_val'])}"
                for e in best_per_batch(summary, name)
            ]
            print(f"{name}: " + ", ".join(points))
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
        metavar="M1,M2,...",
        help=f"lr grid as multiples of each optimizer's centre lr: distinct positive numbers (default {LR_GRID}; with --batch-sizes 1)",
    )
    parser.add_argument(
        "--wd-multipliers",
        metavar="M1,M2,...",
        help=f"weight-decay grid as multiples of each optimizer's centre: distinct positive numbers (default {WD_GRID}; "
        "with --batch-sizes 1)",
    )
    parser.add_argument(
        "--batch-sizes",
        metavar="B1,B2,...",
        help="run the batch-size ablation instead of the grid: distinct positive integers",
    )
    parser.add_argument(
        "--batch-budget",
        choices=("tokens", "steps"),
        help="with --batch-sizes: every batch size trains on the tokens of --steps x --batch-size (tokens, the default) "
        "or for --steps steps (steps)",
    )
    parser.add_argument(
        "--lion-lr",
        type=float,
        metavar="X",
        help="Lion's centre lr, > 0 (default: --lr / --factor, from_adamw's): centre each grid on its own tuned point",
    )
    parser.add_argument(
        "--lion-weight-decay",
        type=float,
        metavar="X",
        help="Lion's centre weight decay, >= 0 (default: --weight-decay x --factor, from_adamw's)",
    )
    add_task_arguments(
        parser,
        steps=200,
        eval_interval=200,
        quick_help=QUICK_HELP,
        out_help="directory for sweep.png (or sweep_batch.png) and sweep.json, created if missing (default: the current directory)",
        json_name="sweep.json",
        jobs_default="one per CPU, at most one per run",
    )
    parser.set_defaults(func=run, parser_defaults={a.dest: a.default for a in parser._actions})
