"""lionk.diagnostics: box-boundary statistics and the stationarity score, against hand computations and a KKT point."""

from __future__ import annotations

import pytest
import torch

from lionk import Lion, diagnostics, format_diagnostics


def _param(values, grad=None):
    p = torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))
    if grad is not None:
        p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


def test_boundary_inside_and_outside_by_hand():
    wd = 2.0
    at = _param([0.5, -0.5, 0.1, 0.0])  # |wd x| = 1, 1, 0.2, 0: two of four exactly at the boundary
    inside = _param([0.3, -0.2])  # |wd x| = 0.6, 0.4: strictly inside
    threshold = _param([0.4975, 0.4925])  # |wd x| = 0.995 counts as at the boundary, 0.985 does not
    outside = _param([0.75])  # |wd x| = 1.5: still being pulled into the box (phase 1)
    opt = Lion([at, inside, threshold, outside], lr=0.1, weight_decay=wd)
    (group,) = diagnostics(opt)
    assert group.constraint == "box ||x||_inf <= 1/wd" and group.weight_decay == wd and group.kernel == "sign"
    fractions = [t.boundary_fraction for t in group.tensors]
    maxima = [t.max_scaled for t in group.tensors]
    assert fractions == [0.5, 0.0, 0.5, 1.0]
    assert maxima == pytest.approx([1.0, 0.6, 0.995, 1.5], abs=1e-15)
    assert group.boundary_fraction == 4 / 9 and group.max_scaled == 1.5
    assert [t.stationarity for t in group.tensors] == [None] * 4 and group.stationarity is None  # no gradients


def test_stationarity_by_hand_and_maximize():
    wd = 2.0
    p = _param([0.5, 0.1], grad=[-1.0, 2.0])
    # S = (||g||_1 + wd <x, g>) / n = (3 + 2 * (-0.5 + 0.2)) / 2 = 1.2
    (group,) = diagnostics(Lion([p], weight_decay=wd))
    assert group.tensors[0].stationarity == pytest.approx(1.2, abs=1e-15) and group.stationarity == pytest.approx(1.2, abs=1e-15)
    # maximize: the objective's gradient is -p.grad, so S = (3 + 2 * (0.5 - 0.2)) / 2 = 1.8
    (group,) = diagnostics(Lion([p], weight_decay=wd, maximize=True))
    assert group.tensors[0].stationarity == pytest.approx(1.8, abs=1e-15)
    (group,) = diagnostics(Lion([p], weight_decay=wd), grads=False)
    assert group.tensors[0].stationarity is None


def test_zero_weight_decay_reports_no_constraint():
    p = _param([5.0, -3.0], grad=[1.0, -4.0])
    (group,) = diagnostics(Lion([p], weight_decay=0.0))
    assert group.constraint == "none"
    assert group.boundary_fraction is None and group.max_scaled is None
    assert group.tensors[0].boundary_fraction is None and group.tensors[0].max_scaled is None
    assert group.tensors[0].stationarity == pytest.approx(2.5)  # unconstrained: mean |grad|
    assert "none (weight_decay = 0, no constraint applies)" in format_diagnostics([group])


def test_kernels_without_a_box_are_not_covered():
    p = _param([[0.5, 0.1]], grad=[[1.0, 1.0]])
    (group,) = diagnostics(Lion([p], weight_decay=1.0, kernel="l2"))
    assert group.constraint == "not covered" and group.tensors[0].boundary_fraction is None and group.tensors[0].stationarity is None
    (group,) = diagnostics(Lion([p], weight_decay=1.0, kernel="tanh(a=0.1)"))  # box plus a barrier: box stats, no S
    assert group.constraint.startswith("box") and group.tensors[0].max_scaled == 0.5 and group.tensors[0].stationarity is None


def test_exact_kkt_point_scores_zero_and_a_non_kkt_point_does_not():
    """f = 1/2 sum h (x - a)^2, wd = 1: x* = clip(a, -1, 1); at x*, g = 0 inside and |g| + wd x g = 0 on the boundary."""
    h = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    a = torch.tensor([3.0, -2.0, 0.3, -0.4], dtype=torch.float64)
    x_star = a.clamp(-1, 1)
    p = torch.nn.Parameter(x_star.clone())
    p.grad = h * (x_star - a)
    (group,) = diagnostics(Lion([p], weight_decay=1.0))
    assert group.stationarity == 0.0 and group.boundary_fraction == 0.5
    p.data = torch.tensor([0.9, -1.0, 0.3, -0.4], dtype=torch.float64)  # first entry moved off the boundary
    p.grad = h * (p.detach() - a)
    (group,) = diagnostics(Lion([p], weight_decay=1.0))
    assert group.stationarity == pytest.approx((2.1 - 0.9 * 2.1) / 4)


def test_lion_run_to_convergence_reaches_a_kkt_point():
    """Full-batch Lion with a decaying lr converges to x* = clip(a, -1/wd, 1/wd); S(x) -> 0 at the rate of |x - x*|."""
    wd = 1.0
    h = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0], dtype=torch.float64)
    a = torch.tensor([3.0, -2.0, 0.3, -0.4, 0.6], dtype=torch.float64)
    x_star = a.clamp(-1 / wd, 1 / wd)
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = Lion([p], lr=0.05, weight_decay=wd)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 + t / 10) ** -0.5)
    p.grad = h * (p.detach() - a)
    s_start = diagnostics(opt)[0].stationarity
    for _ in range(2000):
        p.grad = h * (p.detach() - a)
        opt.step()
        schedule.step()
    p.grad = h * (p.detach() - a)
    (group,) = diagnostics(opt, names=[("w", p)])
    delta = (p.detach() - x_star).abs()
    assert delta.max() < 0.01  # converged: a few final lr (0.05 / sqrt(201) = 3.5e-3)
    # |s_i(x) - s_i(x*)| <= |g_i - g*_i| + wd |x_i g_i - x*_i g*_i| <= delta_i (h_i (1 + wd |x_i|) + wd |g*_i|), and S(x*) = 0
    g_star = h * (x_star - a)
    bound = (delta * (h * (1 + wd * p.detach().abs()) + wd * g_star.abs())).mean().item()
    assert 0 <= group.stationarity <= bound
    assert s_start > 1000 * bound
    assert group.boundary_fraction == 2 / 5  # the two coordinates with |a| > 1/wd
    assert group.tensors[0].name == "w"


def test_several_groups_and_the_table():
    model = torch.nn.Linear(3, 2, dtype=torch.float64)
    with torch.no_grad():
        model.weight.fill_(0.25)
        model.bias.fill_(0.1)
    opt = Lion([{"params": [model.weight], "weight_decay": 4.0}, {"params": [model.bias], "weight_decay": 0.0}])
    report = diagnostics(opt, names=model.named_parameters())
    assert [g.index for g in report] == [0, 1]
    assert report[0].tensors[0].boundary_fraction == 1.0 and report[0].tensors[0].stationarity is None
    assert report[1].constraint == "none"
    table = format_diagnostics(report)
    assert "group 0: weight_decay=4 kernel=sign constraint: box ||x||_inf <= 1/wd" in table
    assert "weight" in table and "2x3" in table and "100.0%" in table and "bias" in table


def test_weight_decay_modes_set_the_box():
    """independent: the per-step decay is 1 - lr * wd / initial_lr, so the box is |x| <= initial_lr / wd; cautious
    enforces no box (measured against 1/wd all the same, without a score)."""
    x = torch.tensor([10.0, 5.0, -10.0, 0.0])
    p = torch.nn.Parameter(x.clone())
    p.grad = torch.ones(4)
    independent = Lion([p], lr=0.01, weight_decay=0.001, weight_decay_mode="independent")
    (g,) = diagnostics(independent)
    assert g.decay == pytest.approx(0.1) and g.weight_decay == 0.001
    assert g.constraint == "box ||x||_inf <= initial_lr/wd" and g.boundary_fraction == 0.5 and g.max_scaled == pytest.approx(1.0)
    assert "per-step decay 1 - lr * 0.1" in format_diagnostics([g])
    cautious = Lion([p], lr=0.01, weight_decay=0.1, weight_decay_mode="cautious")
    (g,) = diagnostics(cautious)
    assert g.constraint == "not enforced (cautious decay)" and g.boundary_fraction == 0.5 and g.stationarity is None
    (g,) = diagnostics(Lion([p], lr=0.01, weight_decay=0.1))
    assert g.constraint == "box ||x||_inf <= 1/wd" and g.decay == 0.1 and g.stationarity is not None
