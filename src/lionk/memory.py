"""Optimizer memory: bytes held in an optimizer's state.

``state_bytes(opt) = sum over every tensor t reachable in opt.state of t.numel() * t.element_size()``,
counting a tensor shared between entries once. For Lion that is one momentum per parameter (4 B per fp32
parameter); for AdamW two moments (8 B) plus a step counter per parameter.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["state_bytes"]


def _tensors(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Total bytes of all tensors in ``optimizer.state`` (each distinct storage range counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in _tensors(dict(optimizer.state)):
        nbytes = t.numel() * t.element_size()
        key = (t.data_ptr(), nbytes)
        if key not in seen:
            seen.add(key)
            total += nbytes
    return total
