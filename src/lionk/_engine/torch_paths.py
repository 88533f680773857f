"""The two paths made of torch operations: the reference loop (one tensor at a time, the ground truth every other
path is tested against) and foreach (the same formula on lists of tensors, one ``torch._foreach_*`` call per
operation: on CUDA one launch for many tensors). Both run :func:`lionk._engine.update.lion_k_update` in opmath
and store through the storage protocol (:mod:`lionk.precision`), so their results are bitwise identical.

Sharded parameters (DTensor, e.g. FSDP2's ``fully_shard``): elementwise kernels act on each rank's shard;
tensor-scope kernels see the whole tensor (:func:`tensor_direction`); the cautious count is over the whole
tensor (DTensor reduces ``count_nonzero`` over the shards); stochastic rounding draws the bits of each rank's own
shard positions.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import Tensor

from .._tensor import as_real, is_dtensor, opmath_dtype
from ..kernels import Kernel
from ..precision import FloatStorage, rounding_bits, store_weight
from .update import TensorList, foreach_direction, lion_k_update, lr_and_decay
from .work import Hyper, Slot


def tensor_direction(kernel: Kernel, c: Tensor) -> Tensor:
    """grad K(c). For a DTensor and a tensor-scope kernel, K is taken over the whole tensor: ``c`` is all-gathered,
    every rank computes the same full direction and keeps its own shard of it (no further communication)."""
    if kernel.elementwise or not is_dtensor(c):
        return kernel.direction(c)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(kernel.direction(c.full_tensor()), c.device_mesh, c.placements, src_data_rank=None)


def _lr(hyper: Hyper, scale: float, opmath: torch.dtype) -> tuple[Any, Any]:
    """(lr, decay) of a tensor whose lr is the group's times ``scale`` (:func:`lionk._engine.update.lr_and_decay`)."""
    return lr_and_decay(hyper.lr if scale == 1.0 else hyper.lr * scale, hyper.weight_decay, opmath)


def _update_kwargs(hyper: Hyper) -> dict[str, Any]:
    return dict(beta1=hyper.beta1, beta2=hyper.beta2, maximize=hyper.maximize, skip=hyper.skip, cautious=hyper.cautious,
                cautious_decay=hyper.cautious_decay)  # fmt: skip


def store_slot(slot: Slot, new_x: Tensor, new_m: Tensor) -> None:
    """Write a slot's new weight and momentum (opmath values), rounded as its storage and key say."""
    weight = as_real(slot.weight)
    bits = None
    if slot.key is not None and (weight.dtype in (torch.bfloat16, torch.float16) or slot.storage.rounds):
        bits = rounding_bits(weight, slot.key)
    store_weight(weight, new_x, bits)
    slot.storage.write(slot.state, new_m, slot.key, bits)


def run_reference(slots: list[Slot], hyper: Hyper) -> None:
    """The reference path: the formula on one tensor at a time."""
    kwargs = _update_kwargs(hyper)
    direction = lambda c: tensor_direction(hyper.kernel, c)
    for s in slots:
        opmath = opmath_dtype(s.weight.dtype)
        lr, decay = _lr(hyper, s.lr_scale, opmath)
        x = as_real(s.weight).to(opmath)
        g = as_real(s.grad).to(opmath)
        m = s.storage.read(s.state, opmath)
        store_slot(s, *lion_k_update(x, g, m, lr=lr, decay=decay, direction=direction, **kwargs))  # none kept past its tensor


#: The foreach path steps the tensors of one device and opmath dtype in runs of about this many elements, so that
#: its temporaries (a few lists' worth) stay bounded instead of growing with the model; the values are the same,
#: every operation being per tensor.
FOREACH_CHUNK = 1 << 22


def _runs(slots: list[Slot]) -> list[list[Slot]]:
    """``slots`` split into consecutive runs of at least FOREACH_CHUNK elements (the last one may be shorter)."""
    runs, run, numel = [], [], 0
    for s in slots:
        run.append(s)
        numel += s.weight.numel()
        if numel >= FOREACH_CHUNK:
            runs.append(run)
            run, numel = [], 0
    return [*runs, run] if run else runs


def run_foreach(slots: list[Slot], hyper: Hyper) -> None:
    """The foreach path: the formula on the lists of tensors of one device and opmath dtype at a time (in runs of
    about FOREACH_CHUNK elements)."""
    buckets: dict[tuple, list[Slot]] = defaultdict(list)
    for s in slots:
        buckets[s.weight.device, opmath_dtype(s.weight.dtype)].append(s)
    for (_, opmath), bucket in buckets.items():
        for run in _runs(bucket):
            _run_lists(run, hyper, opmath)


def _run_lists(group: list[Slot], hyper: Hyper, opmath: torch.dtype) -> None:
    """One foreach step of ``group``, whose tensors share a device and opmath dtype."""
    kwargs = _update_kwargs(hyper)
    one = lambda c: tensor_direction(hyper.kernel, c)
    direction = lambda cs: foreach_direction(hyper.kernel, cs, one)
    scales = [s.lr_scale for s in group]
    if all(scale == 1.0 for scale in scales):
        lr, decay = _lr(hyper, 1.0, opmath)
    elif isinstance(hyper.lr, Tensor):  # one tensor lr times a number per tensor: not a foreach operand
        run_reference(group, hyper)
        return
    else:
        lr = [hyper.lr * scale for scale in scales]
        decay = [1 - v * hyper.weight_decay for v in lr]
    xs = TensorList([as_real(s.weight).to(opmath) for s in group])
    gs = TensorList([as_real(s.grad).to(opmath) for s in group])
    ms = TensorList([s.storage.read(s.state, opmath) for s in group])
    new_xs, new_ms = lion_k_update(xs, gs, ms, lr=lr, decay=decay, direction=direction, **kwargs)
    plain = [i for i, s in enumerate(group) if s.key is None and isinstance(s.storage, FloatStorage)]
    if plain:
        torch._foreach_copy_([as_real(group[i].weight) for i in plain], [new_xs.items[i] for i in plain])
        torch._foreach_copy_([as_real(group[i].state["exp_avg"]) for i in plain], [new_ms.items[i] for i in plain])
    done = set(plain)
    for i, s in enumerate(group):
        if i not in done:
            store_slot(s, new_xs.items[i], new_ms.items[i])
