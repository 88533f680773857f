"""Optimizer memory: bytes held in an optimizer's state.

``state_bytes(opt) = sum over every tensor t reachable in opt.state of t.numel() * t.element_size()``,
counting a tensor shared between entries once, tensors kept inside other objects included. For Lion that is one
momentum per parameter (4 B per fp32 parameter) plus a 4-byte step counter per tensor; for AdamW two moments (8 B)
plus the same counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["state_bytes", "tensors_in"]


def tensors_in(value: Any, seen: set[int] | None = None) -> Iterable[torch.Tensor]:
    """Every tensor reachable from ``value``: in mappings, sequences and the attributes of other objects (some
    optimizers keep their state in wrapper objects, e.g. flashoptim's quantised tensors)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
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


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of all tensors in ``optimizer.state`` (each distinct storage range counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in tensors_in(dict(optimizer.state)):
        nbytes = t.numel() * t.element_size()
        key = (t.data_ptr(), nbytes)
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total
