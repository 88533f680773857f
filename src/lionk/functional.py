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

from ._paths import cpu_fused, is_dtensor, triton_gpu
from ._paths.elementwise import supports_kernel
from ._paths.foreach import lion_foreach
from ._paths.reference import lion_reference
from .kernels import Kernel, get_kernel
from .precision import dequantize_int8, quantize_int8

NONFINITE_MODES = ("propagate", "skip")
# fused=None on CUDA picks the Triton path only when this is True. It stays False until the kernel has been
# validated and timed on a GPU (it is tested under Triton's CPU interpreter); until then it runs with fused=True.
TRITON_BY_DEFAULT = False


def default_foreach(params: list[Tensor]) -> bool:
    """torch.optim's rule: foreach when every tensor is a plain CUDA tensor (on CPU it is no faster)."""
    return bool(params) and all(type(p) is torch.Tensor and p.is_cuda for p in params)


def fused_unavailable_reason(kernel: str | Kernel = "sign", device: str | torch.device = "cpu") -> str | None:
    """None when the fused path can run ``kernel`` on ``device``, else a one-line reason why not."""
    k, device = get_kernel(kernel), torch.device(device)
    if device.type not in ("cpu", "cuda"):
        return f"no fused path for {device.type} tensors (the foreach path is used)"
    if not supports_kernel(k):
        return f"kernel {k.spec!r} is taken over the whole tensor; the fused path runs the elementwise kernels only"
    if device.type == "cuda":
        return triton_gpu.unavailable_reason(device)
    return cpu_fused.unavailable_reason()


def _fusable(params: list[Tensor], kernel: Kernel) -> bool:
    return (
        supports_kernel(kernel)
        and all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type == "cpu" for p in params)
        and cpu_fused.unavailable_reason() is None
    )


def _triton_fusable(params: list[Tensor], kernel: Kernel) -> bool:
    return (
        TRITON_BY_DEFAULT
        and supports_kernel(kernel)
        and all(type(p) in (torch.Tensor, torch.nn.Parameter) and p.is_cuda for p in params)
        and triton_gpu.unavailable_reason(params[0].device) is None
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
    rounding_keys: list[int] | None = None,
) -> None:
    """Apply one Lion-K step in place to ``params`` and their momenta ``exp_avgs``.

    Paths: ``fused`` (one pass over many tensors, elementwise kernels: in C on CPU, a Triton kernel on
    CUDA, which ``fused=None`` picks only once :data:`TRITON_BY_DEFAULT` is set), ``foreach``
    (multi-tensor torch ops) and the per-tensor reference loop. ``fused=None`` picks the fused path
    where it runs (not while torch.compile traces the step: inductor fuses the reference ops itself),
    then foreach for CUDA tensors, else the loop. ``fused=True`` raises RuntimeError where it cannot run.
    ``cautious=True`` keeps only the entries of grad K(c) that agree in sign with g, rescaled by the
    agreeing fraction of each tensor (see :mod:`lionk._paths.reference`).
    ``exp_avgs`` may have another floating dtype than ``params``. ``rounding_keys`` (one 32-bit key per
    tensor, from :func:`lionk.precision.rounding_key`) makes the bfloat16/float16 stores of weight and
    momentum round stochastically (:mod:`lionk.precision`); ``None`` rounds to nearest.
    """
    if not len(params) == len(grads) == len(exp_avgs):
        raise ValueError(f"params, grads and exp_avgs must have the same length, got {len(params)}, {len(grads)}, {len(exp_avgs)}")
    if rounding_keys is not None and len(rounding_keys) != len(params):
        raise ValueError(f"rounding_keys must have one entry per tensor, got {len(rounding_keys)} for {len(params)} tensors")
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
        path = triton_gpu.lion_triton if params[0].device.type == "cuda" else cpu_fused.lion_cpu_fused
    elif fused is None and not foreach and not torch.compiler.is_compiling() and _fusable(params, k):
        path = cpu_fused.lion_cpu_fused
    elif fused is None and not foreach and not torch.compiler.is_compiling() and _triton_fusable(params, k):
        path = triton_gpu.lion_triton
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
        rounding_keys=rounding_keys,
    )


def lion_int8(
    params: list[Tensor],
    grads: list[Tensor],
    codes: list[Tensor],
    absmaxes: list[Tensor],
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
    rounding_keys: list[int] | None = None,
) -> None:
    """:func:`lion` for momenta stored as int8 blockwise ``codes`` and float32 ``absmaxes`` (:mod:`lionk.precision`).

    Definition: dequantise each momentum, apply :func:`lion` to it in float32, quantise it back (stochastically
    with the low 16 bits of each element's hash under its ``rounding_keys`` entry). Where the fused C path can
    run (CPU, elementwise kernel, not cautious, contiguous tensors) it does this per block of 256 in one pass,
    with the same results; elsewhere one tensor at a time, so that a float32 momentum never exists for all
    tensors at once.
    """
    k = get_kernel(kernel)
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, kernel=k, maximize=maximize, nonfinite=nonfinite)
    in_c: list[int] = []
    if fused is not False and not foreach and not cautious and not torch.compiler.is_compiling() and _fusable(params, k):
        in_c = [i for i, (p, g) in enumerate(zip(params, grads)) if cpu_fused.int8_fusable(p, g)]
    if in_c:
        keys = None if rounding_keys is None else [rounding_keys[i] for i in in_c]
        cpu_fused.lion_cpu_fused_int8(
            [params[i] for i in in_c],
            [grads[i] for i in in_c],
            [codes[i] for i in in_c],
            [absmaxes[i] for i in in_c],
            rounding_keys=keys,
            **kw,
        )
    done = set(in_c)
    for i, (p, g, q, a) in enumerate(zip(params, grads, codes, absmaxes)):
        if i in done:
            continue
        key = None if rounding_keys is None else rounding_keys[i]
        m = dequantize_int8(q, a)
        lion([p], [g], [m], foreach=foreach, fused=fused, cautious=cautious, rounding_keys=None if key is None else [key], **kw)
        new_codes, new_absmax = quantize_int8(m, key)
        q.copy_(new_codes)
        a.copy_(new_absmax)
