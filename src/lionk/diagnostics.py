r"""What the constraint view of Lion-K tells a user about a run.

With a decaying lr, Lion (``kernel="sign"``) solves :math:`\min f(x)` subject to
:math:`\|x\|_\infty \le 1/\lambda` (Chen, Liu, Liang, Liu 2024, "Lion Secretly Solves Constrained Optimization"). For every
tensor of every param group :func:`diagnostics` reports

* ``boundary_fraction``: the fraction of entries with :math:`|\lambda x_i| \ge 0.99` (at the box
  boundary, where weight decay binds and the gradient can push no further),
* ``max_scaled``: :math:`\max_i |\lambda x_i|` (1 is the boundary; above 1 the run is still in phase 1,
  being pulled into the box),
* ``stationarity`` (when the tensor has a gradient): the score of the box-constrained problem
  per element,

  .. math::
      S(x) = \frac{1}{n}\Big(\|\nabla f(x)\|_1 + \lambda\,\langle x, \nabla f(x)\rangle\Big),

  which is :math:`\lambda/n` times the Frank-Wolfe gap :math:`\max_{\|y\|_\infty \le 1/\lambda}
  \langle x - y, \nabla f(x)\rangle`: it is :math:`\ge 0` inside the box and 0 exactly at KKT points
  (for :math:`\lambda = 0` it is the mean :math:`|\nabla f|`). :math:`\nabla f` is the stored
  ``p.grad``, negated for groups with ``maximize=True``.

Groups with :math:`\lambda = 0` report that no constraint applies (``constraint="none"``, box fields
``None``; :math:`S` is then the mean :math:`|\nabla f|` for every kernel). For :math:`\lambda > 0` the box
describes the kernels whose :math:`K^*` is finite only on the box (``sign``, ``power(p=1)``, ``huber``,
``relativistic``, ``tanh``) and :math:`S` is the score of ``sign`` and ``power(p=1)`` only (the others add a
penalty or barrier inside the box); groups with other kernels (norm balls, penalties) get
``constraint="not covered"`` and ``None`` fields.

:math:`\lambda` is the coefficient of the per-step decay :math:`1 - \eta\lambda`: the group's ``weight_decay``, or
``weight_decay / initial_lr`` for ``weight_decay_mode="independent"`` (whose box is
:math:`\|x\|_\infty \le` ``initial_lr / weight_decay``). ``weight_decay_mode="cautious"`` enforces no box (the decay
never opposes the step): its groups get ``constraint="not enforced (cautious decay)"``, the box fields measured
against :math:`1/\lambda` all the same (how far the weights stray from it) and no score.

Complex parameters count as pairs of reals. Sharded parameters (DTensor, FSDP2) are gathered first, so the figures
are those of the whole tensor (a collective: call it on every rank).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._engine.work import group_hyper
from ._tensor import as_real, is_dtensor
from .kernels import Huber, Kernel, Power, Relativistic, Sign, Tanh, get_kernel

__all__ = ["BOUNDARY_THRESHOLD", "GroupDiagnostics", "TensorDiagnostics", "diagnostics", "format_diagnostics"]

#: An entry counts as at the boundary when |wd * x| >= this.
BOUNDARY_THRESHOLD = 0.99


@dataclass
class TensorDiagnostics:
    """One parameter tensor; the box fields are None where no box applies, ``stationarity`` where no score applies."""

    name: str
    shape: tuple[int, ...]
    numel: int
    boundary_fraction: float | None
    max_scaled: float | None
    stationarity: float | None


@dataclass
class GroupDiagnostics:
    """One param group: its constraint and the tensors, with totals over the group (numel-weighted)."""

    index: int
    weight_decay: float  # the group's weight_decay
    kernel: str
    constraint: str  # "box ||x||_inf <= 1/wd" (or "<= initial_lr/wd"), "none" (wd = 0), "not covered" (kernel without a
    # box) or "not enforced (cautious decay)"
    decay: float = 0.0  # the coefficient lambda of the per-step decay 1 - lr * lambda
    tensors: list[TensorDiagnostics] = field(default_factory=list)
    boundary_fraction: float | None = None
    max_scaled: float | None = None
    stationarity: float | None = None


def _whole(t: Tensor) -> Tensor:
    return t.full_tensor() if is_dtensor(t) else t


def _has_box(kernel: Kernel) -> bool:
    return isinstance(kernel, (Sign, Huber, Relativistic, Tanh)) or (isinstance(kernel, Power) and kernel.p == 1.0)


def _has_score(kernel: Kernel) -> bool:
    return isinstance(kernel, Sign) or (isinstance(kernel, Power) and kernel.p == 1.0)


@torch.no_grad()
def diagnostics(
    optimizer: torch.optim.Optimizer,
    grads: bool = True,
    names: Iterable[tuple[str, Tensor]] | None = None,
) -> list[GroupDiagnostics]:
    """Per param group and tensor: fraction at the box boundary, max |wd x| and the stationarity score S.

    ``optimizer`` is a :class:`lionk.Lion` or :class:`lionk.LionSF` (or any optimizer whose groups hold Lion's
    ``weight_decay`` and optionally ``kernel`` and ``maximize``, defaults ``"sign"`` and False).
    ``grads=False`` skips S.
    ``names``: e.g. ``model.named_parameters()``, to label tensors (default ``"p<i>"`` within the group).
    For :class:`lionk.LionSF` with ``mode="averaging"``, call it after ``optimizer.eval()`` to diagnose the
    averaged weights x rather than the training point y. See the module docstring for the definitions.
    """
    labels = {id(p): n for n, p in names} if names is not None else {}
    report = []
    for gi, group in enumerate(optimizer.param_groups):
        mode = group.get("weight_decay_mode", "decoupled")
        given = float(group.get("weight_decay", 0.0))
        wd = group_hyper(group, gi).weight_decay if "weight_decay_mode" in group else given
        kernel = get_kernel(group.get("kernel", "sign"))
        sign = -1.0 if group.get("maximize", False) else 1.0
        box = wd > 0 and _has_box(kernel)
        score = grads and (wd == 0 or (_has_score(kernel) and mode != "cautious"))
        if wd == 0 or not box:
            constraint = "none" if wd == 0 else "not covered"
        elif mode == "cautious":
            constraint = "not enforced (cautious decay)"
        else:
            constraint = "box ||x||_inf <= initial_lr/wd" if mode == "independent" else "box ||x||_inf <= 1/wd"
        out = GroupDiagnostics(index=gi, weight_decay=given, kernel=kernel.spec, constraint=constraint, decay=wd)
        at_boundary, total, max_scaled, s_sum, s_numel = 0, 0, 0.0, 0.0, 0
        for pi, p in enumerate(group["params"]):
            x = as_real(_whole(p.detach())).to(torch.float64)
            n = x.numel()
            frac = top = s = None
            if box and n > 0:
                scaled = (wd * x).abs()
                count = int(torch.count_nonzero(scaled >= BOUNDARY_THRESHOLD))
                frac, top = count / n, scaled.amax().item()
                at_boundary, total, max_scaled = at_boundary + count, total + n, max(max_scaled, top)
            if score and p.grad is not None and n > 0:
                g = sign * as_real(_whole(p.grad.detach())).to(torch.float64)
                s_total = (g.abs().sum() + wd * (x * g).sum()).item()
                s, s_sum, s_numel = s_total / n, s_sum + s_total, s_numel + n
            out.tensors.append(TensorDiagnostics(labels.get(id(p), f"p{pi}"), tuple(p.shape), p.numel(), frac, top, s))
        if total:
            out.boundary_fraction, out.max_scaled = at_boundary / total, max_scaled
        if s_numel:
            out.stationarity = s_sum / s_numel
        report.append(out)
    return report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_diagnostics(report: list[GroupDiagnostics], per_tensor: bool = True) -> str:
    """A plain-text table of :func:`diagnostics`' output: one header line per group, one row per tensor
    (only the group totals with ``per_tensor=False``)."""
    columns = f"{'at boundary':>11} {'max|wd*x|':>10} {'S per elem':>11}"
    header = f"{'tensor':<32} {'shape':<16} {columns}" if per_tensor else f"{'':<49}{columns}"
    lines = []
    for group in report:
        lines.append(
            f"group {group.index}: weight_decay={group.weight_decay:g}"
            + (f" (per-step decay 1 - lr * {group.decay:g})" if group.decay != group.weight_decay else "")
            + f" kernel={group.kernel} constraint: "
            + ("none (weight_decay = 0, no constraint applies)" if group.constraint == "none" else group.constraint)
        )
        lines.append(header)
        for t in group.tensors if per_tensor else ():
            lines.append(
                f"{t.name:<32} {'x'.join(map(str, t.shape)) or '()':<16} {_fmt(t.boundary_fraction, '.1%'):>11} "
                f"{_fmt(t.max_scaled, '.4f'):>10} {_fmt(t.stationarity, '.3e'):>11}"
            )
        lines.append(
            f"{'(group total)':<32} {'':<16} {_fmt(group.boundary_fraction, '.1%'):>11} "
            f"{_fmt(group.max_scaled, '.4f'):>10} {_fmt(group.stationarity, '.3e'):>11}"
        )
    return "\n".join(lines)
