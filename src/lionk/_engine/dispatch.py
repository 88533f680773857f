"""The one place that decides which path steps each tensor, and why not a faster one.

Paths, fastest first: ``fused`` (the native library on CPU, :mod:`lionk._engine.native`; the Triton kernel on
CUDA, :mod:`lionk._engine.triton`), ``foreach`` (``torch._foreach_*`` on lists), ``reference`` (one tensor at a
time). Per tensor, with the group's ``fused`` and ``foreach`` flags:

* ``fused=None`` (default): the fused path wherever it can run (on CUDA once :data:`TRITON_BY_DEFAULT` is set,
  after validation on a GPU), except while ``torch.compile`` traces the step (inductor fuses the reference
  operations itself); then foreach where ``foreach`` is True, or None on CUDA; else the reference loop.
* ``fused=True``: the fused path; any tensor that cannot take it raises RuntimeError naming it and the reason,
  before anything is written. ``fused=False``: never the fused path.
* ``foreach=True`` / ``False``: use / do not use foreach for what does not run fused.

:func:`choose` gives the path and the reason for every tensor; :meth:`lionk.Lion.paths` prints them as a table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..kernels import Kernel, get_kernel
from ..precision import FloatStorage
from . import native, triton
from .torch_paths import run_foreach, run_reference
from .work import Hyper, Slot

#: fused=None on CUDA picks the Triton path only when this is True. It stays False until the kernel has been validated
#: and timed on a GPU (it is tested under Triton's CPU interpreter); until then it runs with fused=True.
TRITON_BY_DEFAULT = False

FUSED, FOREACH, REFERENCE = "fused", "foreach", "reference"


@dataclass(frozen=True)
class Choice:
    """The path a tensor takes (``path``: "fused", "foreach" or "reference"; ``detail``: which fused path) and why
    not a faster one (``why``; empty when it takes the fastest path lionk has for it)."""

    path: str
    detail: str
    why: str


def _foreach_type(t: Tensor) -> bool:
    """torch.optim's rule for defaulting to foreach: a CUDA tensor of a type its foreach kernels take."""
    if not t.is_cuda:
        return False
    if type(t) in (torch.Tensor, torch.nn.Parameter):
        return True
    from .._tensor import is_dtensor

    return is_dtensor(t)


def fused_problem(slot: Slot, hyper: Hyper) -> tuple[str, str | None]:
    """(which fused path, why it cannot run this tensor or None)."""
    device = slot.weight.device.type
    if device == "cuda" or (device == "cpu" and triton.interpreter_requested()):
        return "triton", triton.problem(slot, hyper)
    if device == "cpu":
        return f"native {native.library().isa if native.library() else ''}".strip(), native.problem(slot, hyper)
    return "", f"no fused path for {device} tensors"


def choose(slot: Slot, hyper: Hyper) -> Choice:
    """The path of one tensor and why not a faster one (module docstring)."""
    if hyper.fused is False:
        why = "not fused: fused=False"
    elif hyper.fused is None and torch.compiler.is_compiling():
        why = "not fused: torch.compile is tracing the step (inductor fuses the reference operations itself)"
    else:
        detail, problem = fused_problem(slot, hyper)
        if problem is None and detail == "triton" and hyper.fused is None and not TRITON_BY_DEFAULT:
            problem = "the Triton path runs with fused=True until it has been validated on a GPU (lionk._engine.dispatch.TRITON_BY_DEFAULT)"
        if problem is None:
            return Choice(FUSED, detail, "")
        why = f"not fused: {problem}"
    if hyper.foreach or (hyper.foreach is None and _foreach_type(slot.weight)):
        return Choice(FOREACH, "", why)
    if hyper.foreach is False:
        return Choice(REFERENCE, "", f"{why}; not foreach: foreach=False")
    return Choice(REFERENCE, "", f"{why}; not foreach: on {slot.weight.device.type} torch's foreach operations are no faster than a loop")


def fused_unavailable_reason(kernel: str | Kernel = "sign", device: str | torch.device = "cpu") -> str | None:
    """None when the fused path can run ``kernel`` on ``device`` (for float32 tensors), else a one-line reason why
    not. Per tensor, :meth:`lionk.Lion.paths` tells."""
    k, device = get_kernel(kernel), torch.device(device)
    if device.type == "cuda":
        reason = triton.unavailable_reason(device)
        if reason is not None:
            return reason
    elif device.type != "cpu":
        return f"no fused path for {device.type} tensors"
    probe = torch.zeros(1, device=device)
    slot = Slot(probe, probe, probe, {"exp_avg": probe}, FloatStorage(torch.float32), "a float32 tensor")
    return fused_problem(slot, Hyper(0.0, 0.9, 0.99, 0.0, k, False, False, False, None, True))[1]


class Plan:
    """One group's step, prepared: each path with the tensors it takes (:func:`plan`). ``run(hyper)`` steps them all;
    a plan is kept and run again while the group's tensors and settings stay as they were (the learning rate may
    change: it is read at every run)."""

    def __init__(self, runs: list[Callable[[Hyper], None]], paths: list[str]):
        self.runs, self.paths = runs, paths

    def run(self, hyper: Hyper) -> None:
        for run_path in self.runs:
            run_path(hyper)


def plan(slots: list[Slot], hyper: Hyper) -> Plan:
    """Choose every tensor's path and prepare each path for its tensors; RuntimeError, before anything is written,
    when ``fused=True`` and a tensor cannot take the fused path."""
    buckets: dict[str, list[Slot]] = {}
    for s in slots:
        choice = choose(s, hyper)
        if hyper.fused and choice.path != FUSED:
            raise RuntimeError(f"fused=True cannot run {s.label}: {choice.why.removeprefix('not fused: ').split('; not foreach')[0]}")
        key = choice.detail.split()[0] if choice.path == FUSED else choice.path
        buckets.setdefault(key, []).append(s)
    runs = [native.Job(chosen).run if key == "native" else _bind(_RUNNERS[key], chosen) for key, chosen in buckets.items()]
    return Plan(runs, list(buckets))


_RUNNERS = {"triton": triton.run, FOREACH: run_foreach, REFERENCE: run_reference}


def _bind(path: Callable[[list[Slot], Hyper], None], slots: list[Slot]) -> Callable[[Hyper], None]:
    return lambda hyper: path(slots, hyper)


def plan_context() -> tuple:
    """What, besides a group's tensors and settings, decides its plan: a plan made under another context is remade."""
    return (triton.interpreter_requested(), TRITON_BY_DEFAULT, torch.compiler.is_compiling())


def run(slots: list[Slot], hyper: Hyper) -> None:
    """Step ``slots`` (checked by :func:`lionk._engine.work.check_slot`) with the group's ``hyper``, each on its path."""
    plan(slots, hyper).run(hyper)
