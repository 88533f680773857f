"""What the fused paths (C on CPU, Triton on CUDA) share: the elementwise kernels they implement, by id and
one float parameter, and the layout test that lets them treat param, grad and momentum as flat arrays."""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels import Huber, Kernel, Power, Quadratic, Relativistic, Sign, Tanh

# The ids of lion_cpu.c's and _triton_kernels.py's kernel switch.
KERNEL_IDS: dict[type[Kernel], int] = {Sign: 0, Power: 1, Quadratic: 2, Huber: 3, Relativistic: 4, Tanh: 5}


def supports_kernel(kernel: Kernel) -> bool:
    return type(kernel) in KERNEL_IDS


def kernel_parameter(kernel: Kernel) -> float:
    """The kernel's one parameter as the fused loops take it: p - 1 for Power, ``a`` for Huber, Relativistic
    and Tanh, 0 for the others."""
    if isinstance(kernel, Power):
        return kernel.p - 1.0
    return float(getattr(kernel, "a", 0.0))


def shares_dense_layout(p: Tensor, g: Tensor, m: Tensor) -> bool:
    """True when the three tensors cover their memory densely with the same strides (elementwise = flat)."""
    if not p.stride() == g.stride() == m.stride():
        return False
    return p.is_contiguous() or p.is_contiguous(memory_format=torch.channels_last) or p.dim() == 0
