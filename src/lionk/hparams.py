r"""From an AdamW setting to a Lion setting, and the authors' guidance as data.

Chen et al. (2023, "Symbolic Discovery of Optimization Algorithms", section 5) advise: because Lion's update
:math:`\mathrm{sign}(c)` has a larger norm than Adam's, take its learning rate 3-10x smaller than AdamW's and its
weight decay 3-10x larger, so that the per-step decay strength :math:`\eta\lambda` stays the same; keep the
schedule's shape. With a factor :math:`k`:

.. math::
    \eta_{\mathrm{Lion}} = \eta_{\mathrm{AdamW}} / k, \qquad
    \lambda_{\mathrm{Lion}} = k\,\lambda_{\mathrm{AdamW}}, \qquad
    \eta_{\mathrm{Lion}}\lambda_{\mathrm{Lion}} = \eta_{\mathrm{AdamW}}\lambda_{\mathrm{AdamW}}.

Both sides use the decoupled convention in which one step multiplies a weight by :math:`1 - \eta\lambda`
(``torch.optim.AdamW`` and :class:`lionk.Lion`). A weight decay taken from a library with another convention
(coupled L2, or a decay not multiplied by lr) must be converted to this one first.

The Lion-K view gives the same rule a meaning: Lion solves :math:`\min f(x)` subject to
:math:`\|x\|_\infty \le 1/\lambda`, so ``weight_decay`` sets the size of the box the weights live in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["from_adamw", "DEFAULT_FACTOR", "FACTOR_RANGE", "STABLE_BETAS", "MIN_BATCH_SIZE", "WorkedPair", "WORKED_PAIRS"]

#: Default lr divisor / weight-decay multiplier. The lower end of the authors' 3-10 range: lion-pytorch's
#: author reports lr/3 beating Adam and lr/10 doing worse, and with both tuned on lionk's own task (RESULTS.md)
#: Lion's best lr was AdamW's best / 3.
DEFAULT_FACTOR = 3.0
#: The range the authors recommend for the factor.
FACTOR_RANGE = (3.0, 10.0)
#: Lion's default betas (Program 1 of the paper).
DEFAULT_BETAS = (0.9, 0.99)
#: Betas the authors suggest when training is unstable.
STABLE_BETAS = (0.95, 0.98)
#: Below this batch size the authors give no guarantee that Lion beats AdamW (it prefers large batches).
MIN_BATCH_SIZE = 64


@dataclass(frozen=True)
class WorkedPair:
    """A published (Lion, AdamW-or-Adafactor) setting from the Lion paper."""

    task: str
    lion_lr: float
    lion_weight_decay: float
    adamw_lr: float
    adamw_weight_decay: float

    @property
    def lr_ratio(self) -> float:
        """AdamW lr / Lion lr."""
        return self.adamw_lr / self.lion_lr

    @property
    def decay_ratio(self) -> float:
        """Lion weight decay / AdamW weight decay."""
        return self.lion_weight_decay / self.adamw_weight_decay


#: The worked pairs from the paper (the last one's baseline is Adafactor).
WORKED_PAIRS = (
    WorkedPair("ViT-B/16 on ImageNet", 1e-4, 10.0, 1e-3, 1.0),
    WorkedPair("diffusion model", 3e-5, 0.1, 3e-4, 0.01),
    WorkedPair("7.5B language model (vs Adafactor)", 1e-4, 0.01, 1e-3, 0.001),
)


def _check(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite number)")
    if positive and not value > 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be > 0)")
    if not positive and value < 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be >= 0)")
    return float(value)


def from_adamw(
    lr: float,
    weight_decay: float,
    factor: float = DEFAULT_FACTOR,
    *,
    betas: tuple[float, float] = DEFAULT_BETAS,
) -> dict[str, Any]:
    r"""Lion keyword arguments from an AdamW setting, by the authors' rule.

    Returns ``{"lr": lr / factor, "weight_decay": weight_decay * factor, "betas": betas}``, ready for
    ``lionk.Lion(params, **kwargs)``; ``lr * weight_decay`` is unchanged. Use the same schedule shape
    (warm-up, cosine) as for AdamW, scaled to the new peak lr.

    Args:
        lr: AdamW's peak learning rate (> 0).
        weight_decay: AdamW's decoupled weight decay (>= 0), in torch's convention (a step multiplies
            weights by ``1 - lr * weight_decay``).
        factor: the lr divisor and weight-decay multiplier (> 0). The authors recommend 3 to 10
            (:data:`FACTOR_RANGE`); the default is 3 (:data:`DEFAULT_FACTOR`).
        betas: Lion's betas; the default is the paper's (0.9, 0.99), :data:`STABLE_BETAS` is the authors'
            advice when training is unstable.

    >>> from_adamw(1e-3, 0.1)
    {'lr': 0.0003333333333333333, 'weight_decay': 0.30000000000000004, 'betas': (0.9, 0.99)}
    """
    lr = _check("lr", lr, positive=True)
    weight_decay = _check("weight_decay", weight_decay, positive=False)
    factor = _check("factor", factor, positive=True)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r} (must be a pair (beta1, beta2))")
    return {"lr": lr / factor, "weight_decay": weight_decay * factor, "betas": tuple(betas)}
