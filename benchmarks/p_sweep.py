"""The Lion-K paper's Lion-lp experiment, small: final validation loss against p, from ``lionk compare``'s JSON files.

Lion-lp takes K(x) = ||x||_p over each tensor, so its direction is grad K(c) = sign(c) |c|^(p-1) / ||c||_p^(p-1):
p = 1 is Lion's sign, p = 2 the normalised momentum. With ``match_sign_rms=True`` every direction is rescaled to
the root-mean-square of sign(c), so that one learning rate means a comparable step for every p; without it a
tensor of n entries of similar size gets a direction of about n^(1/p - 1) per entry, and each p needs its own lr.

The protocol: each p's lr grid (and weight decay) with the first seed, then more seeds at each p's best setting,
chosen by the first seed's loss. Train the contenders with ``lionk compare`` (``lion`` is p = 1), in one command or
several (runs with the same label and seed are counted once), then draw the losses::

    lionk compare --data tinyshakespeare.txt --steps 2000 --eval-interval 500 --jobs 2 --threads 1 --out results/p_sweep \\
        --optim "lion,lion:kernel=lp(p=1.25,match_sign_rms=True),lion:kernel=lp(p=1.5,match_sign_rms=True),..."
    python benchmarks/p_sweep.py results/p_sweep/compare.json [more compare.json ...]

It writes p_sweep.png beside the first JSON and prints the tables. Left: the first seed's final validation loss
against p at each setting of the grid, rescaled directions (match_sign_rms=True); middle: the same against lr for
each p, unscaled directions; right: each p at its best setting (tuned per p), mean ± one sample standard deviation
over its seeds, with and without the rescaling. The second table gives each p's paired difference to Lion's.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from lionk.cli._deps import pyplot

_LP = re.compile(r"kernel=lp\(p=([0-9.]+)(?:,\s*match_sign_rms=(True|False))?\)")


def p_of(label: str) -> tuple[float, bool] | None:
    """(p, match_sign_rms) of a compare label: plain ``lion`` (sign) is p = 1; None for anything that is not Lion-lp."""
    if not label.startswith("lion"):
        return None
    m = _LP.search(label)
    if m is None:
        return (1.0, True) if "kernel=" not in label else None
    return float(m.group(1)), m.group(2) == "True"


#: (p, match_sign_rms) -> (lr, weight decay) -> {seed: final validation loss}
Grid = dict[tuple[float, bool], dict[tuple[float, float], dict[int, float]]]


def collect(reports: list[dict]) -> Grid:
    """Every Lion-lp run of the reports, by (p, match_sign_rms) and (lr, weight decay); a (label, seed) met twice
    (the same run in two files) is counted once. p = 1 counts as rescaled: sign(c) is its own rescaling."""
    grid: Grid = {}
    for report in reports:
        for run in report["runs"]:
            point = p_of(run["label"])
            if point is None:
                continue
            hp = run["hyperparameters"]
            setting = (round(hp["lr"], 12), round(hp["weight_decay"], 12))
            grid.setdefault(point, {}).setdefault(setting, {})[run["seed"]] = run["val_loss"][-1][1]
    return grid


def tuned(by_setting: dict[tuple[float, float], dict[int, float]]) -> tuple[tuple[float, float], list[float]]:
    """The best setting, by the loss of the first seed (the seed every setting of the grid ran with), and its losses
    over all its seeds."""
    first = min(seed for losses in by_setting.values() for seed in losses)
    ran = {s: losses for s, losses in by_setting.items() if first in losses}
    best = min(ran, key=lambda s: ran[s][first])
    return best, [by_setting[best][seed] for seed in sorted(by_setting[best])]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _text(values: list[float]) -> str:
    mean, sd = _mean_sd(values)
    return f"{mean:.4f} ± {sd:.4f} ({len(values)} seeds)" if len(values) > 1 else f"{mean:.4f} (1 seed)"


def print_tuned(grid: Grid) -> None:
    """Each p at its best setting, and its paired difference to Lion's (p = 1) over the seeds both ran: mean ± its
    standard error."""
    if (1.0, True) not in grid:
        return
    lion = grid[(1.0, True)][tuned(grid[(1.0, True)])[0]]
    print("\neach p at its best setting (tuned per p), and minus Lion (p = 1) paired by seed (mean ± standard error):")
    for (p, matched), by_setting in sorted(grid.items(), key=lambda item: (not item[0][1], item[0][0])):
        (lr, wd), losses = tuned(by_setting)
        seeds = sorted(set(by_setting[(lr, wd)]) & set(lion))
        diffs = [by_setting[(lr, wd)][seed] - lion[seed] for seed in seeds]
        paired = (
            ""
            if p == 1.0
            else f"{statistics.fmean(diffs):+.4f}"
            + (f" ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.4f} ({len(diffs)} seeds)" if len(diffs) > 1 else " (1 seed)")
        )
        print(f"{matched!s:>14} {p:>5.2f} {lr:>9.3g} {wd:>9.3g} {_text(losses):>34} {paired}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, nargs="+", help="compare.json files of the Lion-lp runs")
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.json]
    grid = collect(reports)
    print(f"{'match_sign_rms':>14} {'p':>5} {'lr':>9} {'wd':>9} {'final val (mean ± sd over seeds)':>34}")
    for (p, matched), by_setting in sorted(grid.items(), key=lambda item: (not item[0][1], item[0][0])):
        best, _ = tuned(by_setting)
        for (lr, wd), losses in sorted(by_setting.items()):
            mark = "  <- best" if (lr, wd) == best else ""
            print(f"{matched!s:>14} {p:>5.2f} {lr:>9.3g} {wd:>9.3g} {_text([losses[s] for s in sorted(losses)]):>34}{mark}")
    print_tuned(grid)

    plt = pyplot("p_sweep")
    fig, (ax_grid, ax_lr, ax_best) = plt.subplots(1, 3, figsize=(18, 4.8), layout="constrained")
    settings = reports[0]["settings"]
    task = f"{Path(reports[0]['corpus']['source']).name}: {settings['steps']} steps at batch {settings['batch_size']}"
    first = min(seed for by_setting in grid.values() for losses in by_setting.values() for seed in losses)
    by_lr: dict[tuple[float, float], dict[float, float]] = {}
    for (p, matched), by_setting in grid.items():
        for setting, losses in by_setting.items():
            if matched and first in losses:
                by_lr.setdefault(setting, {})[p] = losses[first]
    for (lr, wd), by_p in sorted(by_lr.items()):
        ax_grid.plot(sorted(by_p), [by_p[p] for p in sorted(by_p)], "o-", label=f"lr {lr:.3g}, wd {wd:.3g}")
    ax_grid.set(xlabel="p (Lion-lp: K(x) = ||x||_p; p = 1 is Lion)", ylabel=f"final validation loss (seed {first})")
    ax_grid.set_title(f"{task}\nthe lr grid, rescaled directions (match_sign_rms=True)")
    unscaled = sorted(p for p, matched in grid if not matched and p != 1.0)
    for colour, p in enumerate(unscaled):  # one colour per p, one marker per weight decay
        by_setting = grid[(p, False)]
        for marker, wd in zip("os^D", sorted({wd for _, wd in by_setting})):
            points = sorted((lr, losses[first]) for (lr, w), losses in by_setting.items() if w == wd and first in losses)
            style = dict(color=f"C{colour}", marker=marker, label=f"p = {p:g}, wd {wd:.3g}")
            ax_lr.plot([lr for lr, _ in points], [v for _, v in points], "-", **style)
    ax_lr.set(xscale="log", xlabel="peak lr", ylabel=f"final validation loss (seed {first})")
    ax_lr.set_title("the lr grid, unscaled directions (match_sign_rms=False)")
    for matched in (True, False):
        curve = sorted((p, tuned(by_setting)) for (p, m), by_setting in grid.items() if m == matched or p == 1.0)
        if matched is False and all(p == 1.0 for p, _ in curve):
            continue
        stats = [_mean_sd(losses) for _, (_, losses) in curve]
        label = "rescaled (match_sign_rms=True)" if matched else "unscaled (match_sign_rms=False)"
        ax_best.errorbar([p for p, _ in curve], [m for m, _ in stats], yerr=[sd for _, sd in stats], fmt="o-", capsize=4, label=label)
    ax_best.set(xlabel="p", ylabel="final validation loss (mean ± 1 sd over seeds)", title="each p at its best lr (tuned per p)")
    for ax in (ax_grid, ax_lr, ax_best):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    out = args.json[0].with_name("p_sweep.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
