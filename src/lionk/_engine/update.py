r"""The Lion-K update, written once for the torch paths: on tensors (the reference path) or on lists of tensors
(the foreach path, through :class:`TensorList`), in opmath precision.

For a weight :math:`x`, gradient :math:`g`, momentum :math:`m` and a kernel's direction :math:`\nabla K`:

.. math::
    g \leftarrow -g \text{ if maximize}, \quad
    c = \beta_1 m + (1-\beta_1) g, \quad
    u = \nabla K(c) + (c - c), \quad
    x \leftarrow x (1 - \eta\lambda) - \eta u, \quad
    m \leftarrow \beta_2 m + (1-\beta_2) g

``c - c`` is 0 where ``c`` is finite and NaN where it is not, so a NaN or inf gradient reaches the weight as it
does with AdamW instead of being zeroed by ``sign``. ``skip`` mode: entries whose gradient is not finite keep
their weight and momentum (their gradient is replaced by the momentum when forming ``c``, and their results
are masked out). ``cautious`` (Cautious Optimizers, Liang et al. 2024): only the entries whose direction
agrees in sign with the gradient are kept, rescaled by the agreeing fraction of the whole tensor,
``u = u * (u*g > 0) / max(count(u*g > 0) / numel, 1e-3)``.

The native library and the Triton kernel implement these same lines in their languages; DistributedLion and
``lionk.optax`` use :func:`interpolate`, :func:`decayed` and :func:`ema` from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..expr import OPS, Expr, TorchOps, evaluate

CAUTIOUS_FLOOR = 1e-3  # the cautious rescaling divides by the agreeing fraction, but never by less than this


def interpolate(m: Any, g: Any, beta1: float) -> Any:
    """c = beta1 * m + (1 - beta1) * g."""
    return m * beta1 + g * (1 - beta1)


def ema(m: Any, g: Any, beta2: float) -> Any:
    """The new momentum beta2 * m + (1 - beta2) * g."""
    return m * beta2 + g * (1 - beta2)


def decayed(x: Any, u: Any, lr: Any, decay: Any, cautious: bool = False) -> Any:
    """The new weight x * decay - u * lr, with decay = 1 - lr * k (k = weight_decay, or weight_decay / initial_lr).

    ``cautious`` (Cautious Weight Decay): the decay applies only where u * x > 0, where it pulls the way the step
    does; elsewhere x - u * lr (x * 1 is x exactly, so the two forms round alike)."""
    if cautious:
        return (x * decay).where(u * x > 0, x) - u * lr
    return x * decay - u * lr


def lr_and_decay(lr: float | Tensor, weight_decay: float, opmath: torch.dtype) -> tuple[Any, Any]:
    """(lr, decay = 1 - lr * weight_decay) as the arithmetic takes them: numbers stay numbers (each rounded to opmath
    where it meets a tensor, as torch rounds a Python scalar); a tensor lr gives decay in its own precision, then
    both in opmath, so that a float64 tensor lr steps exactly as the same Python float, whatever the shapes."""
    decay = 1 - lr * weight_decay
    if isinstance(lr, Tensor):
        return lr.to(opmath), decay.to(opmath)
    return lr, decay


def cautious_mask(u: Tensor, g: Tensor) -> Tensor:
    """u * (u*g > 0) / max(agreeing fraction of the tensor, 1e-3); the fraction is an exact count divided by numel
    in float64, then rounded to u's dtype (for a DTensor the count is over the whole tensor)."""
    agree = u * g > 0
    if u.numel() == 0:
        return u
    fraction = torch.count_nonzero(agree).to(torch.float64) / u.numel()
    return u * agree.to(u.dtype) / fraction.clamp_min(CAUTIOUS_FLOOR).to(u.dtype)


def clip_per_tensor(grads: list[Tensor], max_norm: float) -> None:
    """Scale each gradient, in place, by min(1, max_norm / (||g||_2 + 1e-6)): clip_grad_norm_'s rule, per tensor."""
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    coefficients = [(max_norm / (n.float() + 1e-6)).clamp_max(1.0).to(g.dtype) for n, g in zip(norms, grads)]
    torch._foreach_mul_(grads, coefficients)


def lion_k_update(
    x: Any,
    g: Any,
    m: Any,
    *,
    lr: Any,
    decay: Any,
    beta1: float,
    beta2: float,
    direction: Callable[[Any], Any],
    maximize: bool,
    skip: bool,
    cautious: bool,
    cautious_decay: bool = False,
) -> tuple[Any, Any]:
    """The new weight and momentum (module docstring) from opmath tensors, or :class:`TensorList`\\ s of them."""
    if maximize:
        g = -g
    if skip:
        bad = ~g.isfinite()
        g = m.where(bad, g)
    c = interpolate(m, g, beta1)
    u = direction(c)
    if cautious:
        u = u.map(cautious_mask, g) if isinstance(u, TensorList) else cautious_mask(u, g)
    u = u + (c - c)
    del c  # each temporary freed once used: at most four tensors' worth are alive at once
    new_x = decayed(x, u, lr, decay, cautious_decay)
    del u
    new_m = ema(m, g, beta2)
    if skip:
        new_x = x.where(bad, new_x)
        new_m = m.where(bad, new_m)
    return new_x, new_m


class TensorList:
    """A list of tensors with the arithmetic of one: each operation runs as one ``torch._foreach_*`` call (on CUDA,
    one launch for many tensors). The other operand may be a number, a 0-d tensor, a list of numbers (one per
    tensor) or a TensorList. Operations without a foreach version run tensor by tensor; either way the values are
    those of the same operation on each tensor."""

    __slots__ = ("items",)

    def __init__(self, items: Sequence[Tensor]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def map(self, fn: Callable[..., Tensor], *others: TensorList) -> TensorList:
        return TensorList([fn(*args) for args in zip(self.items, *(o.items for o in others))])

    @staticmethod
    def _other(other: Any) -> Any:
        return other.items if isinstance(other, TensorList) else other

    def __neg__(self) -> TensorList:
        return TensorList(torch._foreach_neg(self.items))

    def __add__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_add(self.items, self._other(other)))

    def __sub__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_sub(self.items, self._other(other)))

    def __mul__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_mul(self.items, self._other(other)))

    def __truediv__(self, other: Any) -> TensorList:
        return TensorList(torch._foreach_div(self.items, self._other(other)))

    def __invert__(self) -> TensorList:
        return TensorList([~t for t in self.items])

    def __gt__(self, other: Any) -> TensorList:
        return TensorList([t > o for t, o in zip(self.items, other.items if isinstance(other, TensorList) else [other] * len(self))])

    def isfinite(self) -> TensorList:
        return TensorList([t.isfinite() for t in self.items])

    def where(self, condition: TensorList, other: TensorList) -> TensorList:
        """``torch.where(condition, self, other)`` per tensor."""
        return TensorList([t.where(c, o) for t, c, o in zip(self.items, condition.items, other.items)])


class ForeachOps:
    """The operations of :mod:`lionk.expr` on :class:`TensorList`\\ s: ``torch._foreach_*`` where torch has one,
    tensor by tensor (with :class:`lionk.expr.TorchOps`) elsewhere."""

    _UNARY = frozenset({"neg", "abs", "sign", "sqrt", "exp", "expm1", "log", "log1p", "tanh"})
    _BINARY = frozenset({"add", "sub", "mul", "div"})

    def __init__(self) -> None:
        self.single = TorchOps()

    def tiny(self, c: TensorList) -> float:
        return torch.finfo(c.items[0].dtype).tiny

    def full_like(self, c: TensorList, value: float) -> TensorList:
        return TensorList([torch.full_like(t, value) for t in c.items])

    def apply(self, name: str, a: Any, b: Any = None) -> TensorList:
        lists = isinstance(a, TensorList)
        if lists and name in self._UNARY:
            return TensorList(getattr(torch, f"_foreach_{name}")(a.items))
        if lists and name in self._BINARY:
            return TensorList(getattr(torch, f"_foreach_{name}")(a.items, TensorList._other(b)))
        if lists and name == "pow" and isinstance(b, float):
            return TensorList(torch._foreach_pow(a.items, b))
        if lists and name in ("minimum", "maximum"):
            if isinstance(b, float):
                fn = torch._foreach_clamp_max if name == "minimum" else torch._foreach_clamp_min
                return TensorList(fn(a.items, b))
            return TensorList(getattr(torch, f"_foreach_{name}")(a.items, b.items))
        # no foreach version: tensor by tensor (a or b may be a number)
        n = len(a) if lists else len(b)
        first = a.items if lists else [a] * n
        second = b.items if isinstance(b, TensorList) else [b] * n
        if OPS[name].arity == 1:
            return TensorList([self.single.apply(name, x) for x in first])
        return TensorList([self.single.apply(name, x, y) for x, y in zip(first, second)])


FOREACH_OPS = ForeachOps()


def foreach_direction(kernel: Any, cs: TensorList, one: Callable[[Tensor], Tensor]) -> TensorList:
    """The kernel's direction for each tensor of ``cs``: its formula evaluated with foreach operations when it is
    elementwise, else ``one`` (a function of one tensor, e.g. the kernel's own direction) tensor by tensor."""
    expression: Expr | None = kernel.expression
    if expression is not None and kernel.elementwise:
        return evaluate(expression, cs, FOREACH_OPS)
    return cs.map(one)
