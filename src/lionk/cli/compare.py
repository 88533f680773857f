"""lionk compare: train a small character-level GPT with several optimizers, from the same start on the same batches.

Prints a table (final train and validation loss, training tokens/s, median optimizer-step time, optimizer
state bytes, process peak RSS, and the share of the machine's CPU time that other work took meanwhile),
then the constraint diagnostics of each Lion run, and writes compare.png (loss curves) and compare.json
(settings, machine, every curve) into --out (default: the current directory).

--seeds N trains every contender with the seeds --seed, ..., --seed + N - 1 (each seed: its own initial weights,
training batches and evaluation batches, shared by the contenders). The table then gives the mean and sample
standard deviation of the final losses over the seeds and, with an adamw contender, every other contender's
paired difference to it (same seed) with its standard error; compare.png draws the mean curves with a band of
one standard deviation. --jobs J trains J runs at a time in separate processes; --resume skips the runs that
compare.json in --out already holds.

AdamW's settings default to nanoGPT's for its CPU "baby" model (lr 1e-3, weight decay 0.1 on the 2-D
weights, betas (0.9, 0.99), 100 warm-up steps, cosine to lr/10, gradient clip 1.0); Lion's come from
lionk.from_adamw (lr / factor, weight decay * factor) with the same schedule shape.

Speed figures are wall-clock: when other work shares the machine they slow down and are not comparable
between runs. The "other load" column says how much of the machine that work took during each run.
"""

from __future__ import annotations

import argparse
import statistics
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ._deps import pyplot, require
from .checks import integer, output_dir
from .data import load_corpus
from .machine import contended, machine
from .runs import Job, Record, recorded_runs, run_jobs, run_name, seed_list, threads_per_run, worker_count
from .stats import paired_difference, plus_minus, spread
from .training import MEMORY_STEPS, OPTION_HELP, RunResult, Settings, hyperparameters, parse_optims

#: The final losses a summary gives, as RunResult properties.
FINAL_LOSSES = ("final_train", "final_val")

#: --quick's task: a tiny model and short runs (explicit flags still win).
QUICK = dict(steps=150, batch_size=8, block_size=32, n_layer=2, n_head=2, n_embd=64, warmup=15, eval_interval=50, eval_iters=5)


def add_task_arguments(
    parser: argparse.ArgumentParser,
    *,
    steps: int,
    eval_interval: int,
    quick_help: str,
    out_help: str,
    json_name: str,
    jobs_default: str,
) -> None:
    """Arguments shared by compare and sweep: the data, the model, the AdamW baseline and its schedule; the seeds,
    the processes and --resume (json_name: the command's JSON file; jobs_default: what --jobs defaults to, in words)."""
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
        "--seed",
        type=int,
        metavar="N",
        default=d.seed,
        help=f"seed of the initial weights and of the batches; with --seeds, the first seed (default {d.seed})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        default=1,
        help="run every setting with the N seeds --seed, --seed+1, ..., --seed+N-1 and report the mean ± sample standard "
        "deviation over them (default 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: torch's choice, one per CPU), shared by the --jobs processes (each has "
        "max(1, N // jobs)); on a machine shared with other work, fewer threads than the free CPUs keep the speed "
        "figures meaningful",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        metavar="J",
        help=f"train up to J runs at a time, each in its own process (default: {jobs_default}; 1: every "
        "run in this process, one after the other); a run's "
        "losses are bitwise those of a run alone with the same threads, but runs at a time share the machine, which "
        "slows their tokens/s and step times: use --jobs 1 for speed figures",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"skip the (setting, seed) runs already recorded in --out's {json_name} (it is rewritten after every finished "
        "run, so an interrupted command loses only the runs in flight); it must hold runs of the same task "
        "(same --data and settings but --seed)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a tiny model ({q['n_layer']} layers, width {q['n_embd']}, context {q['block_size']}, batch {q['batch_size']}) "
        f"and {q['steps']} steps per run: {quick_help}",
    )
    parser.add_argument("--out", default=".", metavar="DIR", help=out_help)


def settings_from(args: argparse.Namespace) -> Settings:
    """The Settings the arguments ask for; --quick replaces the task shape with QUICK (explicit flags still win).
    Checks every task flag, --seeds and --jobs among them, and sets --threads."""
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
    integer("--seeds", args.seeds, 1)
    if args.jobs is not None:
        integer("--jobs", args.jobs, 1)
    if args.threads is not None:
        torch.set_num_threads(integer("--threads", args.threads, 1))
    return settings


def by_label(results: list[RunResult]) -> dict[str, list[RunResult]]:
    """The runs of each contender (one per seed), in the order of results."""
    groups: dict[str, list[RunResult]] = {}
    for r in results:
        groups.setdefault(r.label, []).append(r)
    return groups


def summarize(groups: dict[str, list[RunResult]], baseline: str | None) -> dict[str, dict]:
    """Per contender: its seeds and the mean and sample standard deviation of its final train and val loss over them;
    with a baseline (the first adamw contender), every other contender's mean paired difference to it (contender minus
    baseline, same seed) with its standard error, under "minus_adamw"."""
    base = {r.seed: r for r in groups[baseline]} if baseline is not None else {}
    summary = {}
    for label, runs in groups.items():
        entry: dict = {"seeds": [r.seed for r in runs]}
        entry |= {loss: spread([getattr(r, loss) for r in runs]) for loss in FINAL_LOSSES}
        if baseline is not None and label != baseline:
            entry["minus_adamw"] = {"baseline": baseline} | {
                loss: paired_difference([getattr(r, loss) for r in runs], [getattr(base[r.seed], loss) for r in runs])
                for loss in FINAL_LOSSES
            }
        summary[label] = entry
    return summary


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_table(results: list[RunResult], baseline: str | None = None) -> str:
    """The results table, a row per contender, with a note under it when other work competed for the CPUs of a run.

    With several seeds a row gives the mean ± sample standard deviation of the final losses over them, the paired
    difference of the final val loss to the baseline (an adamw contender's label) ± its standard error, the mean
    tokens/s and step time, and the largest other load."""
    groups = by_label(results)
    summary = summarize(groups, baseline)
    seeds = summary[results[0].label]["seeds"]
    several = len(seeds) > 1
    loss_width, width = (15 if several else 7), max(28, *(len(label) for label in groups))
    difference = f"val - {baseline}" if several and baseline is not None else None
    difference_width = max(16, len(difference or ""))
    header = f"{'optimizer':<{width}} {'train':>{loss_width}} {'val':>{loss_width}}"
    header += f" {difference:>{difference_width}}" if difference else ""
    header += f" {'tokens/s':>9} {'opt step ms':>11} {'state bytes':>11} {'other load':>10}"
    lines = [header, "-" * len(header)]
    for label, runs in groups.items():
        s = summary[label]
        row = f"{label:<{width}} {plus_minus(s['final_train']):>{loss_width}} {plus_minus(s['final_val']):>{loss_width}}"
        if difference:
            row += f" {plus_minus(s['minus_adamw']['final_val'], 'se') if 'minus_adamw' in s else '-':>{difference_width}}"
        loads = [r.other_load for r in runs if r.other_load is not None]
        row += (
            f" {statistics.fmean(r.tokens_per_s for r in runs):>9.0f} {statistics.fmean(r.optimizer_step_ms for r in runs):>11.3f} "
            f"{runs[0].state_bytes:>11,d} {_share(max(loads) if loads else None):>10}"
        )
        lines.append(row)
    if several:
        lines.append(
            f"mean ± sample standard deviation over {len(seeds)} seeds ({seeds[0]}..{seeds[-1]})"
            + (f"; '{difference}': the mean paired difference (same seed) ± its standard error" if difference else "")
            + "; tokens/s and step times: means over the seeds; other load: the largest"
        )
    busy: dict[str, float] = {}  # per contender, its most contended run
    for r in results:
        if contended(r.other_load, r.threads or torch.get_num_threads()) and r.other_load > busy.get(r.label, -1.0):
            busy[r.label] = r.other_load
    if busy:
        shares = ", ".join(f"{'up to ' if several else ''}{_share(load)} ({label})" for label, load in busy.items())
        lines.append(
            f"note: other work took {shares} of this machine's CPU time "
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
    elif len(results) > 1:
        lines.append(
            "note: runs that follow others in one process reuse memory the allocator kept from them, so their peak RSS can be\n"
            "tens of MB off their own; for a clean figure train each contender in a command of its own"
        )
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


def _smoothed(step_loss: list[float]) -> list[float]:
    """The moving average 0.95 * previous + 0.05 * loss of the batch losses."""
    ema, smooth = None, []
    for loss in step_loss:
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        smooth.append(ema)
    return smooth


def _mean_and_sd(curves: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The mean of curves (one per seed, cut to the shortest) at each point, and their sample standard deviation
    (None for one curve)."""
    n = min(len(c) for c in curves)
    values = torch.tensor([c[:n] for c in curves], dtype=torch.float64).reshape(len(curves), n)
    return values.mean(0), (values.std(0) if len(curves) > 1 else None)


def plot_curves(results: list[RunResult], title: str, path: Path, command: str) -> None:
    """Training loss (smoothed batch loss) and validation loss against step, one line per contender; with several seeds
    the line is the mean over them and a band spans ± one sample standard deviation. One legend below both panels
    names each contender with its final validation loss (mean ± sd over the seeds), so labels of any length fit."""
    plt = pyplot(command)
    groups = by_label(results)
    seeds = [r.seed for r in next(iter(groups.values()))]
    legend_cols = 2 if len(groups) > 1 and max(map(len, groups)) <= 40 else 1  # long labels take the full width
    legend_rows = -(-len(groups) // legend_cols)
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4.6 + 0.25 * legend_rows), sharey=True, layout="constrained")
    for label, runs in groups.items():
        train, train_sd = _mean_and_sd([_smoothed(r.step_loss) for r in runs])
        steps = torch.arange(1, len(train) + 1)
        val, val_sd = _mean_and_sd([[v for _, v in r.val_loss] for r in runs])
        final = plus_minus(spread([r.final_val for r in runs]))  # as the table prints it
        (line,) = ax_train.plot(steps, train, lw=1.2, label=f"{label}: final val {final}")
        val_steps = [s for s, _ in runs[0].val_loss][: len(val)]
        ax_val.plot(val_steps, val, "o-", ms=4, color=line.get_color())
        for ax, x, mean, sd in ((ax_train, steps, train, train_sd), (ax_val, val_steps, val, val_sd)):
            if sd is not None:
                ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.2, lw=0)
    ax_train.set(title="training loss (moving average of the batch loss)", xlabel="step", ylabel="cross-entropy (nats per character)")
    ax_val.set(title="validation loss (same batches at every estimate)", xlabel="step")
    several = len(seeds) > 1
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
    legend_title = f"optimizer: mean of {len(seeds)} seeds, band ± 1 sd" if several else "optimizer"
    fig.legend(loc="outside lower center", ncols=legend_cols, title=legend_title, fontsize=9)
    if several:
        title += f"\nlines: mean over seeds {seeds[0]}..{seeds[-1]}; bands: ± one sample standard deviation across the seeds"
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    specs = parse_optims(args.optim)
    settings = settings_from(args)
    seeds = seed_list(settings.seed, args.seeds)
    corpus = load_corpus(args.data)
    corpus.check_context(settings.block_size)
    out = output_dir(args.out, ("compare.png", "compare.json"))
    pyplot("compare")  # fail before training when matplotlib is missing
    require("tqdm", "compare")
    png, js = out / "compare.png", out / "compare.json"
    head = {
        "command": "compare",
        "corpus": {
            "source": corpus.source,
            "vocab_size": corpus.vocab_size,
            "train_chars": len(corpus.train),
            "val_chars": len(corpus.val),
        },
        "settings": settings.to_json(),
        "seeds": seeds,
        "machine": machine(),
    }
    jobs = [Job(spec, replace(settings, seed=seed), run_name(spec.label, seed, seeds)) for spec in specs for seed in seeds]
    record = Record(js, head, jobs, recorded_runs(js, head) if args.resume else [])
    workers = worker_count(1 if args.jobs is None else args.jobs, len(record.missing(jobs)))
    processes = f"{threads_per_run(workers)} threads" + (f" in each of {workers} processes" if workers > 1 else "")
    print(
        f"corpus: {corpus.source}: vocab {corpus.vocab_size}, {len(corpus.train):,} train / {len(corpus.val):,} val chars; "
        f"model {settings.n_layer}x{settings.n_embd} (heads {settings.n_head}, context {settings.block_size}); "
        f"{settings.steps} steps at batch {settings.batch_size}; {processes}"
        + (f"; seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else "")
    )
    for spec in specs:
        if "vector_kernel" in (hp := hyperparameters(spec, settings)):
            print(f"{spec.label}: kernel {hp['kernel']} takes matrices only; the 1-D weights (norm gains) use {hp['vector_kernel']}")
    results = run_jobs(jobs, corpus, record, workers=workers, command="compare", desc="compare", bar_per_run=True)
    baseline = next((spec.label for spec in specs if spec.name == "adamw"), None)
    print(format_table(results, baseline))
    if workers > 1:
        print(
            f"note: {workers} runs trained at a time, in separate processes: they shared the machine, so tokens/s and step "
            "times are below what a run alone gets (the losses are not affected); --jobs 1 for speed figures"
        )
    first = [r for r in results if r.seed == seeds[0]]
    if len(seeds) > 1:
        print(f"\nmemory and diagnostics: the seed {seeds[0]} runs (the memory figures but peak RSS do not depend on the seed)")
    print("\n" + format_memory(first))
    if any(r.diagnostics for r in first):
        print("\n" + format_diagnostics(first))
    source = Path(corpus.source).name if args.data else "python-stdlib"
    title = f"{source}: model {settings.n_layer}x{settings.n_embd}, {settings.steps} steps at batch {settings.batch_size}"
    plot_curves(results, title, png, "compare")
    record.write(summary=summarize(by_label(results), baseline))
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
        json_name="compare.json",
        jobs_default="1, so that the speed columns are measured alone",
    )
    parser.set_defaults(func=run, parser_defaults={a.dest: a.default for a in parser._actions})
