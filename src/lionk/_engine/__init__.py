"""The engine: one Lion-K step over many tensors, for every optimizer of lionk.

A step's way (``Lion.step`` -> memory):

1. :mod:`.work`: the param group's settings become a :class:`Hyper` (validated at every step), and every
   parameter with a gradient a :class:`Slot` (weight, gradient, state, storage, rounding key), checked against
   its parameter before anything is written;
2. :mod:`.dispatch`: per tensor, the path (fused, foreach, reference) and why not a faster one;
3. the paths update weight and state in place: :mod:`.native` (the library built at install, driven by a
   kernel's compiled formula), :mod:`.triton` (CUDA, a generated direction), :mod:`.torch_paths` (reference and
   foreach, the formula of :mod:`.update` on tensors or lists of tensors), all reading and writing the momentum
   through the storage protocol of :mod:`lionk.precision`.
"""

from .dispatch import TRITON_BY_DEFAULT, Choice, Plan, choose, fused_unavailable_reason, plan, run
from .work import NONFINITE_MODES, Hyper, Slot, check_group, check_lr, check_param, check_slot, group_hyper, where

__all__ = [
    "NONFINITE_MODES",
    "TRITON_BY_DEFAULT",
    "Choice",
    "Hyper",
    "Slot",
    "check_group",
    "check_lr",
    "check_param",
    "check_slot",
    "choose",
    "fused_unavailable_reason",
    "group_hyper",
    "Plan",
    "plan",
    "run",
    "where",
]
