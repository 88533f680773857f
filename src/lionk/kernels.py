r"""The K of Lion-K: one small class per convex function K.

Lion-K (Chen, Liu, Liang, Liu, ICLR 2024) replaces the sign in Lion by the (sub)gradient of a
convex function K:

.. math::
    c_t = \beta_1 m_t + (1-\beta_1) g_t, \qquad
    x_{t+1} = x_t - \eta\,(\nabla K(c_t) + \lambda x_t), \qquad
    m_{t+1} = \beta_2 m_t + (1-\beta_2) g_t

and with a decaying learning rate it minimises :math:`F(x) = f(x) + \frac{1}{\lambda} K^*(\lambda x)`,
where :math:`K^*` is the convex conjugate of K. Every kernel here gives

* ``formula(c)``: :math:`\nabla K(c)` written once in the language of :mod:`lionk.expr` (operators and tensor
  methods on ``c``); every execution path runs it: the reference and foreach paths in torch, the fused CPU
  path in the native library's interpreter, the Triton path as generated code, ``lionk.optax`` in jax,
* ``direction(c)``: :math:`\nabla K(c)` on a torch tensor (the formula evaluated in torch; a kernel without a
  formula overrides this instead and runs on the torch paths only; ``sign(0) = 0``),
* ``value(x)``: :math:`K(x)` as a 0-d tensor,
* ``conjugate(y)``: :math:`K^*(y) = \sup_x \langle x, y\rangle - K(x)` as a 0-d tensor (``inf``
  outside its domain; the domain boundary is tested with a relative tolerance of sqrt(machine eps)
  so that directions computed in floating point count as inside),
* ``elementwise``: whether K is a sum over coordinates (its formula has no reduction: the fused paths can run
  it in one pass) or is taken over the whole tensor (norms, nuclear norm).

A new elementwise kernel is one class; for example softsign, :math:`\nabla K(c) = c / (1 + |c|)`::

    @register_kernel
    class Softsign(Kernel):
        name = "softsign"

        def formula(self, c):
            return c / (1 + abs(c))

runs on every path, the fused CPU path included (``Lion(..., kernel="softsign")``).

Kernels are named by a *spec* string, ``"name"`` or ``"name(key=value, ...)"``, which is what an
optimizer's param group stores (so state dicts stay plain data). :func:`get_kernel` turns a spec or a
:class:`Kernel` into a kernel object; :func:`register_kernel` adds a user's own class to the registry.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any, ClassVar

import torch
from torch import Tensor

from .expr import TINY, Expr, TorchOps, evaluate, is_elementwise, trace

__all__ = [
    "Kernel",
    "Sign",
    "LpNorm",
    "Power",
    "Quadratic",
    "Huber",
    "Relativistic",
    "Tanh",
    "LInf",
    "Nuclear",
    "get_kernel",
    "kernel_spec",
    "register_kernel",
    "kernel_names",
]


def _domain_tolerance(t: Tensor) -> float:
    """Relative slack for 'is y inside the unit ball' tests: sqrt(eps) of the tensor's dtype."""
    dtype = t.dtype if t.is_floating_point() else torch.float32
    return math.sqrt(torch.finfo(dtype).eps)


def _indicator(norm: Tensor, like: Tensor) -> Tensor:
    """0 where ``norm <= 1`` (within rounding), ``inf`` elsewhere: the conjugate of a norm."""
    inside = norm <= 1.0 + _domain_tolerance(like)
    return torch.where(inside, torch.zeros_like(norm), torch.full_like(norm, math.inf))


def _check_real_float(x: Tensor, what: str) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{what} needs a real floating-point tensor, got dtype {x.dtype}")


class Kernel:
    """Base class of a Lion-K kernel: a convex function K and its gradient.

    Subclasses set ``name`` (the registry name) and define :meth:`formula` (or, for a direction torch alone can
    compute, override :meth:`direction` and set ``elementwise``), :meth:`value` and :meth:`conjugate`. Their
    constructor arguments are their parameters, kept as attributes of the same name, so that :attr:`spec` can
    name the kernel as plain text.
    """

    name: ClassVar[str] = ""
    #: Constructor arguments in order; their current values make up the spec.
    param_names: ClassVar[tuple[str, ...]] = ()

    def formula(self, c: Expr) -> Expr:
        """grad K(c) in the language of :mod:`lionk.expr`: operators and tensor methods on ``c``."""
        raise NotImplementedError

    @property
    def expression(self) -> Expr | None:
        """The traced :meth:`formula` (None for a kernel that overrides :meth:`direction` instead)."""
        if "_expression" not in self.__dict__:
            defined = type(self).formula is not Kernel.formula
            self.__dict__["_expression"] = trace(self.formula) if defined else None
        return self.__dict__["_expression"]

    @property
    def elementwise(self) -> bool:
        """True when K is a sum over coordinates: the formula has no reduction over the tensor."""
        return self.expression is not None and is_elementwise(self.expression)

    def direction(self, c: Tensor) -> Tensor:
        """grad K(c): the update direction for the interpolated momentum ``c`` (a new tensor)."""
        expression = self.expression
        if expression is None:
            raise NotImplementedError(f"{type(self).__name__} defines neither formula() nor direction()")
        if c.numel() == 0:
            return torch.zeros_like(c)
        u = evaluate(expression, c, _TORCH)
        return u.clone() if u is c else u

    def value(self, x: Tensor) -> Tensor:
        """K(x) as a 0-d tensor."""
        raise NotImplementedError

    def conjugate(self, y: Tensor) -> Tensor:
        """K*(y) = sup_x <x, y> - K(x) as a 0-d tensor, ``inf`` outside the domain of K*."""
        raise NotImplementedError

    def check_param(self, param: Tensor) -> None:
        """Raise ValueError when this kernel cannot act on ``param`` (called when a group is added)."""

    @property
    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_names}

    @property
    def spec(self) -> str:
        """Plain-text name of this kernel, e.g. ``"huber(a=0.5)"``; ``get_kernel(spec)`` rebuilds it."""
        if not self.param_names:
            return self.name
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.name}({args})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.spec}>"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params == other.params  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), tuple(self.params.items())))

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_expression"}  # traced again where it is loaded


_TORCH = TorchOps()


def _positive(name: str, kernel: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"Invalid {kernel} parameter {name}: {value!r} (must be a finite number > 0)")
    return float(value)


def _width(name: str, kernel: str, value: float) -> float:
    """A kernel width a, divided into c in float32: at least float32's smallest normal number, so that c/a is
    defined (a width that rounds to 0 in float32 would make 0/0 = NaN of a zero gradient)."""
    value = _positive(name, kernel, value)
    if value < _FLOAT32_TINY:
        raise ValueError(f"Invalid {kernel} parameter {name}: {value!r} (must be >= {_FLOAT32_TINY:.7g}, float32's smallest normal number)")
    return value


_FLOAT32_TINY = torch.finfo(torch.float32).tiny


def _in_range(name: str, kernel: str, value: float, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ValueError(f"Invalid {kernel} parameter {name}: {value!r} (must be in [{lo:g}, {hi:g}])")
    return float(value)


# --------------------------------------------------------------------------------------------
# Elementwise kernels: K(x) = sum_i k(x_i)
# --------------------------------------------------------------------------------------------


class Sign(Kernel):
    r"""K(x) = ||x||_1, grad K(c) = sign(c): Lion itself. Solves min f(x) s.t. ||x||_inf <= 1/wd."""

    name = "sign"

    def formula(self, c: Expr) -> Expr:
        return c.sign()

    def value(self, x: Tensor) -> Tensor:
        return x.abs().sum()

    def conjugate(self, y: Tensor) -> Tensor:
        return _indicator(y.abs().amax() if y.numel() else y.new_zeros(()), y)


class Power(Kernel):
    r"""Separable power: K(x) = sum |x_i|^p / p, grad K(c) = sign(c) |c|^(p-1), 1 <= p <= 2.

    K*(y) = sum |y_i|^q / q with 1/p + 1/q = 1 (for p = 1 the indicator of the unit l_inf box), so
    Lion-K solves min f(x) + wd^(q-1)/q ||x||_q^q. p = 1 is Lion, p = 2 is momentum SGD.
    """

    name = "power"
    param_names = ("p",)

    def __init__(self, p: float = 1.5):
        self.p = _in_range("p", "Power", p, 1.0, 2.0)

    def formula(self, c: Expr) -> Expr:
        return c.sign() * c.abs().pow(self.p - 1.0)

    def value(self, x: Tensor) -> Tensor:
        return x.abs().pow(self.p).sum() / self.p

    def conjugate(self, y: Tensor) -> Tensor:
        if self.p == 1.0:
            return Sign().conjugate(y)
        q = self.p / (self.p - 1.0)
        return y.abs().pow(q).sum() / q


class Quadratic(Kernel):
    r"""K(x) = ||x||^2 / 2, grad K(c) = c: Polyak/Nesterov momentum with L2 decay.

    K* = K, so Lion-K solves min f(x) + (wd/2) ||x||^2.
    """

    name = "quadratic"

    def formula(self, c: Expr) -> Expr:
        return c

    def value(self, x: Tensor) -> Tensor:
        return x.square().sum() / 2

    def conjugate(self, y: Tensor) -> Tensor:
        return y.square().sum() / 2


class Huber(Kernel):
    r"""Huber function of width a: k(x) = x^2/(2a) for |x| <= a, |x| - a/2 beyond; grad = clip(c/a, -1, 1).

    K*(y) = a/2 ||y||^2 on the unit l_inf box: Lion-K solves min f(x) + (a wd / 2)||x||^2 s.t.
    ||x||_inf <= 1/wd (a clipped sign, Lion as a -> 0).
    """

    name = "huber"
    param_names = ("a",)

    def __init__(self, a: float = 1.0):
        self.a = _width("a", "Huber", a)

    def formula(self, c: Expr) -> Expr:
        return (c / self.a).clamp(-1.0, 1.0)

    def value(self, x: Tensor) -> Tensor:
        ax = x.abs()
        return torch.where(ax <= self.a, ax.square() / (2 * self.a), ax - self.a / 2).sum()

    def conjugate(self, y: Tensor) -> Tensor:
        return Sign().conjugate(y) + self.a / 2 * y.square().sum()


class Relativistic(Kernel):
    r"""Relativistic kinetic energy: k(x) = sqrt(x^2 + a^2), grad = c / sqrt(c^2 + a^2).

    K*(y) = -a sum sqrt(1 - y_i^2) on the unit box: Lion-K solves
    min f(x) - (a/wd) sum sqrt(1 - wd^2 x_i^2) s.t. ||x||_inf <= 1/wd (a barrier inside Lion's box).
    """

    name = "relativistic"
    param_names = ("a",)

    def __init__(self, a: float = 1.0):
        self.a = _width("a", "Relativistic", a)

    def formula(self, c: Expr) -> Expr:
        return c / c.hypot(self.a)  # hypot does not overflow: a huge |c| still gives +-1, not c/inf = 0

    def value(self, x: Tensor) -> Tensor:
        return torch.hypot(x, x.new_tensor(self.a)).sum()

    def conjugate(self, y: Tensor) -> Tensor:
        inside = (1.0 - y.square()).clamp_min(0.0)
        return Sign().conjugate(y) - self.a * inside.sqrt().sum()


class Tanh(Kernel):
    r"""Smooth sign: k(x) = a log cosh(x/a), grad = tanh(c/a) (optax's "smooth" Lion as a -> 0).

    K*(y) = (a/2) sum (1+y) log(1+y) + (1-y) log(1-y) on the unit box: Lion's box plus a
    binary-entropy barrier.
    """

    name = "tanh"
    param_names = ("a",)

    def __init__(self, a: float = 1.0):
        self.a = _width("a", "Tanh", a)

    def formula(self, c: Expr) -> Expr:
        return (c / self.a).tanh()

    def value(self, x: Tensor) -> Tensor:
        z = (x / self.a).abs()
        # log cosh z = z + log1p(exp(-2z)) - log 2, without overflow
        return (self.a * (z + torch.log1p(torch.exp(-2 * z)) - math.log(2.0))).sum()

    def conjugate(self, y: Tensor) -> Tensor:
        yc = y.clamp(-1.0, 1.0)
        entropy = torch.xlogy(1 + yc, 1 + yc) + torch.xlogy(1 - yc, 1 - yc)
        return Sign().conjugate(y) + self.a / 2 * entropy.sum()


# --------------------------------------------------------------------------------------------
# Tensor-scope kernels: K is a norm of the whole tensor
# --------------------------------------------------------------------------------------------


def _to_sign_rms(u: Any, c: Any) -> Any:
    """u * sqrt(count_nonzero(c)) / max(||u||_2, tiny): ``u`` rescaled to the RMS of sign(c) (a formula's
    :class:`lionk.expr.Expr` or, for kernels computed in torch, a tensor)."""
    if isinstance(u, Expr):
        return u * c.count_nonzero().sqrt() / u.square().sum().sqrt().clamp_min(TINY)
    tiny = torch.finfo(u.dtype).tiny
    return u * torch.count_nonzero(c).to(u.dtype).sqrt() / torch.linalg.vector_norm(u).clamp_min(tiny)


class _TensorKernel(Kernel):
    """A kernel taken over the whole tensor. With ``match_sign_rms=True`` the direction is rescaled to
    the RMS of sign(c), i.e. multiplied by sqrt(count_nonzero(c)) / ||grad K(c)||_2, so that a learning
    rate tuned for Lion transfers. The rescaled update is the gradient of s*K with a per-step s, so the
    constraint radius of the theory becomes s/wd (for LpNorm(2): sqrt(count_nonzero(c))/wd).
    Subclasses write :meth:`unit_formula`, the direction before that rescaling."""

    def __init__(self, match_sign_rms: bool = False):
        if not isinstance(match_sign_rms, bool):
            raise ValueError(f"Invalid {type(self).__name__} parameter match_sign_rms: {match_sign_rms!r} (must be True or False)")
        self.match_sign_rms = match_sign_rms

    def unit_formula(self, c: Expr) -> Expr:
        raise NotImplementedError

    def formula(self, c: Expr) -> Expr:
        u = self.unit_formula(c)
        return _to_sign_rms(u, c) if self.match_sign_rms else u


class LpNorm(_TensorKernel):
    r"""K(x) = ||x||_p over the tensor, 1 <= p <= 2: grad K(c) = sign(c)|c|^(p-1) / ||c||_p^(p-1).

    K* is the indicator of the dual ball ||y||_q <= 1 (1/p + 1/q = 1), so Lion-K solves
    min f(x) s.t. ||x||_q <= 1/wd. p = 1 is Lion; p = 2 is normalised momentum c / ||c||_2 (ball of
    radius 1/wd). grad K(0) = 0.
    """

    name = "lp"
    param_names = ("p", "match_sign_rms")

    def __init__(self, p: float = 2.0, match_sign_rms: bool = False):
        super().__init__(match_sign_rms)
        self.p = _in_range("p", "LpNorm", p, 1.0, 2.0)

    def unit_formula(self, c: Expr) -> Expr:
        a = c.abs()
        r = a / a.amax().clamp_min(TINY)  # degree-0 homogeneous: scaling c by max|c| avoids over/underflow
        norm_pm1 = r.pow(self.p).sum().pow((self.p - 1.0) / self.p)
        return c.sign() * r.pow(self.p - 1.0) / norm_pm1.clamp_min(TINY)

    def value(self, x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, ord=self.p)

    def conjugate(self, y: Tensor) -> Tensor:
        q = math.inf if self.p == 1.0 else self.p / (self.p - 1.0)
        return _indicator(torch.linalg.vector_norm(y, ord=q), y)


class LInf(_TensorKernel):
    r"""K(x) = ||x||_inf over the tensor: grad K(c) = sign(c_i) e_i at i = argmax |c_i| (the first on ties).

    K* is the indicator of the unit l_1 ball, so Lion-K solves min f(x) s.t. ||x||_1 <= 1/wd: a
    greedy coordinate method that moves one entry per tensor per step.
    """

    name = "linf"
    param_names = ("match_sign_rms",)

    def unit_formula(self, c: Expr) -> Expr:
        return c.sign() * c.abs().argmax_onehot()

    def value(self, x: Tensor) -> Tensor:
        return x.abs().amax() if x.numel() else x.new_zeros(())

    def conjugate(self, y: Tensor) -> Tensor:
        return _indicator(y.abs().sum(), y)


# Keller Jordan's quintic Newton-Schulz coefficients (Muon): fast, singular values end in ~[0.7, 1.2].
_MUON_COEFFS = (3.4445, -4.7750, 2.0315)


class Nuclear(_TensorKernel):
    r"""K(X) = ||X||_* (nuclear norm) of a matrix: grad K(C) = U V^T from C = U S V^T (polar factor).

    K* is the indicator of the spectral-norm ball, so Lion-K solves min f(X) s.t. ||X||_op <= 1/wd:
    orthogonalised momentum, i.e. Muon is a Lion-K. Tensors with more than 2 dims are treated as the
    matrix ``C.reshape(C.shape[0], -1)`` (as Muon does for convolutions); 0-d and 1-d tensors are
    rejected with a ValueError when the param group is created (give them another kernel).

    ``method``:
      * ``"svd"``: exact U V^T from ``torch.linalg.svd`` (singular values below
        max(m, n) * eps * s_max count as zero);
      * ``"newton_schulz"``: the cubic Newton-Schulz iteration X <- 1.5 X - 0.5 X X^T X from
        X_0 = C / ||C||_F, which converges quadratically to U V^T; ``steps`` (default 20) bounds the
        singular values it can bring to 1 to those above about 1.5^-steps * ||C||_F;
      * ``"muon"``: Muon's quintic iteration (default 5 steps), cheaper but approximate: the singular
        values of the result lie in about [0.7, 1.2] instead of at 1.
    """

    name = "nuclear"
    elementwise = False
    formula = Kernel.formula  # computed in torch: direction() below
    param_names = ("method", "steps", "match_sign_rms")
    _default_steps: ClassVar[dict[str, int]] = {"svd": 0, "newton_schulz": 20, "muon": 5}

    def __init__(self, method: str = "newton_schulz", steps: int | None = None, match_sign_rms: bool = False):
        super().__init__(match_sign_rms)
        if method not in self._default_steps:
            raise ValueError(f"Invalid Nuclear parameter method: {method!r} (must be one of {sorted(self._default_steps)})")
        self.method = method
        if steps is None:
            steps = self._default_steps[method]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0 or (method != "svd" and steps < 1):
            raise ValueError(f"Invalid Nuclear parameter steps: {steps!r} (must be an integer >= 1)")
        self.steps = 0 if method == "svd" else steps

    def check_param(self, param: Tensor) -> None:
        if param.dim() < 2:
            raise ValueError(
                f"kernel 'nuclear' needs parameters with at least 2 dims, got shape {tuple(param.shape)}; "
                "put 0-d and 1-d parameters (biases, norms) in a param group with another kernel"
            )
        if param.is_complex():
            raise ValueError("kernel 'nuclear' does not support complex parameters")

    @staticmethod
    def _as_matrix(x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"kernel 'nuclear' needs a tensor with at least 2 dims, got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], -1)

    def direction(self, c: Tensor) -> Tensor:
        """U V^T of c (computed in torch: the nuclear norm has no formula in :mod:`lionk.expr`)."""
        if c.numel() == 0:
            return torch.zeros_like(c)
        u = self._unit_direction(c)
        return _to_sign_rms(u, c) if self.match_sign_rms else u

    def _unit_direction(self, c: Tensor) -> Tensor:
        mat = self._as_matrix(c)
        if self.method == "svd":
            if not bool(torch.isfinite(mat).all()):  # no polar factor: NaN, as the iterations give (SVD would raise)
                return torch.full_like(c, math.nan)
            u, s, vh = torch.linalg.svd(mat, full_matrices=False)
            cutoff = s.amax() * max(mat.shape) * torch.finfo(mat.dtype).eps
            return ((u * (s > cutoff).to(u.dtype)) @ vh).reshape(c.shape)
        transpose = mat.shape[0] > mat.shape[1]
        x = mat.mT if transpose else mat  # iterate on the wide orientation: X X^T is the small Gram matrix
        x = x / torch.linalg.matrix_norm(x).clamp_min(torch.finfo(x.dtype).tiny)
        for _ in range(self.steps):
            gram = x @ x.mT
            if self.method == "muon":
                a, b, cc = _MUON_COEFFS
                x = a * x + (b * gram + cc * gram @ gram) @ x
            else:
                x = 1.5 * x - 0.5 * gram @ x
        if transpose:
            x = x.mT
        return x.reshape(c.shape)

    def value(self, x: Tensor) -> Tensor:
        return torch.linalg.matrix_norm(self._as_matrix(x), ord="nuc")

    def conjugate(self, y: Tensor) -> Tensor:
        return _indicator(torch.linalg.matrix_norm(self._as_matrix(y), ord=2), y)


# --------------------------------------------------------------------------------------------
# Registry and specs
# --------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Kernel]] = {}
_ALIASES: dict[str, str] = {"l2": "lp(p=2.0)"}
_RESOLVED: dict[str, Kernel] = {}
_SPEC_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.S)


def register_kernel(cls: type[Kernel]) -> type[Kernel]:
    """Add a Kernel subclass to the registry under ``cls.name`` (usable as a decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Kernel)) or not cls.name:
        raise ValueError(f"register_kernel needs a Kernel subclass with a non-empty name, got {cls!r}")
    _REGISTRY[cls.name] = cls
    return cls


for _cls in (Sign, LpNorm, Power, Quadratic, Huber, Relativistic, Tanh, LInf, Nuclear):
    register_kernel(_cls)


def kernel_names() -> list[str]:
    """Names accepted by ``kernel=`` (each may take arguments, e.g. ``"lp(p=1.5)"``)."""
    return sorted([*_REGISTRY, *_ALIASES])


def _parse_args(text: str, spec: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        call = ast.parse(f"f({text})", mode="eval").body
        assert isinstance(call, ast.Call)
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError, AssertionError):
        raise ValueError(f"Invalid kernel spec {spec!r}: arguments must be literals, e.g. 'lp(p=1.5)'") from None
    if None in kwargs:
        raise ValueError(f"Invalid kernel spec {spec!r}: '**' is not allowed")
    return args, kwargs


def _build(spec: str) -> Kernel:
    match = _SPEC_RE.match(spec)
    if match is None:
        raise ValueError(f"Invalid kernel spec {spec!r}: expected 'name' or 'name(key=value, ...)'; valid names: {kernel_names()}")
    name, text = match.group(1).lower(), match.group(2)
    if name in _ALIASES:
        if text:
            raise ValueError(f"Invalid kernel spec {spec!r}: alias {name!r} takes no arguments")
        return _build(_ALIASES[name])
    if name not in _REGISTRY:
        raise ValueError(f"Unknown kernel {name!r} in {spec!r}; valid names: {kernel_names()}")
    args, kwargs = _parse_args(text, spec) if text and text.strip() else ([], {})
    try:
        return _REGISTRY[name](*args, **kwargs)
    except TypeError as err:
        raise ValueError(f"Invalid kernel spec {spec!r}: {err}") from None


def get_kernel(kernel: str | Kernel) -> Kernel:
    """The Kernel for a spec string (``"sign"``, ``"lp(p=1.5)"``, ...) or a Kernel object (returned as is)."""
    if isinstance(kernel, Kernel):
        return kernel
    if not isinstance(kernel, str):
        raise ValueError(f"Invalid kernel: {kernel!r} (must be a name such as {kernel_names()} or a lionk.kernels.Kernel)")
    found = _RESOLVED.get(kernel)
    if found is None:
        found = _RESOLVED[kernel] = _build(kernel)
    return found


def kernel_spec(kernel: str | Kernel) -> str | Kernel:
    """The canonical form a param group stores: the spec string of a registered kernel, else the object.

    Raises ValueError for an unknown name or invalid parameters.
    """
    k = get_kernel(kernel)
    if _REGISTRY.get(k.name) is type(k):
        return k.spec
    return k
