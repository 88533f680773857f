"""The foreach path: the reference formula with ``torch._foreach_*`` ops over lists of tensors.

Tensors are grouped by (device, param dtype, momentum dtype) and each group is processed with multi-tensor ops, which on
CUDA launch one kernel for many tensors. The operations and their order are those of the reference
path, so the results are bitwise identical to it (the tests check this in float64). On CPU torch runs
foreach ops as a per-tensor loop, so this path is no faster there.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from ..kernels import Kernel
from ..precision import has_half_store, stochastic_uniforms, store
from .reference import as_real, cautious_mask, opmath_dtype, tensor_direction


def _group_by_device_and_dtypes(*lists: list) -> dict[tuple, tuple[list, ...]]:
    """Bucket aligned lists by (device, dtype of the first list, dtype of the third list)."""
    groups: dict[tuple, tuple[list, ...]] = defaultdict(lambda: tuple([] for _ in lists))
    for items in zip(*lists):
        key = (items[0].device, items[0].dtype, items[2].dtype)
        for bucket, item in zip(groups[key], items):
            bucket.append(item)
    return groups


def lion_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    kernel: Kernel,
    maximize: bool,
    nonfinite: str,
    cautious: bool = False,
    rounding_keys: list[int] | None = None,
) -> None:
    skip = nonfinite == "skip"
    keys = [None] * len(params) if rounding_keys is None else rounding_keys
    for ps_store, gs_in, ms_store, ks in _group_by_device_and_dtypes(params, grads, exp_avgs, keys).values():
        ps_store = [as_real(t) for t in ps_store]
        ms_store = [as_real(t) for t in ms_store]
        gs = [as_real(t) for t in gs_in]
        opmath = opmath_dtype(ps_store[0].dtype)
        ps = [t.to(opmath) for t in ps_store] if ps_store[0].dtype != opmath else ps_store
        ms = [t.to(opmath) for t in ms_store] if ms_store[0].dtype != opmath else ms_store
        if gs[0].dtype != opmath:
            gs = [t.to(opmath) for t in gs]
        if maximize:
            gs = torch._foreach_neg(gs)
        if skip:
            bads = [~torch.isfinite(g) for g in gs]
            gs = [torch.where(bad, m, g) for bad, m, g in zip(bads, ms, gs)]

        cs = torch._foreach_mul(ms, beta1)
        torch._foreach_add_(cs, torch._foreach_mul(gs, 1 - beta1))
        us = kernel.foreach_direction(cs) if kernel.elementwise else [tensor_direction(kernel, c) for c in cs]
        if cautious:
            us = [cautious_mask(u, g) for u, g in zip(us, gs)]
        torch._foreach_add_(us, torch._foreach_sub(cs, cs))  # NaN where c is not finite
        torch._foreach_mul_(us, lr)

        new_ps = torch._foreach_mul(ps, 1 - lr * weight_decay)
        torch._foreach_sub_(new_ps, us)
        new_ms = torch._foreach_mul(ms, beta2)
        torch._foreach_add_(new_ms, torch._foreach_mul(gs, 1 - beta2))
        if skip:
            new_ps = [torch.where(bad, p, q) for bad, p, q in zip(bads, ps, new_ps)]
            new_ms = [torch.where(bad, m, q) for bad, m, q in zip(bads, ms, new_ms)]
        if rounding_keys is None or not has_half_store(ps_store[0], ms_store[0]):
            torch._foreach_copy_(ps_store, new_ps)
            torch._foreach_copy_(ms_store, new_ms)
            continue
        for p_store, new_p, m_store, new_m, k in zip(ps_store, new_ps, ms_store, new_ms, ks):
            r_p, r_m = stochastic_uniforms(p_store, m_store, k)
            store(p_store, new_p, r_p)
            store(m_store, new_m, r_m)
