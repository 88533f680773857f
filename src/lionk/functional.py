r"""Functional Lion-K: one step over lists of tensors, dispatched to an execution path.

.. math::
    c = \beta_1 m + (1-\beta_1) g, \qquad
    p \leftarrow p\,(1 - \eta\lambda) - \eta\,\nabla K(c), \qquad
    m \leftarrow \beta_2 m + (1-\beta_2) g

with g negated when ``maximize``; the arithmetic runs in float32 for float16/bfloat16 tensors (float64
for float64) and the results are rounded to the storage dtype. See :mod:`lionk._paths.reference` for
the exact semantics of non-finite gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._paths.foreach import lion_foreach
from ._paths.reference import lion_reference
from .kernels import Kernel, get_kernel

NONFINITE_MODES = ("propagate", "skip")


def default_foreach(params: list[Tensor]) -> bool:
    """torch.optim's rule: foreach when every tensor is a plain CUDA tensor (on CPU it is no faster)."""
    return bool(params) and all(type(p) is torch.Tensor and p.is_cuda for p in params)


def lion(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    kernel: str | Kernel = "sign",
    maximize: bool = False,
    nonfinite: str = "propagate",
    foreach: bool | None = None,
) -> None:
    """Apply one Lion-K step in place to ``params`` and their momenta ``exp_avgs``.

    ``foreach=None`` picks the foreach path for CUDA tensors and the per-tensor loop otherwise.
    """
    if not len(params) == len(grads) == len(exp_avgs):
        raise ValueError(f"params, grads and exp_avgs must have the same length, got {len(params)}, {len(grads)}, {len(exp_avgs)}")
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"Invalid nonfinite: {nonfinite!r} (must be one of {NONFINITE_MODES})")
    if not params:
        return
    if foreach is None:
        foreach = default_foreach(params)
    path = lion_foreach if foreach else lion_reference
    path(
        params,
        grads,
        exp_avgs,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        kernel=get_kernel(kernel),
        maximize=maximize,
        nonfinite=nonfinite,
    )
