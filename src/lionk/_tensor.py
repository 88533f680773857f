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


def layout_problem(t: Tensor, like: Tensor, what: str, *, overlap_allowed: bool = False) -> str | None:
    """What keeps ``t`` (named ``what`` in the message) from matching ``like`` element for element: a layout other than
    strided, another shape or device, or (unless allowed) memory in which one entry would hold several; None if
    nothing does."""
    if t.layout != torch.strided:
        return f"{what} has layout {t.layout} (must be strided)"
    if tuple(t.shape) != tuple(like.shape):
        return f"{what} has shape {tuple(t.shape)}, the parameter has {tuple(like.shape)}"
    if t.device != like.device:
        return f"{what} is on {t.device}, the parameter on {like.device}"
    if not overlap_allowed and t.numel() > 1 and torch._debug_has_internal_overlap(t) == 1:
        return f"{what} has overlapping memory (strides {t.stride()}: expanded or broadcast), so one entry would hold several"
    return None
