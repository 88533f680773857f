r"""The reference path: a plain loop over tensors, written from the formula (the ground truth).

For each tensor, in ``opmath`` precision (float64 for float64 tensors, float32 otherwise):

.. math::
    g \leftarrow -g \text{ if maximize}, \quad
    c = \beta_1 m + (1-\beta_1) g, \quad
    u = \nabla K(c), \quad
    p \leftarrow p (1 - \eta\lambda) - \eta u, \quad
    m \leftarrow \beta_2 m + (1-\beta_2) g

Non-finite gradients: ``u`` is made NaN wherever ``c`` is not finite (``u + (c - c)``), so a NaN or
inf gradient reaches the weight as it does with AdamW instead of being zeroed by ``sign``. With
``nonfinite="skip"`` the entries whose gradient is not finite keep their weight and momentum: their
gradient is replaced by the momentum when forming ``c`` and their results are masked out.
With ``cautious=True`` (Cautious Optimizers, Liang et al. 2024) only the entries whose update agrees in
sign with the current gradient are kept, rescaled by the agreeing fraction of the whole tensor:
``u = u * (u*g > 0) / max(count(u*g > 0) / numel, 1e-3)``.
Sharded parameters (DTensor, e.g. FSDP2's ``fully_shard``): elementwise kernels act on each rank's shard;
tensor-scope kernels (norms, nuclear) see the whole tensor (:func:`tensor_direction`); the cautious count and
numel are those of the whole tensor (DTensor reduces ``count_nonzero`` over the shards).
Complex tensors are updated as pairs of reals (``torch.view_as_real``). The momentum may be stored in
another dtype than the parameter (``momentum_dtype``); with ``rounding_keys`` the bfloat16/float16
stores of weight and momentum round stochastically (:mod:`lionk.precision`), else to nearest (for a
DTensor, each rank draws the bits of its own shard's positions).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import Kernel
from ..precision import stochastic_uniforms, store
from . import is_dtensor

CAUTIOUS_FLOOR = 1e-3  # the cautious rescaling divides by the agreeing fraction, but never by less than this


def cautious_mask(u: Tensor, g: Tensor) -> Tensor:
    """Cautious masking of an update: u * (u*g > 0) / max(agreeing fraction of the tensor, 1e-3).

    The fraction is an exact count divided by numel in float64, then rounded to u's dtype.
    """
    agree = u * g > 0
    if u.numel() == 0:
        return u
    fraction = torch.count_nonzero(agree).to(torch.float64) / u.numel()
    return u * agree.to(u.dtype) / fraction.clamp_min(CAUTIOUS_FLOOR).to(u.dtype)


def tensor_direction(kernel: Kernel, c: Tensor) -> Tensor:
    """grad K(c). For a DTensor and a tensor-scope kernel, K is taken over the whole tensor: ``c`` is all-gathered,
    every rank computes the same full direction and keeps its own shard of it (no further communication)."""
    if kernel.elementwise or not is_dtensor(c):
        return kernel.direction(c)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(kernel.direction(c.full_tensor()), c.device_mesh, c.placements, src_data_rank=None)


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision the arithmetic runs in: float64 stays float64, every other float type uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def lion_reference(
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
    for i, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
        p_store, m_store = as_real(param), as_real(exp_avg)
        opmath = opmath_dtype(p_store.dtype)
        p = p_store.to(opmath)
        m = m_store.to(opmath)
        g = as_real(grad).to(opmath)
        if maximize:
            g = -g
        if skip:
            bad = ~torch.isfinite(g)
            g = torch.where(bad, m, g)
        c = m * beta1 + g * (1 - beta1)
        u = tensor_direction(kernel, c)
        if cautious:
            u = cautious_mask(u, g)
        u = u + (c - c)  # c - c is 0 where c is finite, NaN where it is not
        new_p = p * (1 - lr * weight_decay) - u * lr
        new_m = m * beta2 + g * (1 - beta2)
        if skip:
            new_p = torch.where(bad, p, new_p)
            new_m = torch.where(bad, m, new_m)
        r_p, r_m = stochastic_uniforms(p_store, m_store, None if rounding_keys is None else rounding_keys[i])
        store(p_store, new_p, r_p)
        store(m_store, new_m, r_m)
