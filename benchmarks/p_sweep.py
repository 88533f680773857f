"""The Lion-K paper's Lion-lp experiment, small: final validation loss against p, from ``lionk compare``'s JSON.

Lion-lp takes K(x) = ||x||_p over each tensor, so its direction is grad K(c) = sign(c) |c|^(p-1) / ||c||_p^(p-1):
p = 1 is Lion's sign, p = 2 the normalised momentum. With ``match_sign_rms=True`` every direction is rescaled to
the root-mean-square of sign(c), so that one learning rate means a comparable step for every p. Train the
contenders with ``lionk compare`` (``lion`` is p = 1), then draw the losses::

    lionk compare --data tinyshakespeare.txt --steps 2000 --eval-interval 500 --jobs 2 --threads 1 --out results/p_sweep \\
        --optim "lion,lion:kernel=lp(p=1.25,match_sign_rms=True),lion:kernel=lp(p=1.5,match_sign_rms=True),..."
    python benchmarks/p_sweep.py results/p_sweep/compare.json

It writes p_sweep.png beside the JSON: the final validation loss of every run against p (one line per lr; runs
without match_sign_rms in a panel of their own, their losses are on another scale; with several seeds the mean
and ± one sample standard deviation), and prints the table.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="compare.json of the Lion-lp runs")
    args = parser.parse_args()
    report = json.loads(args.json.read_text())
    lines: dict[tuple[str, bool], dict[float, list[float]]] = {}
    for run in report["runs"]:
        point = p_of(run["label"])
        if point is None:
            continue
        p, matched = point
        lr = run["hyperparameters"]["lr"]
        losses = lines.setdefault((f"{lr:.3g}", matched), {})
        losses.setdefault(p, []).append(run["val_loss"][-1][1])
    plt = pyplot("p_sweep")
    panels = [True] + ([False] if any(not matched for _, matched in lines) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.4), layout="constrained", squeeze=False)
    print(f"{'lr':>8} {'match_sign_rms':>14} {'p':>5} {'val (mean ± sd over seeds)':>28}")
    for (lr, matched), by_p in sorted(lines.items()):
        ps = sorted(by_p)
        means = [statistics.fmean(by_p[p]) for p in ps]
        sds = [statistics.stdev(by_p[p]) if len(by_p[p]) > 1 else 0.0 for p in ps]
        for p, mean, sd in zip(ps, means, sds):
            spread = f" ± {sd:.4f} ({len(by_p[p])} seeds)" if len(by_p[p]) > 1 else " (1 seed)"
            print(f"{lr:>8} {matched!s:>14} {p:>5.2f} {mean:>12.4f}{spread}")
        ax = axes[0][panels.index(matched)]
        ax.errorbar(ps, means, yerr=sds if any(sds) else None, fmt="o-", capsize=4, label=f"lr {lr}")
    settings = report["settings"]
    task = f"{Path(report['corpus']['source']).name}: {settings['steps']} steps at batch {settings['batch_size']}"
    for ax, matched in zip(axes[0], panels):
        ax.set(xlabel="p (Lion-lp: K(x) = ||x||_p; p = 1 is Lion)", ylabel="final validation loss")
        ax.set_title(task + ("" if matched else "\nunscaled directions (match_sign_rms=False)"))
        ax.grid(alpha=0.3)
        ax.legend(title="match_sign_rms=True" if matched else "match_sign_rms=False")
    out = args.json.with_name("p_sweep.png")
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
