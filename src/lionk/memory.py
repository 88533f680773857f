"""Training memory, measured: bytes held by an optimizer's state, by a model's weights and gradients, and by the
temporaries of a step.

``state_bytes(opt) = sum over every tensor t reachable in opt.state of t.numel() * t.element_size()``,
counting a tensor shared between entries once, tensors kept inside other objects included. For Lion that is one
momentum per parameter (4 B per fp32 parameter) plus a 4-byte step counter per tensor; for AdamW two moments (8 B)
plus the same counter.

:class:`MemoryTracker` measures the peak of weights + gradients + state held at one moment of training, on the
live tensors; :func:`step_temporaries` measures what a step allocates beyond them, from the allocator's events.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

__all__ = ["MemoryTracker", "state_bytes", "step_temporaries", "tensors_in"]


def tensors_in(value: Any, seen: set[int] | None = None) -> Iterable[torch.Tensor]:
    """Every tensor holding memory reachable from ``value``: in mappings, sequences and the attributes of other
    objects (some optimizers keep their state in wrapper objects, e.g. flashoptim's quantised tensors), and the inner
    tensors of a tensor subclass that wraps others (``__tensor_flatten__``, e.g. torchao's 8-bit states)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor) and hasattr(value, "__tensor_flatten__"):
        for name in value.__tensor_flatten__()[0]:
            yield from tensors_in(getattr(value, name), seen)
    elif isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from tensors_in(v, seen)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from tensors_in(v, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        for v in vars(value).values():
            yield from tensors_in(v, seen)


def _distinct_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the tensors, each distinct memory range counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        key = (t.data_ptr(), nbytes)
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of all tensors in ``optimizer.state`` (each distinct storage range counted once), the parameters
    themselves excepted (some optimizers keep a reference to a param group, with its parameters, in the state)."""
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return _distinct_bytes(t for t in tensors_in(dict(optimizer.state)) if id(t) not in params)


class MemoryTracker:
    """The peak bytes that a model's parameters, their gradients and an optimizer's state hold at one moment.

    Gradient memory grows only when a gradient is accumulated, and state memory only inside a step, so
    ``weights + gradients + state`` is measured on the live tensors at each of those moments: in a
    post-accumulate-grad hook on every parameter (registered before the optimizer's own when the tracker is made
    first, so a gradient that gradient release frees at once is seen while it exists) and after each
    ``optimizer.step()``. ``weights``, ``gradients`` and ``state`` are each one's peak; ``together`` is the largest
    sum seen at one moment. Activations and a step's temporaries are not counted (see :func:`step_temporaries`).

        tracker = MemoryTracker(model.parameters())     # before the optimizer, for gradient release
        opt = lionk.Lion(model.parameters(), gradient_release=True)
        tracker.watch(opt)
        ... a few training steps ...
        tracker.close(); tracker.together / tracker.numel   # bytes per parameter
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self.params = [p for p in params]
        self.numel = sum(p.numel() for p in self.params)
        self.optimizer: torch.optim.Optimizer | None = None
        self.weights = self.gradients = self.state = self.together = 0
        self._handles = [p.register_post_accumulate_grad_hook(self._on_gradient) for p in self.params if p.requires_grad]

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Count ``optimizer``'s state too, and measure after each of its steps."""
        self.optimizer = optimizer
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.sample()))

    def _on_gradient(self, _param: torch.Tensor) -> None:
        self.sample()

    def sample(self) -> None:
        """Measure the live weights, gradients and state now and keep the peaks."""
        weights = _distinct_bytes(self.params)
        gradients = _distinct_bytes(p.grad for p in self.params if p.grad is not None)
        state = state_bytes(self.optimizer) if self.optimizer is not None else 0
        self.weights = max(self.weights, weights)
        self.gradients = max(self.gradients, gradients)
        self.state = max(self.state, state)
        self.together = max(self.together, weights + gradients + state)

    def close(self) -> None:
        """Remove the hooks (the figures stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def per_param(self) -> dict[str, float]:
        """The peaks in bytes per parameter."""
        n = max(self.numel, 1)
        return {k: getattr(self, k) / n for k in ("weights", "gradients", "state", "together")}


@contextlib.contextmanager
def _profiler_quiet() -> Iterator[None]:
    """Keep the profiler's own start/stop lines (written by its C++ library to file descriptor 2) off stderr; any
    other line written meanwhile is passed on."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith("USDT:"):
                    os.write(2, line.encode())


def step_temporaries(step: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes that ``step()`` allocates beyond what was live when it began (its temporaries plus anything it
    keeps, e.g. state made at a first step).

    On CUDA from the caching allocator's peak statistic; elsewhere from the CPU allocator's events recorded by
    ``torch.profiler`` (``profile_memory=True``): the largest running sum of allocations minus frees.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return max(torch.cuda.max_memory_allocated(device) - before, 0)
    from torch.profiler import ProfilerActivity, profile

    with _profiler_quiet(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    running = peak = 0
    cpu = torch._C._autograd.DeviceType.CPU
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == cpu]
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak
