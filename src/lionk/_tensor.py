"""Facts about a tensor that every part of lionk asks: its real view, the precision its arithmetic runs in, and
whether it is a sharded DTensor."""

from __future__ import annotations

import torch
from torch import Tensor


def as_real(t: Tensor) -> Tensor:
    """A complex tensor as pairs of reals (``torch.view_as_real``); a real tensor as it is."""
    return torch.view_as_real(t) if t.is_complex() else t


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision a step's arithmetic runs in: float64 for float64 (and complex128) storage, float32 for every
    other floating type."""
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (a sharded or replicated parameter)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def share_dense_layout(*tensors: Tensor) -> bool:
    """True when the tensors have one shape and one dense, non-overlapping layout (contiguous, channels_last, or any
    permutation of a contiguous tensor), so that element i of each is at the same memory offset."""
    first = tensors[0]
    if any(t.stride() != first.stride() or t.shape != first.shape for t in tensors[1:]):
        return False
    if first.is_contiguous() or first.dim() == 0:
        return True
    expected = 1
    for d in sorted(range(first.dim()), key=first.stride):
        if first.shape[d] != 1 and first.stride(d) != expected:
            return False
        expected *= first.shape[d]
    return True
