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
``"lp(p=1.5)"``, ``"huber(a=0.5)"``, ...), parsed by :func:`lionk.kernels.get_kernel`; a kernel's direction is
its formula (:mod:`lionk.expr`) evaluated with ``jax.numpy``, so every kernel with a formula, a user's own
included, runs here unchanged. The tensor-scope kernels (``lp``, ``l2``, ``linf``) take their norm over each
leaf of the pytree, as :class:`lionk.Lion` takes it over each parameter tensor. ``nuclear`` (computed in torch)
is not supported here. Complex leaves are updated as pairs of reals, as :class:`lionk.Lion` updates complex
parameters. The update's lines are those of :mod:`lionk._engine.update` (``interpolate``, ``ema``).

Hyperparameters may be jax arrays or traced values (e.g. under ``optax.inject_hyperparams``): concrete values
are range-checked, traced ones are taken as they are.

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

from ._engine.update import ema, interpolate
from .expr import JaxOps, evaluate
from .kernels import Kernel, get_kernel

__all__ = ["ScaleByLionKState", "jax_direction", "lion_k", "scale_by_lion_k"]

Direction = Callable[[jax.Array], jax.Array]
_JAX = JaxOps()


def jax_direction(kernel: str | Kernel) -> Direction:
    """The jax function c -> grad K(c) of a kernel spec (e.g. ``"lp(p=1.5)"``) or :class:`lionk.kernels.Kernel`: its
    formula evaluated with ``jax.numpy`` (0 for an empty leaf).

    Raises ValueError for an invalid spec or a kernel without a formula (e.g. ``nuclear``).
    """
    k = get_kernel(kernel)
    expression = k.expression
    if expression is None:
        raise ValueError(f"kernel {k.spec!r} is not supported by lionk.optax: it is computed in torch (it has no formula in lionk.expr)")

    def direction(c: jax.Array) -> jax.Array:
        if c.size == 0:
            return jnp.zeros_like(c)
        if jnp.iscomplexobj(c):  # pairs of reals, as lionk.Lion treats complex parameters
            pairs = jnp.stack([c.real, c.imag], axis=-1)
            u = evaluate(expression, pairs, _JAX)
            return jax.lax.complex(u[..., 0], u[..., 1]).astype(c.dtype)
        return evaluate(expression, c, _JAX)

    return direction


def _concrete(value: Any) -> float | None:
    """The float value of a number or a concrete jax array; None for a traced value (checked where it is concrete)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    try:
        return float(value)  # a concrete 0-d array
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _check(name: str, value: Any, low: float, high: float | None, valid: str) -> None:
    if isinstance(value, bool) or not (isinstance(value, (int, float)) or hasattr(value, "dtype")):
        raise ValueError(f"Invalid {name}: {value!r} ({valid})")
    number = _concrete(value)
    if number is not None and not (math.isfinite(number) and low <= number and (high is None or number < high)):
        raise ValueError(f"Invalid {name}: {value!r} ({valid})")


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
        _check(f"beta parameter at index {i}", beta, 0.0, 1.0, "must be in [0, 1)")
    direction = jax_direction(kernel)
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_fn(params: Any) -> ScaleByLionKState:
        mu = jax.tree.map(lambda p: jnp.zeros_like(p, dtype=mu_dtype), params)
        return ScaleByLionKState(count=jnp.zeros([], jnp.int32), mu=mu)

    def update_fn(updates: Any, state: ScaleByLionKState, params: Any = None) -> tuple[Any, ScaleByLionKState]:
        del params
        new_updates = jax.tree.map(lambda g, m: direction(interpolate(m, g, b1)).astype(g.dtype), updates, state.mu)
        mu = jax.tree.map(lambda g, m: ema(m, g, b2).astype(m.dtype), updates, state.mu)
        return new_updates, ScaleByLionKState(count=optax.safe_int32_increment(state.count), mu=mu)

    return optax.GradientTransformation(init_fn, update_fn)


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
    if not callable(learning_rate):
        _check("learning rate", learning_rate, 0.0, None, "must be a finite number >= 0 or an optax schedule")
    _check("weight_decay", weight_decay, 0.0, None, "must be a finite number >= 0")
    return optax.chain(
        scale_by_lion_k(b1=b1, b2=b2, kernel=kernel, mu_dtype=mu_dtype),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )
