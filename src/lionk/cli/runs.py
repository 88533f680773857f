"""The runs of compare and sweep, one per (setting, seed): trained here or in worker processes, recorded as they finish.

A :class:`Job` is one run: a contender (OptimSpec) on a task whose Settings carry the run's seed. :func:`run_jobs`
trains the jobs its :class:`Record` does not hold yet; the Record rewrites the command's JSON file after every
finished run, so an interrupted command loses only the runs in flight, and ``--resume`` (:func:`recorded_runs`)
starts from the runs the file holds.

With one process the runs train here, one after the other. With J > 1 they go to J worker processes started with
"spawn" (fresh interpreters: nothing of this process's state comes along), each with max(1, T // J) torch threads
(T: this process's, --threads). A run depends only on its job and on its thread count (which can change the order
of torch's sums), so it is bitwise the run that one process with that thread count would give.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from . import CLIError
from ._deps import require
from .data import Corpus
from .training import OptimSpec, RunResult, Settings, hyperparameters, initial_state, train

__all__ = ["Job", "Record", "recorded_runs", "run_jobs", "run_name", "seed_list", "worker_count", "threads_per_run"]


def seed_list(first: int, count: int) -> list[int]:
    """The seeds of --seed first --seeds count: first, first + 1, ..., first + count - 1."""
    return list(range(first, first + count))


def run_name(setting: str, seed: int, seeds: list[int]) -> str:
    """What progress lines call a run: its setting, and its seed when there are several seeds."""
    return setting if len(seeds) == 1 else f"{setting} (seed {seed})"


def worker_count(jobs: int | None, runs: int) -> int:
    """The processes for runs runs: --jobs (default: one per CPU), never more than the runs, at least 1."""
    wanted = (os.cpu_count() or 1) if jobs is None else jobs
    return max(1, min(wanted, runs))


def threads_per_run(workers: int) -> int:
    """Torch threads of a run: this process's when it trains alone, else its share max(1, threads // workers)."""
    return max(1, torch.get_num_threads() // workers)


def run_key(label: str, hp: dict[str, Any], settings: dict[str, Any]) -> str:
    """What identifies a run in a JSON file: its contender's label and resolved hyperparameters, and its task, seed included."""
    return json.dumps([label, hp, settings], sort_keys=True)


@dataclass(frozen=True)
class Job:
    """One run: spec on the task settings (settings.seed is the run's seed); name is what progress lines call it."""

    spec: OptimSpec
    settings: Settings
    name: str

    @cached_property
    def key(self) -> str:
        return run_key(self.spec.label, hyperparameters(self.spec, self.settings), self.settings.to_json())


def _entry_key(entry: dict[str, Any]) -> str:
    return run_key(entry["label"], entry["hyperparameters"], entry["settings"])


def _result_from_json(entry: dict[str, Any]) -> RunResult:
    return RunResult(**{f.name: entry[f.name] for f in fields(RunResult) if f.name in entry})


class Record:
    """A command's JSON file at path: head (command, corpus, settings, ...), then "runs": every run's RunResult JSON
    with its task settings, in the order of jobs, then the recorded runs that jobs do not include (kept as they
    were), then the sections given to :meth:`write` (the summaries). Written whole, by an atomic rename."""

    def __init__(self, path: Path, head: dict[str, Any], jobs: list[Job], recorded: list[dict[str, Any]]) -> None:
        self.path, self.head = path, head
        self._order = [job.key for job in jobs]
        self._entries = {_entry_key(entry): entry for entry in recorded}
        self._results = {key: _result_from_json(self._entries[key]) for key in self._order if key in self._entries}

    def missing(self, jobs: list[Job]) -> list[Job]:
        """The jobs whose runs are not recorded yet."""
        return [job for job in jobs if job.key not in self._results]

    def result(self, job: Job) -> RunResult:
        return self._results[job.key]

    def add(self, job: Job, result: RunResult) -> None:
        """Record a finished run and rewrite the file."""
        self._entries[job.key] = result.to_json() | {"settings": job.settings.to_json()}
        self._results[job.key] = result
        self.write()

    def write(self, **sections: Any) -> None:
        planned = set(self._order)
        runs = [self._entries[key] for key in self._order if key in self._entries]
        runs += [entry for key, entry in self._entries.items() if key not in planned]
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.head | {"runs": runs} | sections, indent=1))
        os.replace(partial, self.path)


def _setting_differs(path: Path, name: str, recorded: Any, wanted: Any) -> CLIError:
    return CLIError(
        f"--resume: {path} holds runs with {Settings.flag(name)} {recorded}, not {wanted}: give the same {Settings.flag(name)} "
        "or another --out"
    )


def recorded_runs(path: Path, head: dict[str, Any]) -> list[dict[str, Any]]:
    """--resume: the runs recorded in path (none when it does not exist), once it is known to come from the same command
    on the same task: the same corpus and the same settings but for the seed; else CLIError naming what differs."""
    if not path.exists():
        return []
    try:
        stored = json.loads(path.read_text())
        command, corpus, settings, runs = (stored[key] for key in ("command", "corpus", "settings", "runs"))
        runs = [{"settings": settings, "seed": settings["seed"]} | run for run in runs]  # a file from before seeds: one
        for run in runs:
            _entry_key(run)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CLIError(f"--resume: {path} is not a lionk {head['command']} JSON file ({type(err).__name__}: {err})") from None
    if command != head["command"]:
        raise CLIError(f"--resume: {path} was written by lionk {command}, not lionk {head['command']}")
    if corpus != head["corpus"]:
        raise _setting_differs(path, "data", json.dumps(corpus), json.dumps(head["corpus"]))
    for name, wanted in head["settings"].items():
        if name != "seed" and settings.get(name) != wanted:
            raise _setting_differs(path, name, settings.get(name), wanted)
    return runs


def train_job(job: Job, corpus: Corpus, **kwargs: Any) -> RunResult:
    """Train job's run from the initial weights of its seed (kwargs: train's progress and log)."""
    return train(job.spec, corpus, job.settings, initial_state(job.settings, corpus.vocab_size), **kwargs)


_worker_corpus: Corpus | None = None


def _packed(corpus: Corpus) -> bytes:
    """The corpus as torch.save bytes (pickling its tensors for another process would move them to shared memory)."""
    buffer = io.BytesIO()
    torch.save(vars(corpus), buffer)
    return buffer.getvalue()


def _start_worker(corpus: bytes, threads: int) -> None:
    global _worker_corpus
    _worker_corpus = Corpus(**torch.load(io.BytesIO(corpus), weights_only=True))
    torch.set_num_threads(threads)


def _train_in_worker(job: Job) -> RunResult:
    return train_job(job, _worker_corpus)


def _train_in_processes(jobs: list[Job], corpus: Corpus, workers: int, done: Callable[[Job, RunResult], None]) -> None:
    """Train jobs in workers spawned processes; done(job, result) here as each finishes. On an error or an interrupt the
    queued runs are cancelled, and the ones in flight (interrupted too by Ctrl-C) are waited for."""
    context = multiprocessing.get_context("spawn")
    initargs = (_packed(corpus), threads_per_run(workers))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=initargs) as pool:
        futures = {pool.submit(_train_in_worker, job): job for job in jobs}
        try:
            for future in as_completed(futures):
                done(futures[future], future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _train_with_bars(jobs: list[Job], corpus: Corpus, record: Record, tqdm: Any) -> None:
    """Train jobs here, one after the other, with a tqdm bar per run; evaluation lines go above the bars."""
    for job in jobs:
        with tqdm(total=job.settings.steps, desc=job.name, unit="step", leave=False, dynamic_ncols=True) as bar:

            def progress(step: int, loss: float, bar=bar) -> None:
                bar.update(1)
                if step % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")

            def log(line: str, bar=bar, job=job) -> None:
                bar.write(job.name + line.removeprefix(job.spec.label))  # "label: step ..." names the seed too

            result = train_job(job, corpus, progress=progress, log=log)
        record.add(job, result)


def run_jobs(
    jobs: list[Job], corpus: Corpus, record: Record, *, workers: int, command: str, desc: str, bar_per_run: bool
) -> list[RunResult]:
    """The results of jobs, in their order: the record's, and the others trained (in workers processes when workers > 1)
    and added to the record as each finishes.

    Progress: with one process, a tqdm bar per run and its evaluation lines (bar_per_run) or one bar over the runs
    (desc) with the last result; with several, one bar over the runs and a line on stderr as each run finishes.
    """
    tqdm = require("tqdm", command).tqdm
    todo = record.missing(jobs)
    if len(todo) < len(jobs):
        print(f"resume: {len(jobs) - len(todo)} of the {len(jobs)} runs are recorded in {record.path}; training the other {len(todo)}")
    if workers == 1 and bar_per_run:
        _train_with_bars(todo, corpus, record, tqdm)
    elif todo:
        with tqdm(total=len(todo), desc=desc, unit="run", dynamic_ncols=True) as bar:

            def done(job: Job, result: RunResult) -> None:
                record.add(job, result)
                bar.update(1)
                bar.set_postfix_str(f"{job.name}: val {result.final_val:.3f}")
                if workers > 1:
                    bar.write(
                        f"{job.name}: train {result.final_train:.4f}, val {result.final_val:.4f} ({result.wall_s:.1f} s)",
                        file=sys.stderr,
                    )

            if workers == 1:
                for job in todo:
                    done(job, train_job(job, corpus))
            else:
                _train_in_processes(todo, corpus, workers, done)
    return [record.result(job) for job in jobs]
