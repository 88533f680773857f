r"""Functional Lion-K: one step over lists of tensors, through the same engine as :class:`lionk.Lion`.

.. math::
    c = \beta_1 m + (1-\beta_1) g, \qquad
    p \leftarrow p\,(1 - \eta\lambda) - \eta\,\nabla K(c), \qquad
    m \leftarrow \beta_2 m + (1-\beta_2) g

with g negated when ``maximize``; the arithmetic runs in float32 for float16/bfloat16 tensors (float64
for float64) and the results are rounded to the storage dtype. See :mod:`lionk._engine.update` for
the exact semantics of non-finite gradients and of ``cautious``.
"""

from __future__ import annotations

from torch import Tensor

from ._engine import Slot, check_param, check_slot, fused_unavailable_reason, group_hyper, run
from .kernels import Kernel
from .precision import held_storage

__all__ = ["fused_unavailable_reason", "lion"]


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
    rounding_keys: list[int | None] | None = None,
    exp_avg_absmaxes: list[Tensor | None] | None = None,
    weight_decay_mode: str = "decoupled",
    initial_lr: float | None = None,
) -> None:
    """Apply one Lion-K step in place to ``params`` and their momenta ``exp_avgs``.

    Every argument means what it means for :class:`lionk.Lion` (paths: ``fused`` where it can run, ``foreach``,
    the reference loop; ``fused=True`` raises RuntimeError, before anything is written, for a tensor that cannot
    take it). ``exp_avgs`` may have another float dtype than ``params``, or be int8 codes with their float32 block
    scales in ``exp_avg_absmaxes`` (:mod:`lionk.precision`). ``rounding_keys`` (one 32-bit key per tensor or
    None, from :func:`lionk.precision.rounding_key`) makes the bfloat16/float16 stores of weight and momentum, and
    the int8 codes, round stochastically; without a key a tensor rounds to nearest. ``weight_decay_mode`` is
    :class:`lionk.Lion`'s (``"independent"`` divides by ``initial_lr``, which it then needs).

    Every tensor is checked against its parameter (shape, device, dtype, layout) and every value against its range
    before any memory is written: ValueError / TypeError name the tensor and the problem.
    """
    n = len(params)
    for name, values in (
        ("grads", grads),
        ("exp_avgs", exp_avgs),
        ("rounding_keys", rounding_keys),
        ("exp_avg_absmaxes", exp_avg_absmaxes),
    ):
        if values is not None and len(values) != n:
            raise ValueError(f"{name} must have one entry per parameter, got {len(values)} for {n} params")
    group = dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, kernel=kernel, maximize=maximize, nonfinite=nonfinite,
                 foreach=foreach, fused=fused, cautious=cautious, weight_decay_mode=weight_decay_mode, initial_lr=initial_lr)  # fmt: skip
    hyper = group_hyper(group)
    slots = []
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs)):
        label = f"tensor {i}"
        check_param(p, label)
        state = {"exp_avg": m}
        absmax = None if exp_avg_absmaxes is None else exp_avg_absmaxes[i]
        if absmax is not None:
            state["exp_avg_absmax"] = absmax
        storage = held_storage(state)
        if storage is None:
            raise TypeError(f"{label}: exp_avgs[{i}] is {type(m).__name__}, not a tensor")
        key = None if rounding_keys is None else rounding_keys[i]
        if key is not None and (isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 2**32):
            raise ValueError(f"{label}: rounding key {key!r} (must be an integer in [0, 2**32) or None)")
        slot = Slot(p, p, g, state, storage, label, key=key)
        check_slot(slot, "lion")
        slots.append(slot)
    run(slots, hyper)
