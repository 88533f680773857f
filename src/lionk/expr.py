r"""The language Lion-K kernels are written in: a kernel's direction :math:`\nabla K(c)` is one formula, and every
execution path runs that formula.

A kernel writes its direction as a Python function of ``c`` with operators (``+ - * /``, unary ``-``, ``abs()``)
and the methods below, exactly as it would on a torch tensor::

    def formula(self, c):
        return (c / self.a).clamp(-1.0, 1.0)        # Huber: clip(c/a, -1, 1)

Calling it once with a symbolic ``c`` (:func:`trace`) gives an expression tree, :class:`Expr`, whose nodes are
the operations of :data:`OPS`. Each path evaluates the tree its own way:

* the reference path: torch operations on each tensor (:func:`evaluate` with ``torch``);
* the foreach path: ``torch._foreach_*`` operations on lists of tensors (:class:`lionk._engine.tensorlist.TensorList`);
* the fused CPU path: the tree is compiled to a short register program (:func:`compile_program`) that the
  native library's interpreter runs over blocks of elements;
* the Triton path: the tree is written out as the source of a ``@triton.jit`` function (:func:`triton_source`);
* JAX (``lionk.optax``): ``jax.numpy`` operations (:func:`evaluate` with ``jax.numpy``).

So a kernel is written once and runs everywhere its operations exist. An operation is *exact* when every path
rounds it the same way (IEEE arithmetic, comparisons): formulas made of exact operations give bitwise-identical
steps on every path; the others (``exp``, ``tanh``, ``pow``, ...) call each platform's math library and agree to
a few ulp. Reductions over the whole tensor (``sum``, ``amax``, ``count_nonzero``, ``argmax_onehot``) make a
kernel tensor-scope: the torch and JAX paths run it, the fused paths do not.

Constants are folded when the formula is traced (in float64); a constant operand is cast to the opmath dtype
(float32, or float64 for float64 parameters), as torch casts a Python scalar. ``TINY`` stands for the smallest
normal number of the dtype the formula runs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["OPS", "TINY", "Expr", "Op", "compile_program", "evaluate", "is_elementwise", "trace", "triton_source"]


@dataclass(frozen=True)
class Op:
    """One operation of the language.

    ``arity`` 1 or 2; ``exact``: every path rounds it identically; ``reduction``: it reduces over the whole
    tensor (the result broadcasts back); ``fold``: its value on Python floats (for constant folding; None for
    reductions); ``triton``: its expression in a Triton ``@jit`` function, with ``{a}``/``{b}`` for the operands
    and ``{T}`` for the opmath dtype (None: no Triton version).
    """

    name: str
    arity: int
    exact: bool
    reduction: bool = False
    fold: Callable[..., float] | None = None
    triton: str | None = None


def _sign(x: float) -> float:
    return float((x > 0) - (x < 0))


def _nan_min(a: float, b: float) -> float:
    return a if a != a else (b if b != b else min(a, b))


def _nan_max(a: float, b: float) -> float:
    return a if a != a else (b if b != b else max(a, b))


#: Every operation, by name. The native library implements the same names (its ``lk_op_name`` table); an
#: operation it lacks keeps formulas that use it off the fused CPU path, with that reason.
OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("neg", 1, True, fold=lambda a: -a, triton="-{a}"),
        Op("abs", 1, True, fold=abs, triton="tl.abs({a})"),
        Op("sign", 1, True, fold=_sign, triton="(({a} > 0).to({T}) - ({a} < 0).to({T}))"),
        Op("sqrt", 1, False, fold=math.sqrt, triton="_sqrt({a}, {T})"),
        Op("exp", 1, False, fold=math.exp, triton="libdevice.exp({a})"),
        Op("expm1", 1, False, fold=math.expm1, triton="libdevice.expm1({a})"),
        Op("log", 1, False, fold=math.log, triton="libdevice.log({a})"),
        Op("log1p", 1, False, fold=math.log1p, triton="libdevice.log1p({a})"),
        Op("tanh", 1, False, fold=math.tanh, triton="libdevice.tanh({a})"),
        Op("add", 2, True, fold=lambda a, b: a + b, triton="({a} + {b})"),
        Op("sub", 2, True, fold=lambda a, b: a - b, triton="({a} - {b})"),
        Op("mul", 2, True, fold=lambda a, b: a * b, triton="({a} * {b})"),
        Op("div", 2, True, fold=lambda a, b: a / b, triton="_div({a}, {b}, {T})"),
        Op("pow", 2, False, fold=math.pow, triton="libdevice.pow({a}, {b})"),
        Op("hypot", 2, False, fold=math.hypot, triton="libdevice.hypot({a}, {b})"),
        Op("minimum", 2, True, fold=_nan_min, triton="_minimum({a}, {b})"),
        Op("maximum", 2, True, fold=_nan_max, triton="_maximum({a}, {b})"),
        Op("sum", 1, False, reduction=True),
        Op("amax", 1, True, reduction=True),
        Op("count_nonzero", 1, True, reduction=True),
        Op("argmax_onehot", 1, True, reduction=True),
    )
}


class Expr:
    """A node of a traced formula: the input ``c``, a constant, or an operation of :data:`OPS` on nodes.

    Build it with the operators and methods a torch tensor has (``abs``, ``sign``, ``sqrt``, ``exp``, ``expm1``,
    ``log``, ``log1p``, ``tanh``, ``pow``, ``hypot``, ``clamp``, ``clamp_min``, ``clamp_max``, ``minimum``,
    ``maximum``, ``sum``, ``amax``, ``count_nonzero``) and ``argmax_onehot`` (1 at the first entry of largest
    value, 0 elsewhere). Nodes are compared by structure, so equal subformulas are computed once.
    """

    __slots__ = ("_hash", "args", "op", "value")

    def __init__(self, op: str, args: tuple[Expr, ...] = (), value: float | str | None = None):
        self.op, self.args, self.value = op, args, value
        self._hash = hash((op, args, value if not isinstance(value, float) or value == value else "nan"))

    # ---- structure -----------------------------------------------------------------------------------------
    def _key(self) -> tuple:
        return (self.op, self.args, self.value)

    def __eq__(self, other: object) -> bool:  # structural; the comparison operators are not part of the language
        if not isinstance(other, Expr):
            return NotImplemented
        if self is other:
            return True
        if self.op == "const" and other.op == "const":
            return _same_float(self.value, other.value)
        return self._hash == other._hash and self._key() == other._key()

    def __hash__(self) -> int:
        return self._hash

    def __bool__(self) -> bool:
        raise TypeError("a kernel formula cannot branch on c (no if/and/or on it): use clamp, minimum, maximum, abs or sign")

    def __repr__(self) -> str:
        if self.op == "c":
            return "c"
        if self.op == "const":
            return repr(self.value)
        return f"{self.op}({', '.join(map(repr, self.args))})"

    @property
    def is_const(self) -> bool:
        return self.op == "const" and isinstance(self.value, float)

    # ---- the operators and methods a formula may use ------------------------------------------------------------
    def __neg__(self) -> Expr:
        return _apply("neg", self)

    def __abs__(self) -> Expr:
        return _apply("abs", self)

    def __add__(self, other: Any) -> Expr:
        return _apply("add", self, other)

    def __radd__(self, other: Any) -> Expr:
        return _apply("add", other, self)

    def __sub__(self, other: Any) -> Expr:
        return _apply("sub", self, other)

    def __rsub__(self, other: Any) -> Expr:
        return _apply("sub", other, self)

    def __mul__(self, other: Any) -> Expr:
        return _apply("mul", self, other)

    def __rmul__(self, other: Any) -> Expr:
        return _apply("mul", other, self)

    def __truediv__(self, other: Any) -> Expr:
        return _apply("div", self, other)

    def __rtruediv__(self, other: Any) -> Expr:
        return _apply("div", other, self)

    def __pow__(self, other: Any) -> Expr:
        return self.pow(other)

    def abs(self) -> Expr:
        return _apply("abs", self)

    def sign(self) -> Expr:
        return _apply("sign", self)

    def sqrt(self) -> Expr:
        return _apply("sqrt", self)

    def exp(self) -> Expr:
        return _apply("exp", self)

    def expm1(self) -> Expr:
        return _apply("expm1", self)

    def log(self) -> Expr:
        return _apply("log", self)

    def log1p(self) -> Expr:
        return _apply("log1p", self)

    def tanh(self) -> Expr:
        return _apply("tanh", self)

    def square(self) -> Expr:
        return _apply("mul", self, self)

    def pow(self, exponent: Any) -> Expr:
        """``self ** exponent``; a constant exponent of 0, 1/2, 1 or 2 is computed as torch computes it (1, sqrt,
        the value itself, a product), so that those cases stay exact on every path."""
        e = _as_expr(exponent)
        if e.is_const:
            if e.value == 0.0:
                return _const(1.0)
            if e.value == 0.5:
                return self.sqrt()
            if e.value == 1.0:
                return self
            if e.value == 2.0:
                return self.square()
        return _apply("pow", self, e)

    def hypot(self, other: Any) -> Expr:
        return _apply("hypot", self, other)

    def minimum(self, other: Any) -> Expr:
        return _apply("minimum", self, other)

    def maximum(self, other: Any) -> Expr:
        return _apply("maximum", self, other)

    def clamp_min(self, low: Any) -> Expr:
        return self.maximum(low)

    def clamp_max(self, high: Any) -> Expr:
        return self.minimum(high)

    def clamp(self, min: Any = None, max: Any = None) -> Expr:
        """``minimum(maximum(self, min), max)``, propagating NaN, as ``torch.clamp``."""
        out = self if min is None else self.maximum(min)
        return out if max is None else out.minimum(max)

    def sum(self) -> Expr:
        return _apply("sum", self)

    def amax(self) -> Expr:
        return _apply("amax", self)

    def count_nonzero(self) -> Expr:
        return _apply("count_nonzero", self)

    def argmax_onehot(self) -> Expr:
        return _apply("argmax_onehot", self)


def _same_float(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (a == b and math.copysign(1.0, a) == math.copysign(1.0, b)) or (a != a and b != b)
    return a == b


def _const(value: float | str) -> Expr:
    return Expr("const", value=value)


#: The smallest positive normal number of the dtype a formula runs in (``torch.finfo(dtype).tiny``).
TINY = _const("tiny")
C = Expr("c")


def _as_expr(x: Any) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"a kernel formula combines c with numbers, got {type(x).__name__} {x!r}")
    return _const(float(x))


def _apply(name: str, *operands: Any) -> Expr:
    """A node of operation ``name``, folded to a constant when every operand is a numeric constant."""
    args = tuple(_as_expr(x) for x in operands)
    op = OPS[name]
    if op.fold is not None and all(a.is_const for a in args):
        try:
            return _const(float(op.fold(*(a.value for a in args))))
        except (ValueError, OverflowError, ZeroDivisionError):
            return _const(math.nan)
    return Expr(name, args)


def trace(formula: Callable[[Expr], Any]) -> Expr:
    """The expression tree of ``formula(c)`` (a constant result is allowed: the direction is then that constant)."""
    return _as_expr(formula(C))


def _nodes(root: Expr) -> list[Expr]:
    """The distinct nodes of a tree in evaluation order (operands before their uses)."""
    order: list[Expr] = []
    seen: set[Expr] = set()
    stack: list[tuple[Expr, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if node in seen:
            continue
        if ready or not node.args:
            seen.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((a, False) for a in reversed(node.args) if a not in seen)
    return order


def is_elementwise(root: Expr) -> bool:
    """True when the formula has no reduction: each entry of the direction depends on the same entry of c alone."""
    return not any(OPS[n.op].reduction for n in _nodes(root) if n.op in OPS)


def operations(root: Expr) -> set[str]:
    """The names of the operations a formula uses."""
    return {n.op for n in _nodes(root) if n.op in OPS}


# ---------------------------------------------------------------------------------------------------------------
# evaluation on arrays: torch tensors, lists of tensors (foreach), jax arrays


def evaluate(root: Expr, c: Any, backend: Any) -> Any:
    """The formula's value at ``c``, with ``backend`` supplying the operations (see :class:`TorchOps`, :class:`JaxOps`)."""
    values: dict[Expr, Any] = {}
    for node in _nodes(root):
        if node.op == "c":
            values[node] = c
        elif node.op == "const":
            values[node] = backend.tiny(c) if node.value == "tiny" else node.value
        else:
            operands = [values[a] for a in node.args]
            if all(isinstance(v, float) for v in operands):  # constants only once TINY has its value
                values[node] = float(OPS[node.op].fold(*operands))
            else:
                values[node] = backend.apply(node.op, *operands)
    value = values[root]
    return backend.full_like(c, value) if isinstance(value, float) else value


class TorchOps:
    """The operations on torch tensors (one operand of a binary operation may be a Python float)."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def tiny(self, c: Any) -> float:
        return self.torch.finfo(c.dtype).tiny

    def full_like(self, c: Any, value: float) -> Any:
        return self.torch.full_like(c, value)

    def apply(self, name: str, a: Any, b: Any = None) -> Any:
        torch = self.torch
        tensor_a = isinstance(a, torch.Tensor)
        if name in ("add", "mul") and not tensor_a:
            a, b = b, a  # commutative: tensor first, so that torch keeps the tensor's dtype
            tensor_a = True
        if not tensor_a:  # a float op a tensor: float - x, float / x, pow(float, x), ...
            a = torch.tensor(a, dtype=b.dtype, device=b.device)
        if name in ("minimum", "maximum") and not isinstance(b, torch.Tensor):
            return torch.clamp_max(a, b) if name == "minimum" else torch.clamp_min(a, b)
        if name == "hypot" and not isinstance(b, torch.Tensor):
            return torch.hypot(a, torch.tensor(b, dtype=a.dtype, device=a.device))
        if name == "amax":
            return a.amax()
        if name == "count_nonzero":
            return torch.count_nonzero(a).to(a.dtype)
        if name == "argmax_onehot":
            flat = a.reshape(-1)
            index = flat.argmax().reshape(1)
            return torch.zeros_like(flat).scatter_(0, index, 1.0).reshape(a.shape)
        fn = getattr(torch, name)
        return fn(a) if OPS[name].arity == 1 else fn(a, b)


class JaxOps:
    """The operations on jax arrays."""

    def __init__(self) -> None:
        import jax.numpy as jnp

        self.jnp = jnp

    def tiny(self, c: Any) -> float:
        return float(self.jnp.finfo(c.dtype).tiny)

    def full_like(self, c: Any, value: float) -> Any:
        return self.jnp.full_like(c, value)

    def apply(self, name: str, a: Any, b: Any = None) -> Any:
        jnp = self.jnp
        if name == "neg":
            return -a
        if name in ("add", "sub", "mul", "div"):
            return {"add": jnp.add, "sub": jnp.subtract, "mul": jnp.multiply, "div": jnp.divide}[name](a, b)
        if name == "pow":
            return jnp.power(a, b)
        if name == "hypot":
            return jnp.hypot(a, jnp.asarray(b, dtype=jnp.result_type(a)))
        if name == "sum":
            return jnp.sum(a)
        if name == "amax":
            return jnp.max(a)
        if name == "count_nonzero":
            return jnp.count_nonzero(a).astype(a.dtype)
        if name == "argmax_onehot":
            flat = a.reshape(-1)
            return jnp.zeros_like(flat).at[jnp.argmax(flat)].set(1).reshape(a.shape)
        return getattr(jnp, name)(a) if OPS[name].arity == 1 else getattr(jnp, name)(a, b)


# ---------------------------------------------------------------------------------------------------------------
# the fused paths: a register program for the native interpreter, a Triton function


@dataclass(frozen=True)
class Program:
    """A formula as the native interpreter runs it: instructions ``(op, dst, a, b)`` over registers (register 0 is
    ``c``; operand ``-k-1`` is ``constants[k]``), the register that holds the result, and the registers used."""

    instructions: tuple[tuple[int, int, int, int], ...]
    constants: tuple[float, ...]
    result: int
    registers: int


def compile_program(root: Expr, op_ids: dict[str, int], max_registers: int, tiny: float) -> Program:
    """Compile an elementwise formula for the native interpreter.

    ``op_ids`` maps operation names to the library's numbers; ``tiny`` is the value of :data:`TINY` in the dtype it
    runs in. Registers are reused once their value is dead; the last register is kept for the interpreter's own
    use. Raises ValueError (naming the cause) when the formula cannot run there: a reduction, an operation the
    library lacks, a constant result, or more registers than it has.
    """
    if not is_elementwise(root):
        raise ValueError("the formula reduces over the whole tensor")
    missing = sorted(operations(root) - set(op_ids))
    if missing:
        raise ValueError(f"the native library has no operation {', '.join(missing)}")
    root = _with_tiny(root, tiny)
    if root.op == "const":
        raise ValueError("the formula is a constant")
    order = [n for n in _nodes(root) if n.op not in ("c", "const")]
    last_use: dict[Expr, int] = {}
    for k, node in enumerate(order):
        for a in node.args:
            last_use[a] = k
    constants: list[float] = []
    where: dict[Expr, int] = {C: 0}
    free: list[int] = []
    top = 1
    instructions = []
    for k, node in enumerate(order):
        operands = []
        for a in node.args:
            if a.op == "const":
                constants.append(float(a.value))
                operands.append(-len(constants))
            else:
                operands.append(where[a])
        if free:
            dst = free.pop()
        elif top > max_registers - 2:  # register 0 holds c, the last one is the interpreter's
            raise ValueError(f"the formula needs more than {max_registers - 2} temporaries")
        else:
            dst, top = top, top + 1
        for a in set(node.args):  # registers whose value dies here serve later instructions (never their own)
            if a.op not in ("c", "const") and last_use[a] == k:
                free.append(where[a])
        where[node] = dst
        instructions.append((op_ids[node.op], dst, operands[0], operands[1] if len(operands) > 1 else 0))
    return Program(tuple(instructions), tuple(constants), where[root], top)


def _with_tiny(root: Expr, tiny: float) -> Expr:
    """The formula with :data:`TINY` replaced by its value (and what that makes constant folded)."""
    rebuilt: dict[Expr, Expr] = {}
    for node in _nodes(root):
        if node.op == "const" and node.value == "tiny":
            rebuilt[node] = _const(tiny)
        elif node.args:
            rebuilt[node] = _apply(node.op, *(rebuilt[a] for a in node.args))
        else:
            rebuilt[node] = node
    return rebuilt[root]


def triton_source(root: Expr, name: str) -> str:
    """The source of a ``@triton.jit`` function ``name(c, T: tl.constexpr)`` computing an elementwise formula
    (``T``: the opmath dtype). Helper functions it calls (``_div``, ``_sqrt``, ``_minimum``, ``_maximum``) and
    ``libdevice`` come from the module that executes the source."""
    if not is_elementwise(root):
        raise ValueError("the formula reduces over the whole tensor")
    lines = [f"def {name}(c, T: tl.constexpr):"]
    names: dict[Expr, str] = {C: "c"}
    for k, node in enumerate(_nodes(root)):
        if node.op == "c":
            continue
        if node.op == "const":
            value = "tiny" if node.value == "tiny" else repr(float(node.value))
            names[node] = f"v{k}"
            if value == "tiny":
                lines.append(f"    v{k} = tl.full(c.shape, _tiny(T), T)")
            else:
                lines.append(f"    v{k} = tl.full(c.shape, {value}, T)")
            continue
        template = OPS[node.op].triton
        if template is None:
            raise ValueError(f"operation {node.op} has no Triton version")
        operands = dict(zip("ab", (names[a] for a in node.args)))
        lines.append(f"    v{k} = {template.format(T='T', **operands)}")
        names[node] = f"v{k}"
    lines.append(f"    return {names[root]}")
    return "\n".join(lines) + "\n"
