"""Execution paths of one Lion-K step. Each updates params and momenta in place and shares one signature:

    path(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, kernel, maximize, nonfinite)

``reference`` is the plain per-tensor loop written from the formula: the ground truth every other path
is tested against.
"""

import torch
from torch import Tensor


def is_dtensor(t: Tensor) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (a sharded or replicated parameter)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
