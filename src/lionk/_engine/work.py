"""What a step is given, checked at the boundary: a param group's hyperparameters (:class:`Hyper`) and, per tensor,
the weight, gradient and state it will update (:class:`Slot`).

Everything here raises before any memory is written: ValueError / TypeError naming the value and the valid range
(RuntimeError for a sparse gradient, as torch.optim). :func:`group_hyper` is run on every group at every step and
on every loaded state dict, so a group edited by hand or loaded from a file is held to the rules its constructor
was held to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .._tensor import layout_problem
from ..kernels import Kernel, get_kernel, kernel_spec
from ..precision import Storage, canonical_momentum_dtype, held_storage

NONFINITE_MODES = ("propagate", "skip")
WEIGHT_DECAY_MODES = ("decoupled", "independent", "cautious")

#: Every group setting but lr, betas and weight_decay, with its default: a group (or a checkpoint) without one
#: gets the default, so that older checkpoints load and every setting has one home.
DEFAULTS: dict[str, Any] = {
    "kernel": "sign",
    "maximize": False,
    "nonfinite": "propagate",
    "foreach": None,
    "fused": None,
    "cautious": False,
    "momentum_dtype": None,
    "stochastic_rounding": True,
    "weight_decay_mode": "decoupled",
    "max_grad_norm": None,
}
BOOL_FLAGS = ("maximize", "cautious", "stochastic_rounding")
PATH_FLAGS = ("foreach", "fused")


def where(index: int | None) -> str:
    return "" if index is None else f" in param group {index}"


@dataclass(frozen=True)
class Hyper:
    """One param group's settings, validated: what every path of the engine reads."""

    lr: float | Tensor  # a number or a 0-d tensor
    beta1: float
    beta2: float
    weight_decay: float  # the coefficient k of the per-step decay 1 - lr * k (wd, or wd / initial_lr: independent mode)
    kernel: Kernel
    maximize: bool
    skip: bool  # nonfinite == "skip"
    cautious: bool
    foreach: bool | None
    fused: bool | None
    cautious_decay: bool = False  # decay only the entries whose update points the same way as the weight

    @property
    def lr_value(self) -> float:
        return self.lr.item() if isinstance(self.lr, Tensor) else self.lr


@dataclass(eq=False)  # a slot is one tensor's place in a step: compared by identity
class Slot:
    """One tensor a step updates: ``weight`` (the parameter, or a buffer stepped in its place such as LionSF's z)
    with ``grad`` and the parameter's ``state`` held in ``storage``; ``key`` is its stochastic-rounding key (None:
    round to nearest); ``lr_scale`` multiplies the group's lr for this tensor alone (LionSF's agreement)."""

    param: Tensor
    weight: Tensor
    grad: Tensor
    state: dict[str, Any]
    storage: Storage
    label: str
    key: int | None = None
    lr_scale: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)


def check_lr(lr: Any, index: int | None = None) -> float | Tensor:
    """A learning rate as the engine takes it: a finite number >= 0, or a 1-element float tensor (any shape torch.optim
    accepts: [], [1], [1, 1], ...) returned as a 0-d view. A CUDA tensor's value is not read (that would synchronise)."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"Tensor lr must be 1-element{where(index)}, got shape {tuple(lr.shape)}")
        if not lr.is_floating_point():
            raise TypeError(f"Tensor lr must be a floating-point tensor{where(index)}, got {lr.dtype}")
        if lr.device.type == "cpu":
            _check_number("learning rate", lr.item(), index)
        return lr.reshape(())
    _check_number("learning rate", lr, index)
    return float(lr)


def _check_number(name: str, value: Any, index: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Invalid {name}{where(index)}: {value!r} (must be a finite number >= 0)")


def check_group(group: dict[str, Any], index: int | None = None) -> None:
    """Validate a param group's (or the defaults') settings in place: fill a missing setting with its default,
    normalise ``kernel`` to its spec, ``betas`` to a tuple and ``momentum_dtype`` to its name; raise ValueError /
    TypeError naming the first invalid value."""
    for key, default in DEFAULTS.items():
        group.setdefault(key, default)
    check_lr(group["lr"], index)
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas{where(index)}: {betas!r} (must be a pair (beta1, beta2))")
    for i, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}{where(index)}: {beta!r} (must be in [0, 1))")
    group["betas"] = tuple(float(b) for b in betas)
    _check_number("weight_decay", group["weight_decay"], index)
    if group["nonfinite"] not in NONFINITE_MODES:
        raise ValueError(f"Invalid nonfinite{where(index)}: {group['nonfinite']!r} (must be one of {NONFINITE_MODES})")
    max_norm = group["max_grad_norm"]
    if max_norm is not None:
        _check_number("max_grad_norm", max_norm, index)
        if max_norm == 0:
            raise ValueError(f"Invalid max_grad_norm{where(index)}: 0 (must be None or a finite number > 0)")
    if group["weight_decay_mode"] not in WEIGHT_DECAY_MODES:
        raise ValueError(f"Invalid weight_decay_mode{where(index)}: {group['weight_decay_mode']!r} (must be one of {WEIGHT_DECAY_MODES})")
    for flag in BOOL_FLAGS:
        if not isinstance(group[flag], bool):
            raise ValueError(f"Invalid {flag}{where(index)}: {group[flag]!r} (must be True or False)")
    for flag in PATH_FLAGS:
        if not (group[flag] is None or isinstance(group[flag], bool)):
            raise ValueError(f"Invalid {flag}{where(index)}: {group[flag]!r} (must be None, True or False)")
    if group["foreach"] and group["fused"]:
        raise ValueError(f"foreach=True and fused=True cannot be used together{where(index)}")
    try:
        group["momentum_dtype"] = canonical_momentum_dtype(group["momentum_dtype"])
        group["kernel"] = kernel_spec(group["kernel"])
    except (ValueError, TypeError) as err:
        raise type(err)(f"{err}{where(index)}") from None


def group_hyper(group: dict[str, Any], index: int | None = None) -> Hyper:
    """:func:`check_group`, then the group's :class:`Hyper`."""
    check_group(group, index)
    beta1, beta2 = group["betas"]
    coefficient = float(group["weight_decay"])
    if group["weight_decay_mode"] == "independent" and coefficient:
        initial = group.get("initial_lr")
        initial = initial.item() if isinstance(initial, Tensor) else initial
        if isinstance(initial, bool) or not isinstance(initial, (int, float)) or not (math.isfinite(initial) and initial > 0):
            raise ValueError(
                f"weight_decay_mode='independent' decays by weight_decay * lr / initial_lr{where(index)}, and initial_lr is {initial!r} "
                "(must be a finite number > 0: the group's lr when it was made, or what an lr scheduler set)"
            )
        coefficient /= initial
    return Hyper(
        lr=check_lr(group["lr"], index),
        beta1=beta1,
        beta2=beta2,
        weight_decay=coefficient,
        kernel=get_kernel(group["kernel"]),
        maximize=group["maximize"],
        skip=group["nonfinite"] == "skip",
        cautious=group["cautious"],
        foreach=group["foreach"],
        fused=group["fused"],
        cautious_decay=group["weight_decay_mode"] == "cautious",
    )


def check_param(param: Any, label: str) -> None:
    """A parameter lionk can step: a floating-point or complex tensor."""
    if not isinstance(param, Tensor):
        raise TypeError(f"{label} is {type(param).__name__}, not a tensor")
    if not (param.is_floating_point() or param.is_complex()):
        raise TypeError(f"{label} has dtype {param.dtype}; Lion steps floating-point and complex tensors only")


def grad_problem(param: Tensor, grad: Any) -> str | None:
    """What makes ``grad`` unusable as the gradient of ``param`` (None if nothing); sparse gradients raise
    RuntimeError in :func:`check_slot`."""
    if not isinstance(grad, Tensor):
        return f"its gradient is {type(grad).__name__}, not a tensor"
    problem = layout_problem(grad, param, "its gradient", overlap_allowed=True)  # the torch paths read any layout
    if problem is not None:
        return problem
    if grad.is_complex() != param.is_complex() or not (grad.is_floating_point() or grad.is_complex()):
        return f"its gradient has dtype {grad.dtype} for a {param.dtype} parameter"
    return None


def check_slot(slot: Slot, optimizer_name: str = "Lion") -> None:
    """Raise before anything is written when a slot's gradient or state does not fit its parameter."""
    if isinstance(slot.grad, Tensor) and slot.grad.is_sparse:
        raise RuntimeError(f"{optimizer_name} does not support sparse gradients ({slot.label})")
    problem = grad_problem(slot.param, slot.grad) or slot.storage.problem(slot.state, slot.param)
    if problem is None and slot.weight is not slot.param:
        if slot.weight.shape != slot.param.shape or slot.weight.dtype != slot.param.dtype or slot.weight.device != slot.param.device:
            problem = f"the tensor stepped in its place has {slot.weight.dtype} {tuple(slot.weight.shape)} on {slot.weight.device}"
    if problem is not None:
        raise ValueError(f"{slot.label}: {problem}")


def state_storage(state: dict[str, Any], param: Tensor, label: str) -> Storage:
    """The storage a parameter's existing state holds its momentum in; ValueError when it holds none lionk knows."""
    storage = held_storage(state)
    if storage is None:
        raise ValueError(f"{label}: state['exp_avg'] is {type(state.get('exp_avg')).__name__}, not a tensor")
    return storage
