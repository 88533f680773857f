r"""Lion-K for JAX: optax gradient transformations sharing :mod:`lionk.kernels`' specs and maths.

For each leaf with gradient :math:`g`, momentum :math:`m` (``mu``), learning rate :math:`\eta_t` and
weight decay :math:`\lambda`, :func:`lion_k` applies the same update as :class:`lionk.Lion`:

.. math::
    c &= \beta_1 m + (1-\beta_1)\, g \\
    x &\leftarrow x\,(1 - \eta_t\lambda) - \eta_t\, \nabla K(c) \\
    m &\leftarrow \beta_2 m + (1-\beta_2)\, g

It is ``optax.chain(scale_by_lion_k(...), optax.add_decayed_weights(weight_decay, mask),
optax.scale_by_learning_rate(learning_rate))``, the construction of ``optax.lion``, so with
``kernel="sign"`` it is ``optax.lion`` (whose default ``weight_decay`` is 1e-3; here it is 0.0, as in
:class:`lionk.Lion`). Kernels are named by the spec strings of :mod:`lionk.kernels` (``"sign"``,
``"lp(p=1.5)"``, ``"huber(a=0.5)"``, ...), parsed by :func:`lionk.kernels.get_kernel`; each supported
kernel class maps to a jax function of :math:`\nabla K` in one table. The tensor-scope kernels
(``lp``, ``l2``, ``linf``) take their norm over each leaf of the pytree, as :class:`lionk.Lion` takes it
over each parameter tensor. ``nuclear`` is not supported here.

Needs ``pip install 'lionk[jax]'`` (jax and optax). Everything is jit-compatible.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError as err:
    raise ImportError(f"lionk.optax needs jax and optax ({err}); install them with: pip install 'lionk[jax]'") from err

from .kernels import Huber, Kernel, LInf, LpNorm, Power, Quadratic, Relativistic, Sign, Tanh, get_kernel

__all__ = ["ScaleByLionKState", "jax_direction", "lion_k", "scale_by_lion_k"]

Direction = Callable[[jax.Array], jax.Array]


def _lp_unit(k: LpNorm) -> Direction:
    """sign(c)|c|^(p-1) / ||c||_p^(p-1), computed on c / max|c| (degree-0 homogeneous) to avoid over/underflow."""

    def direction(c: jax.Array) -> jax.Array:
        tiny = jnp.finfo(c.dtype).tiny
        a = jnp.abs(c)
        r = a / jnp.maximum(jnp.max(a), tiny)
        norm_pm1 = jnp.sum(r**k.p) ** ((k.p - 1.0) / k.p)
        return jnp.sign(c) * r ** (k.p - 1.0) / jnp.maximum(norm_pm1, tiny)

    return direction


def _linf_unit(_: LInf) -> Direction:
    """sign(c_i) e_i at i = argmax |c_i| (the first on ties, as in torch)."""

    def direction(c: jax.Array) -> jax.Array:
        flat = c.reshape(-1)
        i = jnp.argmax(jnp.abs(flat))
        return jnp.zeros_like(flat).at[i].set(jnp.sign(flat[i])).reshape(c.shape)

    return direction


def _tensor_scope(unit: Callable[[Any], Direction]) -> Callable[[Any], Direction]:
    """Wrap a tensor-scope direction: 0 for an empty leaf; with ``match_sign_rms`` rescaled by
    sqrt(count_nonzero(c)) / ||u||_2, the RMS of sign(c) (see :class:`lionk.kernels.LpNorm`)."""

    def build(k: Any) -> Direction:
        inner = unit(k)

        def direction(c: jax.Array) -> jax.Array:
            if c.size == 0:
                return jnp.zeros_like(c)
            u = inner(c)
            if k.match_sign_rms:
                tiny = jnp.finfo(u.dtype).tiny
                u = u * jnp.sqrt(jnp.count_nonzero(c).astype(u.dtype)) / jnp.maximum(jnp.linalg.norm(u.reshape(-1)), tiny)
            return u

        return direction

    return build


#: Kernel class -> (kernel object -> jax function c |-> grad K(c)). The maths is that of each class's
#: ``direction`` in :mod:`lionk.kernels`; tests check every entry against it.
_DIRECTIONS: dict[type[Kernel], Callable[[Any], Direction]] = {
    Sign: lambda k: jnp.sign,
    Power: lambda k: lambda c: jnp.sign(c) * jnp.abs(c) ** (k.p - 1.0),
    Quadratic: lambda k: lambda c: c,
    Huber: lambda k: lambda c: jnp.clip(c / k.a, -1.0, 1.0),
    Relativistic: lambda k: lambda c: c / jnp.hypot(c, jnp.asarray(k.a, c.dtype)),
    Tanh: lambda k: lambda c: jnp.tanh(c / k.a),
    LpNorm: _tensor_scope(_lp_unit),
    LInf: _tensor_scope(_linf_unit),
}


def jax_direction(kernel: str | Kernel) -> Direction:
    """The jax function c -> grad K(c) of a kernel spec (e.g. ``"lp(p=1.5)"``) or :class:`lionk.kernels.Kernel`.

    Raises ValueError for an invalid spec or a kernel without a jax version here (e.g. ``nuclear``,
    user-registered kernels).
    """
    k = get_kernel(kernel)
    build = _DIRECTIONS.get(type(k))
    if build is None:
        supported = sorted(cls.name for cls in _DIRECTIONS)
        raise ValueError(f"kernel {k.spec!r} is not supported by lionk.optax; supported: {supported} (and the alias 'l2')")
    return build(k)


class ScaleByLionKState(NamedTuple):
    """State of :func:`scale_by_lion_k`: the step count and the momentum ``mu`` (a pytree like the params)."""

    count: jax.Array
    mu: Any


def scale_by_lion_k(b1: float = 0.9, b2: float = 0.99, kernel: str | Kernel = "sign", mu_dtype: Any = None) -> optax.GradientTransformation:
    r"""Lion-K's direction: returns :math:`\nabla K(\beta_1 m + (1-\beta_1) g)` per leaf and updates
    :math:`m \leftarrow \beta_2 m + (1-\beta_2) g` (stored in ``mu_dtype`` when given, else the params' dtype).

    Like ``optax.scale_by_lion``, the result is a direction to be scaled by ``-learning_rate``
    (``optax.scale_by_learning_rate``). ``kernel`` is validated here: ValueError if unsupported.
    """
    for i, beta in enumerate((b1, b2)):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta!r} (must be in [0, 1))")
    direction = jax_direction(kernel)
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_fn(params: Any) -> ScaleByLionKState:
        mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype), params)
        return ScaleByLionKState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates: Any, state: ScaleByLionKState, params: Any = None) -> tuple[Any, ScaleByLionKState]:
        del params
        new_updates = jax.tree.map(lambda g, m: direction(b1 * m + (1.0 - b1) * g).astype(g.dtype), updates, state.mu)
        mu = jax.tree.map(lambda g, m: (b2 * m + (1.0 - b2) * g).astype(m.dtype), updates, state.mu)
        return new_updates, ScaleByLionKState(count=optax.safe_int32_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


def _finite_nonnegative(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def lion_k(
    learning_rate: float | Callable[[jax.Array], jax.Array],
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
    kernel: str | Kernel = "sign",
    mask: Any = None,
    mu_dtype: Any = None,
) -> optax.GradientTransformation:
    r"""Lion-K as an optax optimizer: updates :math:`u = -\eta_t(\nabla K(c) + \lambda x)`, so that
    ``optax.apply_updates`` gives :math:`x(1-\eta_t\lambda) - \eta_t \nabla K(c)`.

    Args:
        learning_rate: :math:`\eta_t`, a float or an optax schedule (a function of the step count).
        b1, b2: :math:`\beta_1` (interpolation for the direction) and :math:`\beta_2` (momentum decay).
        weight_decay: decoupled weight decay :math:`\lambda`, per-step strength :math:`\eta_t\lambda`.
        kernel: a spec of :mod:`lionk.kernels` (``"sign"``, ``"power(p=1.5)"``, ``"lp(p=2.0)"``, ``"linf"``, ...).
        mask: which leaves get weight decay, as for ``optax.add_decayed_weights``: a pytree of booleans
            (or a prefix of one), or a function of the params returning one.
        mu_dtype: dtype of the momentum (e.g. ``jnp.bfloat16``); ``None`` keeps the params' dtype.

    Raises:
        ValueError: an invalid or unsupported kernel, a beta outside [0, 1), a negative lr or weight decay.
    """
    if not callable(learning_rate) and not _finite_nonnegative(learning_rate):
        raise ValueError(f"Invalid learning rate: {learning_rate!r} (must be a finite number >= 0 or an optax schedule)")
    if not _finite_nonnegative(weight_decay):
        raise ValueError(f"Invalid weight_decay: {weight_decay!r} (must be a finite number >= 0)")
    return optax.chain(
        scale_by_lion_k(b1=b1, b2=b2, kernel=kernel, mu_dtype=mu_dtype),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
