"""Lion-K against its theory (Chen, Liu, Liang, Liu, ICLR 2024), run through lionk.Lion.

With a decaying learning rate, full-batch Lion-K on a convex f converges to the minimiser of
F(x) = f(x) + (1/wd) K*(wd x). For f(x) = 1/2 (x-a)^T H (x-a) each test computes that minimiser
independently (a closed form, a scipy root of the first-order condition, or a projection written here)
and checks that lionk.Lion reaches it from several starting points, some outside the constraint set.
The phase-1 tests check the exact contraction onto the constraint set under adversarial gradients.

All parameters are float64 and gradients are computed by hand, so the only error is the optimiser's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch.optim.lr_scheduler import ExponentialLR

import lionk

F64 = torch.float64

# Learning-rate schedule of the fixed-point tests: geometric from LR0 to LR_FINAL over STEPS steps.
# sum_t lr_t = LR0 / (1 - r) with r = (LR_FINAL / LR0)^(1/STEPS), about 33: phase 1 shrinks the distance
# to the constraint set by exp(-wd * 33) <= 1e-7 (wd >= 0.5 below), and a sign-like step moves a
# coordinate by lr_t (1 +- wd x), so phase 2 can travel far more than the distances below (<= 5/wd).
LR0, LR_FINAL, STEPS = 0.1, 1e-5, 3000
# Tolerance of the fixed-point tests, from the final learning rate. At the end of the run the
# non-smooth kernels (sign, l2, linf, nuclear) sit in a limit cycle around the fixed point: each step
# moves x by lr_t (grad K(c) + wd x), at most 2 lr_t per coordinate (dual norm of grad K <= 1 and
# wd |x| <= 1 inside the set), and the momentum reverses the direction within a step or two, so the
# iterate stays within ~1-2 lr of the fixed point; over the last 10 steps lr_t is within 3% of LR_FINAL.
# The smooth kernels (quadratic, huber, relativistic, tanh, power) have the exact fixed point for every
# lr; their remaining error is the transient, which this schedule brings well below LR_FINAL (a
# 2000-step schedule does not: the transient then dominates, so the step count is not arbitrary).
# 5 * LR_FINAL allows a cycle of amplitude 2 lr with a 2.5x margin for its momentum-driven asymmetry.
TOL = 5 * LR_FINAL
BETAS = (0.9, 0.99)


def run_lion(kernel, x0s, grad, wd, *, lr0=LR0, lr_final=LR_FINAL, steps=STEPS):
    """Full-batch Lion-K from each start in ``x0s`` (one parameter each), geometric lr decay.

    ``grad(i, x)`` is the gradient for parameter i at x (a list of problems can share one run).
    """
    params = [torch.nn.Parameter(x0.clone()) for x0 in x0s]
    opt = lionk.Lion(params, lr=lr0, betas=BETAS, weight_decay=wd, kernel=kernel)
    sched = ExponentialLR(opt, gamma=(lr_final / lr0) ** (1 / (steps - 1)))
    for _ in range(steps):
        for i, p in enumerate(params):
            p.grad = grad(i, p.detach())
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_final * (lr_final / lr0) ** (1 / (steps - 1)))
    return [p.detach().clone() for p in params]


def starts(shape, wd, seed):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    """Starting points: the origin, a far point outside every constraint set, and a random one."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.zeros(shape, dtype=F64),
        torch.full(shape, 3.0 / wd, dtype=F64),
        torch.randn(shape, dtype=F64, generator=g) * (2.5 / wd),
    ]


def problem(n, seed, scale):
    """A diagonal H with entries in [0.5, 3] and a target a with entries of size ~scale."""
    g = torch.Generator().manual_seed(seed)
    h = 0.5 + 2.5 * torch.rand(n, dtype=F64, generator=g)
    a = torch.randn(n, dtype=F64, generator=g) * scale
    return h, a


def assert_converged(xs, expected, tol=TOL):
    for x in xs:
        err = (x - expected).abs().max().item()
        assert err <= tol, f"max |x - x*| = {err:.3g} > {tol:.3g}; x = {x.tolist()}, x* = {expected.tolist()}"


def per_coordinate_root(foc, h, a, lo, hi):
    """Solve foc(x, h_i, a_i) = 0 for each coordinate with brentq on [lo(a_i), hi(a_i)]."""
    roots = [
        brentq(lambda x, hi_=hi_, ai=ai: foc(x, hi_, ai), lo(ai), hi(ai), xtol=1e-15, rtol=4 * np.finfo(float).eps)
        for hi_, ai in zip(h.tolist(), a.tolist())
    ]
    return torch.tensor(roots, dtype=F64)


# ----------------------------------------------------------------------------------------------
# Fixed points with a decaying learning rate
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wd", "seed"), [(1.0, 0), (2.0, 1)])
def test_sign_converges_to_clipped_target(wd, seed):
    h, a = problem(5, seed, 1.5 / wd)
    a[0], a[1] = 2.5 / wd, -0.4 / wd  # one coordinate surely outside the box, one surely inside
    expected = a.clamp(-1 / wd, 1 / wd)
    xs = run_lion("sign", starts(5, wd, seed), lambda i, x: h * (x - a), wd)
    assert_converged(xs, expected)
    inside = a.abs() < 1 / wd
    assert inside.any() and (~inside).any()
    for x in xs:  # coordinates with a inside the box converge to a itself
        assert (x[inside] - a[inside]).abs().max() <= TOL


def test_l2_converges_to_ball_projection():
    wd, hh, n = 1.5, 1.3, 5
    g = torch.Generator().manual_seed(2)
    targets = []
    for norm_a in (0.5, 2.5):  # ||a||_2 in units of the radius 1/wd: inside and outside the ball
        a = torch.randn(n, dtype=F64, generator=g)
        targets.append(a * (norm_a / wd / torch.linalg.vector_norm(a)))
    expected = [a * min(1.0, (1 / wd) / torch.linalg.vector_norm(a).item()) for a in targets]
    origin, far, rand = starts(n, wd, 2)  # one parameter (one l2 norm) per (start, target) pair
    pairs = [(far, 0), (origin, 1), (rand, 1)]
    xs = run_lion("lp(p=2)", [x0 for x0, _ in pairs], lambda i, x: hh * (x - targets[pairs[i][1]]), wd)
    for x, (_, j) in zip(xs, pairs):
        assert_converged([x], expected[j])


@pytest.mark.parametrize("diagonal", [True, False])
def test_quadratic_converges_to_ridge_solution(diagonal):
    wd, n = 0.7, 4
    g = torch.Generator().manual_seed(3)
    if diagonal:
        hmat = torch.diag(0.5 + 2.5 * torch.rand(n, dtype=F64, generator=g))
    else:
        q, _ = torch.linalg.qr(torch.randn(n, n, dtype=F64, generator=g))
        hmat = q @ torch.diag(torch.tensor([0.4, 1.0, 1.8, 2.6], dtype=F64)) @ q.T
    a = torch.randn(n, dtype=F64, generator=g) * 2
    expected = torch.linalg.solve(hmat + wd * torch.eye(n, dtype=F64), hmat @ a)
    xs = run_lion("quadratic", starts(n, wd, 3), lambda i, x: hmat @ (x - a), wd)
    assert_converged(xs, expected)


@pytest.mark.parametrize(("alpha", "wd"), [(0.5, 1.0), (2.0, 0.8)])
def test_huber_converges_to_clipped_shrinkage(alpha, wd):
    h, a = problem(6, 4, 2.0 / wd)
    expected = (h * a / (h + alpha * wd)).clamp(-1 / wd, 1 / wd)
    assert (expected.abs() == 1 / wd).any() and (expected.abs() < 1 / wd).any()
    xs = run_lion(f"huber(a={alpha})", starts(6, wd, 4), lambda i, x: h * (x - a), wd)
    assert_converged(xs, expected)


def _box_bracket(wd):
    # the barriers of relativistic and tanh blow up at |x| = 1/wd: the root lies strictly inside
    edge = (1 - 1e-14) / wd
    return (lambda a: -edge), (lambda a: edge)


@pytest.mark.parametrize(("alpha", "wd"), [(0.5, 1.0), (1.0, 2.0)])
def test_relativistic_converges_to_barrier_optimum(alpha, wd):
    h, a = problem(5, 5, 2.0 / wd)
    # d/dx [h (x-a)^2 / 2 - (alpha/wd) sqrt(1 - wd^2 x^2)] = 0
    foc = lambda x, hi, ai: hi * (x - ai) + alpha * wd * x / math.sqrt(1 - (wd * x) ** 2)
    expected = per_coordinate_root(foc, h, a, *_box_bracket(wd))
    xs = run_lion(f"relativistic(a={alpha})", starts(5, wd, 5), lambda i, x: h * (x - a), wd)
    assert_converged(xs, expected)


@pytest.mark.parametrize(("alpha", "wd"), [(0.5, 1.0), (1.0, 2.0)])
def test_tanh_converges_to_entropy_barrier_optimum(alpha, wd):
    h, a = problem(5, 6, 2.0 / wd)
    # (1/wd) K*(wd x) with K*(y) = (alpha/2) sum (1+y) log(1+y) + (1-y) log(1-y): its derivative is
    # (alpha/2) log((1 + wd x) / (1 - wd x)) = alpha atanh(wd x)
    foc = lambda x, hi, ai: hi * (x - ai) + alpha * math.atanh(wd * x)
    expected = per_coordinate_root(foc, h, a, *_box_bracket(wd))
    xs = run_lion(f"tanh(a={alpha})", starts(5, wd, 6), lambda i, x: h * (x - a), wd)
    assert_converged(xs, expected)


@pytest.mark.parametrize("wd", [0.5, 1.5])
def test_power_converges_to_penalised_optimum(wd):
    p = 1.5
    q = p / (p - 1)  # = 3
    h, a = problem(5, 7, 2.0 / wd)
    # (1/wd) K*(wd x) = wd^(q-1)/q sum |x|^q, derivative sign(x) (wd |x|)^(q-1); root between 0 and a
    foc = lambda x, hi, ai: hi * (x - ai) + math.copysign((wd * abs(x)) ** (q - 1), x)
    expected = per_coordinate_root(foc, h, a, lambda ai: min(0.0, ai), lambda ai: max(0.0, ai))
    xs = run_lion("power(p=1.5)", starts(5, wd, 7), lambda i, x: h * (x - a), wd)
    assert_converged(xs, expected)


def project_l1_ball(v: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean projection onto {x : ||x||_1 <= radius} (Duchi, Shalev-Shwartz, Singer, Chandra 2008)."""
    if np.abs(v).sum() <= radius:
        return v.copy()
    u = np.sort(np.abs(v))[::-1]
    css = np.cumsum(u)
    j = np.arange(1, len(u) + 1)
    rho = np.nonzero(u - (css - radius) / j > 0)[0][-1]
    theta = (css[rho] - radius) / (rho + 1)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0.0)


def test_linf_converges_to_l1_ball_projection():
    wd, hh, n = 1.0, 1.5, 4
    base = torch.tensor([1.0, -0.7, 0.35, -0.1], dtype=F64)
    targets = [base * (norm1_a / wd / base.abs().sum()) for norm1_a in (0.6, 2.0)]  # inside, outside
    expected = [torch.from_numpy(project_l1_ball(a.numpy(), 1 / wd)) for a in targets]
    assert expected[0].abs().sum().item() == pytest.approx(0.6 / wd)
    assert expected[1].abs().sum().item() == pytest.approx(1.0 / wd)
    assert (expected[1] == 0).any()  # the projection zeroes the small coordinate: a corner of the ball
    # starts within l1 distance ~4/wd of the targets, so that one-coordinate greedy steps have time to travel
    origin, outside = torch.zeros(n, dtype=F64), torch.tensor([1.0, 1.0, -1.0, 0.5], dtype=F64) / wd
    pairs = [(outside, 0), (origin, 1), (outside, 1)]
    xs = run_lion("linf", [x0 for x0, _ in pairs], lambda i, x: hh * (x - targets[pairs[i][1]]), wd)
    for x, (_, j) in zip(xs, pairs):
        assert_converged([x], expected[j])


def test_nuclear_converges_to_singular_value_clipping():
    wd = 1.0
    g = torch.Generator().manual_seed(8)
    targets, expected, x0s, owner = [], [], [], []
    for m, n in ((4, 6), (6, 4)):
        r = min(m, n)
        u, _ = torch.linalg.qr(torch.randn(m, r, dtype=F64, generator=g))
        v, _ = torch.linalg.qr(torch.randn(n, r, dtype=F64, generator=g))
        s = torch.tensor([2.5, 1.4, 0.6, 0.2], dtype=F64) / wd  # two above the radius 1/wd, two below
        a = (u * s) @ v.T
        x_star = (u * s.clamp(0, 1 / wd)) @ v.T
        # cross-check against numpy's SVD of A, independently of how A was built
        un, sn, vhn = np.linalg.svd(a.numpy(), full_matrices=False)
        np.testing.assert_allclose((un * np.clip(sn, 0, 1 / wd)) @ vhn, x_star.numpy(), atol=1e-12)
        x0s_here = [torch.randn(m, n, dtype=F64, generator=g) * 2 / wd]  # outside: ||X_0||_op ~ 2 * 3.2 / wd
        if m < n:
            x0s_here.append(torch.zeros(m, n, dtype=F64))
        for x0 in x0s_here:
            x0s.append(x0)
            owner.append(len(targets))
        targets.append(a)
        expected.append(x_star)
    xs = run_lion("nuclear(method='svd')", x0s, lambda i, x: x - targets[owner[i]], wd)
    for x, j in zip(xs, owner):
        assert_converged([x], expected[j])


# ----------------------------------------------------------------------------------------------
# Phase 1: exponential contraction onto the constraint set, whatever the gradients
# ----------------------------------------------------------------------------------------------


def _lp(q):
    return lambda x: torch.linalg.vector_norm(x.reshape(-1), ord=q).item()


def _spectral(x):
    return torch.linalg.matrix_norm(x, ord=2).item()


# kernel -> the norm whose ball of radius 1/wd is the constraint set (the dual norm of the kernel's)
PHASE1 = {
    "sign": _lp(math.inf),
    "huber(a=0.5)": _lp(math.inf),
    "relativistic(a=0.5)": _lp(math.inf),
    "tanh(a=0.5)": _lp(math.inf),
    "lp(p=2)": _lp(2),
    "lp(p=1.5)": _lp(3),
    "linf": _lp(1),
    "nuclear(method='svd')": _spectral,
}
# Rounding slack: each step computes x (1 - lr wd) - lr u in float64 and the norm sums <= 24 terms; the
# real-arithmetic bound holds exactly, so the floating-point excess is a few ulp of the norm. We allow
# 1e-12 relative to max(||x_0||, 1/wd), ~1e3 times more than that and nowhere near a real violation.
REL_SLACK = 1e-12


@pytest.mark.parametrize("kernel", list(PHASE1))
@pytest.mark.parametrize(("lr", "wd"), [(0.01, 2.0), (0.1, 3.0), (0.5, 2.0)])  # lr*wd = 0.02, 0.3, 1
def test_phase1_contraction_under_adversarial_gradients(kernel, lr, wd):
    norm = PHASE1[kernel]
    shape = (4, 6)
    g = torch.Generator().manual_seed(9)
    x0s = []
    for radius_factor in (10.0, 1.5, 1.0, 0.9, 0.2):  # outside, on the boundary and inside
        x = torch.randn(shape, dtype=F64, generator=g)
        x0s.append(x * (radius_factor / wd / norm(x)))
    inside = [norm(x) <= (1 / wd) * (1 + REL_SLACK) for x in x0s]
    assert inside == [False, False, True, True, True]
    params = [torch.nn.Parameter(x.clone()) for x in x0s]
    opt = lionk.Lion(params, lr=lr, betas=BETAS, weight_decay=wd, kernel=kernel)
    excess0 = [max(norm(x) - 1 / wd, 0.0) for x in x0s]
    slack = [REL_SLACK * max(norm(x), 1 / wd) for x in x0s]
    for t in range(1, 101):
        for p in params:
            # fresh random gradients of any scale (1e-8 .. 1e8), with some exact zeros
            scale = 10.0 ** (16 * torch.rand((), dtype=F64, generator=g).item() - 8)
            grad = torch.randn(shape, dtype=F64, generator=g) * scale
            grad[torch.rand(shape, generator=g) < 0.1] = 0.0
            p.grad = grad
        opt.step()
        for i, p in enumerate(params):
            excess = max(norm(p.detach()) - 1 / wd, 0.0)
            bound = (1 - lr * wd) ** t * excess0[i]
            assert excess <= bound + slack[i], f"step {t}, start {i}: excess {excess:.3g} > bound {bound:.3g}"
            if inside[i]:  # a start inside the ball (or on its boundary) never leaves it
                assert norm(p.detach()) <= (1 / wd) * (1 + REL_SLACK)


@pytest.mark.parametrize("kernel", ["sign", "lp(p=2)", "linf", "huber(a=0.5)", "relativistic(a=0.5)", "tanh(a=0.5)"])
def test_phase1_bound_is_attained_by_sign_like_steps(kernel):
    """Not vacuous: with the gradient pushing outward the excess decays exactly as (1 - lr wd)^t."""
    lr, wd = 0.05, 2.0
    x0 = torch.zeros(4, dtype=F64)
    x0[0] = 3.0 / wd
    p = torch.nn.Parameter(x0.clone())
    opt = lionk.Lion([p], lr=lr, betas=(0.0, 0.0), weight_decay=wd, kernel=kernel)
    for t in range(1, 51):
        p.grad = torch.tensor([-1e6, 0.0, 0.0, 0.0], dtype=F64)  # c = g: grad K(c) = -e_0 (up to saturation)
        opt.step()
        excess = p.detach()[0].item() - 1 / wd
        bound = (1 - lr * wd) ** t * (2.0 / wd)
        assert excess <= bound * (1 + 1e-12)
        if kernel in ("sign", "lp(p=2)", "linf"):  # |grad K| = 1 exactly: the bound is an equality
            assert excess == pytest.approx(bound, rel=1e-12)
