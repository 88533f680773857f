"""lionk.kernels against the mathematics: gradients, conjugates, edge cases, numerics and specs.

Every kernel K comes with direction(c) = grad K(c), value(x) = K(x) and conjugate(y) = K*(y). The tests
check these three against each other and against independent computations (autograd, closed forms,
numerical sups with scipy), in float64 so that the tolerances can be tight.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar

import lionk
from lionk.kernels import (
    Huber,
    Kernel,
    LInf,
    LpNorm,
    Nuclear,
    Power,
    Quadratic,
    Relativistic,
    Sign,
    Tanh,
    get_kernel,
    kernel_names,
    kernel_spec,
)

F64 = torch.float64

ELEMENTWISE: list[Kernel] = [
    Sign(),
    Power(1.0),
    Power(1.5),
    Power(2.0),
    Quadratic(),
    Huber(0.5),
    Huber(2.0),
    Relativistic(0.5),
    Relativistic(2.0),
    Tanh(0.5),
    Tanh(2.0),
]
# Tensor-scope kernels whose direction is exactly grad K (no rescaling).
TENSOR_EXACT: list[Kernel] = [LpNorm(1.0), LpNorm(1.5), LpNorm(2.0), LInf(), Nuclear("svd"), Nuclear("newton_schulz")]
MATCH_RMS: list[Kernel] = [
    LpNorm(1.0, match_sign_rms=True),
    LpNorm(1.5, match_sign_rms=True),
    LpNorm(2.0, match_sign_rms=True),
    LInf(match_sign_rms=True),
    Nuclear("svd", match_sign_rms=True),
]
EXACT = ELEMENTWISE + TENSOR_EXACT
ALL = [*EXACT, *MATCH_RMS, Nuclear("muon")]

# Kernels whose conjugate has a bounded domain (an indicator, or a finite function on the unit box).
BOUNDED_DOMAIN = [
    Sign(),
    Power(1.0),
    Huber(0.5),
    Relativistic(0.5),
    Tanh(0.5),
    LpNorm(1.0),
    LpNorm(1.5),
    LpNorm(2.0),
    LInf(),
    Nuclear("svd"),
]


def ids(kernels: list[Kernel]) -> list[str]:
    return [k.spec for k in kernels]


def sample(kernel: Kernel, seed: int = 0) -> torch.Tensor:
    """A random float64 tensor with no zeros and (almost surely) no ties, a matrix for the nuclear norm."""
    g = torch.Generator().manual_seed(seed)
    shape = (6, 9) if isinstance(kernel, Nuclear) else (7, 5)
    return torch.randn(shape, dtype=F64, generator=g) * 1.5


# ----------------------------------------------------------------------------------------------
# direction = grad K
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", EXACT, ids=ids(EXACT))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_direction_is_autograd_of_value(kernel, seed):
    c = sample(kernel, seed)
    x = c.clone().requires_grad_()
    kernel.value(x).backward()
    # Both sides are a handful of float64 operations on O(1) numbers (rounding ~1e-15); for the nuclear
    # norm the polar factor U V^T has a condition number ~ ||C|| / sigma_min ~ 10 on these random matrices,
    # and the Newton-Schulz iteration reaches float64 precision well within its 20 steps (sigma_min /
    # ||C||_F ~ 0.05 needs ~8 steps of the 1.5x growth, then ~5 of quadratic convergence). 1e-10 leaves a
    # 1e4-1e5 margin over rounding while still catching any wrong formula.
    torch.testing.assert_close(kernel.direction(c), x.grad, rtol=1e-10, atol=1e-10)


def test_special_gradients_in_closed_form():
    c = sample(Sign(), 3)
    assert torch.equal(Sign().direction(c), torch.sign(c))
    flat = c.reshape(-1)
    one_hot = torch.zeros_like(flat)
    i = flat.abs().argmax()
    one_hot[i] = flat[i].sign()
    assert torch.equal(LInf().direction(c), one_hot.reshape(c.shape))
    m = sample(Nuclear(), 3)
    u, _, vh = np.linalg.svd(m.numpy(), full_matrices=False)
    # U V^T by numpy's LAPACK SVD; same conditioning argument as above.
    np.testing.assert_allclose(Nuclear("svd").direction(m).numpy(), u @ vh, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel", MATCH_RMS, ids=ids(MATCH_RMS))
def test_match_sign_rms_is_rescaled_gradient(kernel):
    c = sample(kernel, 4)
    x = c.clone().requires_grad_()
    kernel.value(x).backward()
    expected = x.grad * math.sqrt(c.numel()) / torch.linalg.vector_norm(x.grad)
    torch.testing.assert_close(kernel.direction(c), expected, rtol=1e-10, atol=1e-10)  # float64, as above


@pytest.mark.parametrize(
    "kernel",
    [LpNorm(1.5, match_sign_rms=True), LpNorm(2.0, match_sign_rms=True), LInf(match_sign_rms=True), Nuclear("svd", match_sign_rms=True)],
)
def test_match_sign_rms_gives_rms_of_sign(kernel):
    c = sample(kernel, 5)
    c.view(-1)[::4] = 0.0  # zeros count: sign(0) = 0 has rms sqrt(nnz / numel)
    u = kernel.direction(c)
    rms = u.square().mean().sqrt().item()
    expected = math.sqrt(torch.count_nonzero(c).item() / c.numel())
    assert rms == pytest.approx(expected, rel=1e-12)  # one float64 norm and division: rounding ~1e-15
    assert expected == pytest.approx(torch.sign(c).square().mean().sqrt().item(), rel=1e-15)


# ----------------------------------------------------------------------------------------------
# Fenchel-Young and the conjugates
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", EXACT, ids=ids(EXACT))
@pytest.mark.parametrize("seed", [0, 1])
def test_fenchel_young_equality(kernel, seed):
    c = sample(kernel, seed)
    y = kernel.direction(c)
    lhs = (kernel.value(c) + kernel.conjugate(y)).item()
    rhs = torch.sum(c * y).item()
    assert math.isfinite(lhs)
    # float64 sums of ~50 O(1) terms: relative rounding ~1e-14; rtol 1e-9 checks the closed forms to 9 digits.
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("kernel", BOUNDED_DOMAIN, ids=ids(BOUNDED_DOMAIN))
def test_conjugate_is_infinite_outside_domain(kernel):
    c = sample(kernel, 6)
    if kernel.elementwise:
        y = torch.full_like(c, 0.5)
        y[0, 0] = 2.0  # one coordinate outside the unit box is enough
    else:
        y = 2.0 * kernel.direction(c)  # grad K(c) lies on the dual unit sphere; twice it is clearly outside
        assert dual_norm(kernel, y) == pytest.approx(2.0, rel=1e-12)
    assert kernel.conjugate(y).item() == math.inf
    assert kernel.conjugate(-y).item() == math.inf
    # and the boundary point itself (computed in floating point) counts as inside
    assert math.isfinite(kernel.conjugate(kernel.direction(c)).item())


def dual_norm(kernel: Kernel, y: torch.Tensor) -> float:
    """The norm whose unit ball is the domain of K* for the norm kernels (computed independently)."""
    if isinstance(kernel, LpNorm):
        q = math.inf if kernel.p == 1.0 else kernel.p / (kernel.p - 1.0)
        return float(np.linalg.norm(y.numpy().ravel(), ord=q))
    if isinstance(kernel, LInf):
        return float(np.abs(y.numpy()).sum())
    assert isinstance(kernel, Nuclear)
    return float(np.linalg.svd(y.numpy().reshape(y.shape[0], -1), compute_uv=False).max())


def _inside_domain(kernel: Kernel, g: torch.Generator, shape) -> torch.Tensor:
    """A random y with K*(y) < inf."""
    if isinstance(kernel, (LpNorm, LInf, Nuclear)):  # a norm: a random point of the dual ball of radius 0.95
        y = torch.randn(shape, dtype=F64, generator=g)
        return y * (0.95 * torch.rand((), dtype=F64, generator=g).item() / dual_norm(kernel, y))
    if isinstance(kernel, (Sign, Huber, Relativistic, Tanh)) or kernel == Power(1.0):  # the unit box
        return 0.98 * (2 * torch.rand(shape, dtype=F64, generator=g) - 1)
    return 3 * torch.randn(shape, dtype=F64, generator=g)


@pytest.mark.parametrize("kernel", EXACT, ids=ids(EXACT))
def test_fenchel_inequality(kernel):
    g = torch.Generator().manual_seed(7)
    shape = sample(kernel).shape
    for _ in range(20):
        x = torch.randn(shape, dtype=F64, generator=g) * 2
        inside = _inside_domain(kernel, g, shape)
        kstar_inside = kernel.conjugate(inside).item()
        assert math.isfinite(kstar_inside)
        if isinstance(kernel, (LpNorm, LInf, Nuclear)):
            assert kstar_inside == 0.0  # the indicator of the dual ball
        for y in (inside, torch.randn(shape, dtype=F64, generator=g) * 3):
            kstar = kernel.conjugate(y).item()
            assert kstar >= torch.sum(x * y).item() - kernel.value(x).item() - 1e-12  # float64 rounding only


# Independent scalar formulas k(x) for the elementwise kernels, K(x) = sum k(x_i).
SCALAR_K = {
    "sign": lambda k: lambda x: abs(x),
    "power": lambda k: lambda x: abs(x) ** k.p / k.p,
    "quadratic": lambda k: lambda x: x * x / 2,
    "huber": lambda k: lambda x: x * x / (2 * k.a) if abs(x) <= k.a else abs(x) - k.a / 2,
    "relativistic": lambda k: lambda x: math.sqrt(x * x + k.a * k.a),
    "tanh": lambda k: lambda x: k.a * (float(np.logaddexp(x / k.a, -x / k.a)) - math.log(2.0)),  # log cosh, no overflow
}


@pytest.mark.parametrize("kernel", ELEMENTWISE, ids=ids(ELEMENTWISE))
def test_value_matches_scalar_formula(kernel):
    k = SCALAR_K[kernel.name](kernel)
    x = torch.linspace(-4, 4, 33, dtype=F64)
    expected = sum(k(v) for v in x.tolist())
    assert kernel.value(x).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kernel", ELEMENTWISE, ids=ids(ELEMENTWISE))
@pytest.mark.parametrize("y", [-0.95, -0.6, -0.1, 0.0, 0.3, 0.8, 0.97])
def test_conjugate_matches_numerical_sup(kernel, y):
    k = SCALAR_K[kernel.name](kernel)
    # the maximiser of x*y - k(x) is at |x| <= a*atanh(0.97) ~ 4.2a (tanh), a*0.97/sqrt(1-0.97^2) ~ 4a
    # (relativistic), |y|^(q-1) <= 1 (power), |y| (quadratic): [-20, 20] contains it for a <= 2.
    res = minimize_scalar(lambda x: -(x * y - k(x)), bounds=(-20.0, 20.0), method="bounded", options={"xatol": 1e-10})
    numeric = -res.fun
    closed = kernel.conjugate(torch.tensor([y], dtype=F64)).item()
    # the objective is flat at its maximum (k'' <= 1/a there, or k is piecewise linear with the sup at a
    # kink), so an xatol of 1e-10 puts the value within ~1e-19 + rounding of the sup: 1e-9 is ample.
    assert closed == pytest.approx(numeric, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("kernel", [Sign(), Power(1.0), Huber(0.5), Relativistic(0.5), Tanh(0.5)], ids=lambda k: k.spec)
@pytest.mark.parametrize("y", [-1.5, 1.01, 3.0])
def test_box_conjugates_are_unbounded_beyond_one(kernel, y):
    k = SCALAR_K[kernel.name](kernel)
    # x*y - k(x) >= |x| (|y| - 1) - const for these kernels (k(x) <= |x| + const): the sup is +inf
    gaps = [math.copysign(x, y) * y - k(math.copysign(x, y)) for x in (1e2, 1e4, 1e6)]
    assert gaps[0] < gaps[1] < gaps[2]
    assert kernel.conjugate(torch.tensor([y], dtype=F64)).item() == math.inf


@pytest.mark.parametrize("kernel", [Power(1.5), Power(2.0), Quadratic()], ids=lambda k: k.spec)
def test_unbounded_domain_conjugates_are_finite(kernel):
    y = torch.tensor([-50.0, 3.0, 1e3], dtype=F64)
    assert math.isfinite(kernel.conjugate(y).item())


# ----------------------------------------------------------------------------------------------
# sign(0) = 0 and empty tensors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ALL, ids=ids(ALL))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_direction_of_zero_is_zero(kernel, dtype):
    shape = (4, 6)
    u = kernel.direction(torch.zeros(shape, dtype=dtype))
    assert u.shape == shape and u.dtype == dtype
    assert not torch.isnan(u).any()
    assert torch.equal(u, torch.zeros(shape, dtype=dtype))


@pytest.mark.parametrize("kernel", ELEMENTWISE, ids=ids(ELEMENTWISE))
def test_zero_coordinates_get_zero_direction(kernel):
    c = torch.tensor([0.0, -2.0, 0.0, 0.5, -0.0], dtype=F64)
    u = kernel.direction(c)
    assert torch.equal(u[[0, 2, 4]], torch.zeros(3, dtype=F64))
    assert (u[[1, 3]] != 0).all()


@pytest.mark.parametrize("kernel", ALL, ids=ids(ALL))
def test_direction_of_empty_is_empty(kernel):
    shape = (0, 5) if isinstance(kernel, Nuclear) else (0,)
    u = kernel.direction(torch.empty(shape, dtype=F64))
    assert u.shape == shape and u.dtype == F64


# ----------------------------------------------------------------------------------------------
# Nuclear
# ----------------------------------------------------------------------------------------------


def well_conditioned(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random m x n matrix with singular values in [1, 2], and its polar factor U V^T."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, r, dtype=F64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, r, dtype=F64, generator=g))
    s = torch.linspace(1.0, 2.0, r, dtype=F64)
    return (u * s) @ v.T, u @ v.T


@pytest.mark.parametrize("shape", [(8, 12), (12, 8)])
def test_newton_schulz_matches_polar_factor(shape):
    c, polar = well_conditioned(*shape, seed=shape[0])
    # X_0 = C / ||C||_F has singular values in [1/sqrt(32), 2/sqrt(8)] = [0.18, 0.71]; the cubic map
    # s -> 1.5 s - 0.5 s^3 takes 0.18 to within 1e-16 of 1 in ~10 steps (x1.5 growth, then quadratic
    # convergence), so the default 20 steps are at float64 precision: 1e-12 allows for the ~50 rounding
    # errors accumulated by 20 matrix products on O(1) entries.
    s = 1 / math.sqrt(32)
    for _ in range(20):
        s = 1.5 * s - 0.5 * s**3
    assert abs(s - 1) < 1e-15
    torch.testing.assert_close(Nuclear("newton_schulz").direction(c), polar, rtol=0, atol=1e-12)
    torch.testing.assert_close(Nuclear("svd").direction(c), polar, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 12), (12, 8), (16, 16)])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_muon_singular_values_in_range(shape, dtype):
    c = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    s = torch.linalg.svdvals(Nuclear("muon").direction(c).double())
    assert s.min() >= 0.6 and s.max() <= 1.25, s


def test_nuclear_reshapes_higher_dim_tensors():
    c = torch.randn(4, 3, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    mat = c.reshape(4, 15)
    for kernel in (Nuclear("svd"), Nuclear("newton_schulz"), Nuclear("muon")):
        u = kernel.direction(c)
        assert u.shape == c.shape
        torch.testing.assert_close(u, kernel.direction(mat).reshape(c.shape), rtol=0, atol=1e-14)
    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
    torch.testing.assert_close(Nuclear("svd").direction(c), (u @ vh).reshape(c.shape), rtol=0, atol=1e-12)
    assert Nuclear().value(c).item() == pytest.approx(torch.linalg.svdvals(mat).sum().item(), rel=1e-13)


@pytest.mark.parametrize("shape", [(8, 12), (12, 8)])
def test_nuclear_svd_rank_deficient(shape):
    g = torch.Generator().manual_seed(3)
    m, n = shape
    rank = 3
    u, _ = torch.linalg.qr(torch.randn(m, rank, dtype=F64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(n, rank, dtype=F64, generator=g))
    c = (u * torch.tensor([3.0, 1.0, 0.5], dtype=F64)) @ v.T
    d = Nuclear("svd").direction(c)
    # U_r V_r^T over the 3 nonzero singular values: the other 5 (rounding noise ~1e-16) are dropped.
    torch.testing.assert_close(d, u @ v.T, rtol=0, atol=1e-12)
    assert torch.linalg.matrix_rank(d).item() == rank


def test_nuclear_rejects_1d_parameter_in_param_group():
    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(5))
    with pytest.raises(ValueError, match=r"\(5,\)"):
        lionk.Lion([{"params": [w]}, {"params": [b], "kernel": "nuclear"}], lr=1e-3)
    with pytest.raises(ValueError, match=r"\(5,\)"):
        lionk.Lion([b], lr=1e-3, kernel="nuclear")
    lionk.Lion([{"params": [w], "kernel": "nuclear"}, {"params": [b]}], lr=1e-3)  # 2-D is fine


# ----------------------------------------------------------------------------------------------
# Numerics at extreme scales
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0])
@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_lp_direction_is_scale_safe_in_float32(p, scale):
    base = torch.randn(64, dtype=F64, generator=torch.Generator().manual_seed(4))
    c32 = (base * scale).float()
    u = LpNorm(p).direction(c32)
    assert u.dtype == torch.float32 and torch.isfinite(u).all()
    expected = LpNorm(p).direction(c32.double() / scale)  # the same float32 input, scaled to 1, in float64
    assert expected.abs().max() > 0.05  # a meaningful, non-zero direction
    # float32 arithmetic on O(1) numbers after the rescaling by max|c|: rounding ~1e-7 relative
    torch.testing.assert_close(u.double(), expected, rtol=1e-5, atol=1e-7)


def test_relativistic_huge_input_gives_unit_direction():
    c = torch.tensor([1e30, -1e30, 3e38, -3e38], dtype=torch.float32)
    for a in (0.5, 1.0, 2.0):
        assert torch.equal(Relativistic(a).direction(c), torch.tensor([1.0, -1.0, 1.0, -1.0]))


# ----------------------------------------------------------------------------------------------
# Registry and specs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sign", Sign()),
        ("lp(p=1.5)", LpNorm(1.5)),
        ("lp(1.5)", LpNorm(1.5)),
        ("l2", LpNorm(2.0)),
        ("huber(a=0.5)", Huber(0.5)),
        ("nuclear(method='svd')", Nuclear("svd")),
    ],
)
def test_get_kernel_accepts_specs(spec, expected):
    k = get_kernel(spec)
    assert type(k) is type(expected) and k == expected


@pytest.mark.parametrize("kernel", [*ALL, Power(1.5), Huber(0.5)], ids=lambda k: k.spec)
def test_spec_round_trips(kernel):
    spec = kernel_spec(kernel)
    assert isinstance(spec, str)
    rebuilt = get_kernel(spec)
    assert rebuilt == kernel and type(rebuilt) is type(kernel)
    assert get_kernel(kernel) is kernel


def test_huber_spec_text():
    spec = kernel_spec(Huber(0.5))
    assert spec == "huber(a=0.5)"
    assert get_kernel(spec) == Huber(0.5)
    assert get_kernel(spec) != Huber(0.25)


def test_unknown_kernel_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_kernel("adamw")
    message = str(info.value)
    assert "adamw" in message
    for name in kernel_names():
        assert name in message
    for name in ("sign", "lp", "power", "quadratic", "huber", "relativistic", "tanh", "linf", "nuclear"):
        assert name in kernel_names()


@pytest.mark.parametrize(
    ("make", "param", "bad", "valid"),
    [
        (lambda: LpNorm(3), "p", "3", "[1, 2]"),
        (lambda: Power(0.5), "p", "0.5", "[1, 2]"),
        (lambda: Huber(-1), "a", "-1", "> 0"),
        (lambda: Huber(0), "a", "0", "> 0"),
        (lambda: Relativistic(0), "a", "0", "> 0"),
        (lambda: Tanh(-2.0), "a", "-2.0", "> 0"),
        (lambda: Nuclear(method="qr"), "method", "qr", "newton_schulz"),
        (lambda: Nuclear(steps=0), "steps", "0", ">= 1"),
        (lambda: get_kernel("lp(p=3)"), "p", "3", "[1, 2]"),
        (lambda: get_kernel("huber(a=-1)"), "a", "-1", "> 0"),
        (lambda: get_kernel("nuclear(method='qr')"), "method", "qr", "svd"),
    ],
)
def test_invalid_parameters_raise_with_value_and_range(make, param, bad, valid):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    # the parameter's name followed by the bad value (not just any "0" in the text), and the valid range
    assert re.search(rf"\b{param}\b\W*{re.escape(bad)}(?![\w.])", message), message
    assert valid in message, message


def test_nuclear_method_error_lists_all_methods():
    with pytest.raises(ValueError) as info:
        Nuclear(method="qr")
    for method in ("svd", "newton_schulz", "muon"):
        assert method in str(info.value)
