r"""``lionk.LionSF``: Lion-K without a learning-rate schedule, in two forms.

``mode="agreement"`` scales each step by how much the momentum and the current gradient agree in sign
(the mechanism the lion-pytorch README describes for its LionSF); ``mode="averaging"`` applies
Defazio et al.'s schedule-free averaging ("The Road Less Scheduled", 2024; the ``schedulefree``
package) to Lion-K. See :class:`LionSF` for the maths and the ``train()`` / ``eval()`` contract.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ._engine import check_group, where
from ._tensor import as_real, opmath_dtype
from .kernels import Kernel
from .optimizer import Lion

__all__ = ["LionSF", "sign_agreement"]

MODES = ("agreement", "averaging")

# Per-group entries beyond Lion's; setdefault'ed in __setstate__ so older checkpoints load.
_SF_DEFAULTS: dict[str, Any] = {
    "mode": "agreement",
    "sf_beta": 0.9,
    "warmup_steps": 0,
    "weight_lr_power": 2.0,
    "train_mode": True,
    "sf_step": 0,
    "lr_max": 0.0,
    "weight_sum": 0.0,
}


def _validate_sf(group: dict[str, Any], index: int | None = None) -> None:
    """Raise ValueError naming the first invalid schedule-free value of a param group (or of the defaults)."""
    where_ = where(index)
    if group["mode"] not in MODES:
        raise ValueError(f"Invalid mode{where_}: {group['mode']!r} (must be one of {MODES})")
    beta = group["sf_beta"]
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"Invalid sf_beta{where_}: {beta!r} (must be in [0, 1])")
    warmup = group["warmup_steps"]
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"Invalid warmup_steps{where_}: {warmup!r} (must be an integer >= 0)")
    power = group["weight_lr_power"]
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not (math.isfinite(power) and power >= 0):
        raise ValueError(f"Invalid weight_lr_power{where_}: {power!r} (must be a finite number >= 0)")


def sign_agreement(exp_avg: Tensor, grad: Tensor) -> float:
    r"""The agreement factor :math:`\rho = \mathrm{clip}(\frac{1}{n}\sum_i \mathrm{sign}(m_i)\,\mathrm{sign}(g_i), 0, 1)`.

    ``exp_avg`` is the momentum before this step's update, ``grad`` the (already sign-adjusted for
    ``maximize``) gradient; complex tensors count as pairs of reals, entries whose gradient is not finite
    contribute 0, and an empty tensor has factor 1.
    """
    m, g = as_real(exp_avg), as_real(grad)
    if g.numel() == 0:
        return 1.0
    opmath = opmath_dtype(g.dtype)
    g = g.to(opmath)
    products = torch.sign(m.to(opmath)) * torch.sign(g)
    products = torch.where(torch.isfinite(g), products, torch.zeros_like(products))
    return min(max(products.sum().item() / g.numel(), 0.0), 1.0)


def _interpolate(x: Tensor, z: Tensor, sf_beta: float) -> Tensor:
    """y = sf_beta * x + (1 - sf_beta) * z (complex tensors as pairs of reals); step() and train() both use this, so y
    is reproduced bit for bit."""
    return torch.lerp(as_real(x), as_real(z), 1.0 - sf_beta)


class LionSF(Lion):
    r"""Lion-K without a learning-rate schedule ("schedule-free Lion"), in two forms chosen by ``mode``.

    .. warning::
        **Call** ``optimizer.train()`` **before training steps and** ``optimizer.eval()`` **before
        evaluating or saving a checkpoint**, next to ``model.train()`` / ``model.eval()``. In
        ``mode="averaging"`` the parameters hold the point where gradients are taken (:math:`y`) in train
        mode and the averaged weights (:math:`x`, the ones to evaluate and ship) in eval mode; the calls
        swap them. ``step()`` in eval mode raises RuntimeError (in both modes, so that code written for
        one form runs with the other). The optimizer starts in train mode. In ``mode="agreement"`` the
        calls move no weights.

    Notation: parameter :math:`x` (or :math:`z`, below), gradient :math:`g` (negated when ``maximize``),
    momentum :math:`m` (``state["exp_avg"]``), lr :math:`\eta`, decay :math:`\lambda`, and one Lion-K step

    .. math::
        \mathrm{LionK}_\eta(w; g, m):\quad c = \beta_1 m + (1-\beta_1) g,\quad
        w \leftarrow w(1-\eta\lambda) - \eta\,\nabla K(c),\quad m \leftarrow \beta_2 m + (1-\beta_2) g

    exactly as :class:`lionk.Lion` takes it (same kernels, paths, ``nonfinite``, ``cautious``).

    **mode="agreement"** (default). Per tensor and step, with :math:`m` the momentum *before* this step,

    .. math::
        \rho = \mathrm{clip}\Big(\tfrac{1}{n}\textstyle\sum_{i=1}^{n} \mathrm{sign}(m_i)\,\mathrm{sign}(g_i),\ 0,\ 1\Big),
        \qquad x \leftarrow \mathrm{LionK}_{\eta\rho}(x; g, m)

    (:func:`sign_agreement`; ``state["agreement"]`` keeps the last :math:`\rho` for logging). Why this
    formula: the momentum is an average of past gradients, so when the gradient is dominated by noise
    with no consistent direction, :math:`m` is independent of the current :math:`g`,
    :math:`\mathbb{E}[\mathrm{sign}(m_i)\mathrm{sign}(g_i)] = 0` and the step vanishes, which is the
    regime in which a schedule would anneal the lr; when the gradient has a consistent direction the two
    agree and the full lr is used; when the iterate oscillates around a minimiser, :math:`g` flips sign
    before :math:`m` does, the products are negative and the clip stops the step. The momentum
    :math:`m` is used rather than the interpolation :math:`c`, because :math:`c` contains
    :math:`(1-\beta_1)g` and agrees with :math:`g` even under pure noise (about 0.64 in expectation for
    the default betas). :math:`\rho` scales the whole step, decay included, so every step is a Lion-K
    step with a learning rate :math:`\eta\rho \in [0, \eta]`: the problem solved, the constraint
    :math:`\|x\|_\infty \le 1/\lambda` for sign and the fixed points are those of Lion-K (scaling only
    :math:`\nabla K` would shrink the constraint radius to :math:`\rho/\lambda`). Consequences: the first
    step (:math:`m = 0`) moves nothing; a 1-element tensor steps fully or not at all.

    **mode="averaging"**: schedule-free averaging (Defazio et al. 2024) around a Lion-K base step.
    Per tensor, with buffers :math:`z` (``state["z"]``, the Lion-K iterate) and :math:`x`
    (``state["x"]``, the average), and the parameter holding :math:`y` in train mode:

    .. math::
        z &\leftarrow \mathrm{LionK}_{\eta_t}(z; \nabla f(y), m) \\
        x &\leftarrow (1 - c_{t+1})\, x + c_{t+1}\, z \\
        y &= \beta_{sf}\, x + (1-\beta_{sf})\, z

    with :math:`\eta_t = \eta \min(1, (t+1)/\text{warmup\_steps})` (no warmup when 0) and
    :math:`c_{t+1} = w_{t+1} / \sum_{s \le t+1} w_s`, :math:`w_s = (\max_{r \le s} \eta_r)^{p}`
    (:math:`p` = ``weight_lr_power``, 2 as in ``schedulefree``): with a constant lr :math:`c_{t+1} =
    1/(t+1)` and :math:`x` is the plain mean of :math:`z_1, \dots, z_t`. Decay acts on :math:`z` (decoupled,
    as in Lion-K), so :math:`z` is a Lion-K iteration and, for sign with :math:`\eta\lambda \le 1`,
    an iterate inside the box stays inside, and so do :math:`x` and :math:`y` (convex combinations).
    :math:`x` is kept explicitly rather than recovered from :math:`y` and :math:`z`, so ``train()`` and
    ``eval()`` restore the weights bit for bit; the price is three buffers per parameter
    (``exp_avg``, ``z``, ``x``) against Lion's one. In bfloat16/float16 the buffers round like the
    parameter, and late averaging steps (small :math:`c_{t+1}`) are lost to rounding: keep such models'
    parameters in float32 for this mode.

    Args:
        params, lr, betas, weight_decay, kernel, maximize, nonfinite, cautious, foreach, fused, momentum_dtype,
        stochastic_rounding, weight_decay_mode, max_grad_norm, gradient_release, release_bucket:
            as for :class:`lionk.Lion` (validated by the same code, with the same errors).
        mode: ``"agreement"`` or ``"averaging"`` (above).
        sf_beta: :math:`\beta_{sf}` in [0, 1], the interpolation between the average and the Lion-K
            iterate where gradients are taken (``schedulefree``'s ``beta1``/``momentum``); averaging only.
        warmup_steps: linear lr warmup length (integer >= 0); averaging only.
        weight_lr_power: :math:`p` >= 0 of the averaging weights; averaging only.

    Every argument is per param group. The step counter ``sf_step``, ``lr_max``, ``weight_sum`` and
    ``train_mode`` live in the param group, so ``state_dict()`` carries them.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        mode: str = "agreement",
        sf_beta: float = 0.9,
        warmup_steps: int = 0,
        weight_lr_power: float = 2.0,
        kernel: str | Kernel = "sign",
        maximize: bool = False,
        nonfinite: str = "propagate",
        foreach: bool | None = None,
        fused: bool | None = None,
        cautious: bool = False,
        momentum_dtype: torch.dtype | str | None = None,
        stochastic_rounding: bool = True,
        weight_decay_mode: str = "decoupled",
        max_grad_norm: float | None = None,
        gradient_release: bool = False,
        release_bucket: int = 1 << 16,
    ):
        self._init_release(gradient_release, release_bucket)
        defaults = dict(
            _SF_DEFAULTS,
            momentum_dtype=momentum_dtype,
            stochastic_rounding=stochastic_rounding,
            weight_decay_mode=weight_decay_mode,
            max_grad_norm=max_grad_norm,
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            weight_decay=weight_decay,
            kernel=kernel,
            maximize=maximize,
            nonfinite=nonfinite,
            foreach=foreach,
            fused=fused,
            cautious=cautious,
            mode=mode,
            sf_beta=sf_beta,
            warmup_steps=warmup_steps,
            weight_lr_power=weight_lr_power,
        )
        check_group(defaults)
        _validate_sf(defaults)
        torch.optim.Optimizer.__init__(self, params, defaults)  # Lion.__init__ would rebuild Lion's defaults only

    def _check_group_extra(self, group: dict[str, Any], index: int) -> None:
        """The schedule-free arguments of a new param group."""
        _validate_sf(group, index)
        if self.gradient_release and group["mode"] == "averaging":
            raise ValueError(
                f"gradient_release=True does not work with mode='averaging' in param group {index}: its averaging "
                "counters advance once per step, not once per released batch (mode='agreement' works)"
            )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            for key, default in _SF_DEFAULTS.items():
                group.setdefault(key, default)

    @torch.no_grad()
    def train(self) -> None:
        """Enter train mode: in ``mode="averaging"`` the parameters become y = sf_beta * x + (1 - sf_beta) * z."""
        for group in self.param_groups:
            if not group["train_mode"] and group["mode"] == "averaging":
                for p in group["params"]:
                    state = self.state[p]
                    if "z" in state:
                        as_real(p).copy_(_interpolate(state["x"], state["z"], group["sf_beta"]))
            group["train_mode"] = True

    @torch.no_grad()
    def eval(self) -> None:
        """Enter eval mode: in ``mode="averaging"`` the parameters become the average x."""
        for group in self.param_groups:
            if group["train_mode"] and group["mode"] == "averaging":
                for p in group["params"]:
                    state = self.state[p]
                    if "x" in state:
                        p.copy_(state["x"])
            group["train_mode"] = False

    _state_keys = Lion._state_keys | {"z", "x", "agreement"}
    _plan_settings = (*Lion._plan_settings, "mode")

    def _weight(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Tensor:
        """Averaging steps z (created from the parameter at its first step, with x); agreement steps the parameter."""
        if group["mode"] != "averaging":
            return p
        if "z" not in state:
            state["z"] = p.detach().clone(memory_format=torch.preserve_format)
            state["x"] = p.detach().clone(memory_format=torch.preserve_format)
        return state["z"]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step (train mode only); ``closure`` re-evaluates the model and returns the loss."""
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(
                "LionSF.step() was called in eval mode: call optimizer.train() before training steps "
                "(and optimizer.eval() before evaluating or saving); see the LionSF docstring"
            )
        return self._step(closure)

    def _step_work(self, work: list) -> None:
        """Scale (agreement) or schedule and average (averaging) around the Lion-K step of each group's slots."""
        scheduled, averages = [], []
        for item in work:
            group, hyper, slots = item.group, item.hyper, item.slots
            if group["mode"] == "averaging":
                if not slots:
                    continue
                schedule, ckp1 = self._averaging_schedule(group, hyper.lr_value)
                item = item._replace(hyper=dataclasses.replace(hyper, lr=hyper.lr * schedule))
                averages.append((group, slots, ckp1))
            else:
                for s in slots:
                    rho = sign_agreement(s.storage.read(s.state, opmath_dtype(s.param.dtype)), -s.grad if group["maximize"] else s.grad)
                    s.state["agreement"] = rho
                    s.lr_scale = rho
            scheduled.append(item)
        self._run(scheduled)
        for group, slots, ckp1 in averages:
            for s in slots:  # x <- (1 - c) x + c z; the parameter holds y = sf_beta x + (1 - sf_beta) z
                x, z = s.state["x"], s.state["z"]
                as_real(x).lerp_(as_real(z), ckp1)
                as_real(s.param).copy_(_interpolate(x, z, group["sf_beta"]))

    @staticmethod
    def _averaging_schedule(group: dict[str, Any], lr: float) -> tuple[float, float]:
        """Advance the group's averaging counters; return this step's warmup factor and averaging weight c_{t+1}."""
        t, warmup = group["sf_step"], group["warmup_steps"]
        schedule = min(1.0, (t + 1) / warmup) if warmup > 0 else 1.0
        group["lr_max"] = max(group["lr_max"], lr * schedule)
        weight = group["lr_max"] ** group["weight_lr_power"]
        group["weight_sum"] += weight
        group["sf_step"] = t + 1
        return schedule, weight / group["weight_sum"] if group["weight_sum"] > 0 else 0.0
