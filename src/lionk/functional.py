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

from ._paths import cpu_fused
from ._paths.foreach import lion_foreach
from ._paths.reference import is_dtensor, lion_reference
from .kernels import Kernel, get_kernel

NONFINITE_MODES = ("propagate", "skip")


def default_foreach(params: list[Tensor]) -> bool:
    """torch.optim's rule: foreach when every tensor is a plain CUDA tensor (on CPU it is no faster)."""
    return bool(params) and all(type(p) is torch.Tensor and p.is_cuda for p in params)


def fused_unavailable_reason(kernel: str | Kernel = "sign", device: str | torch.device = "cpu") -> str | None:
    """None when the fused path can run ``kernel`` on ``device``, else a one-line reason why not."""
    k, device = get_kernel(kernel), torch.device(device)
    if device.type != "cpu":
        return f"no fused path for {device.type} tensors yet (the foreach path is used)"
    if not cpu_fused.supports_kernel(k):
        return f"kernel {k.spec!r} is taken over the whole tensor; the fused path runs the elementwise kernels only"
    return cpu_fused.unavailable_reason()


def _fusable(params: list[Tensor], kernel: Kernel) -> bool:
    return (
        cpu_fused.supports_kernel(kernel)
        and all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type == "cpu" for p in params)
        and cpu_fused.unavailable_reason() is None
    )


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
    fused: bool | None = None,
    cautious: bool = False,
) -> None:
    """Apply one Lion-K step in place to ``params`` and their momenta ``exp_avgs``.

    Paths: ``fused`` (one pass in C over many tensors; CPU, elementwise kernels), ``foreach``
    (multi-tensor torch ops) and the per-tensor reference loop. ``fused=None`` picks the fused path
    where it runs (not while torch.compile traces the step: inductor fuses the reference ops itself),
    then foreach for CUDA tensors, else the loop. ``fused=True`` raises RuntimeError where it cannot run.
    ``cautious=True`` keeps only the entries of grad K(c) that agree in sign with g, rescaled by the
    agreeing fraction of each tensor (see :mod:`lionk._paths.reference`).
    """
    if not len(params) == len(grads) == len(exp_avgs):
        raise ValueError(f"params, grads and exp_avgs must have the same length, got {len(params)}, {len(grads)}, {len(exp_avgs)}")
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"Invalid nonfinite: {nonfinite!r} (must be one of {NONFINITE_MODES})")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot be used together")
    if not params:
        return
    k = get_kernel(kernel)
    if fused:
        reason = fused_unavailable_reason(k, params[0].device)
        if reason is None and any(is_dtensor(p) for p in params):
            reason = "the fused path takes plain tensors, not DTensors (FSDP2 parameters run the reference or foreach path)"
        if reason is not None:
            raise RuntimeError(f"fused=True cannot run here: {reason}")
        path = cpu_fused.lion_cpu_fused
    elif fused is None and not foreach and not torch.compiler.is_compiling() and _fusable(params, k):
        path = cpu_fused.lion_cpu_fused
    elif foreach or (foreach is None and default_foreach(params)):
        path = lion_foreach
    else:
        path = lion_reference
    path(
        params,
        grads,
        exp_avgs,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=weight_decay,
        kernel=k,
        maximize=maximize,
        nonfinite=nonfinite,
        cautious=cautious,
    )
