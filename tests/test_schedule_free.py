"""LionSF: both forms against step-by-step references, the train()/eval() contract, convergence, state, errors."""

from __future__ import annotations

import copy

import pytest
import torch

from lionk import Lion, LionSF
from lionk.kernels import get_kernel
from lionk.schedule_free import sign_agreement

KERNELS = ["sign", "tanh(a=0.5)", "power(p=1.5)", "l2", "nuclear(method='svd')"]
# float64, a handful of steps of the same formula with the operations possibly associated differently
# (the fused C path, lerp): a few ulps per step, no amplification unless a sign flips (random data).
TOL = dict(rtol=1e-12, atol=1e-12)


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 5), (7, 2), (3, 6)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    targets = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    noise = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(6)]
    # gradient of 1/2 ||x - a||^2 plus a fixed noise sequence: depends on where it is evaluated
    grad = lambda t, i, x: x - targets[i] + 0.5 * noise[t][i]
    return init, grad


def _lionk_by_hand(w, g, m, lr, b1, b2, wd, direction):
    c = b1 * m + (1 - b1) * g
    return w * (1 - lr * wd) - lr * direction(c), b2 * m + (1 - b2) * g


@pytest.mark.parametrize("kernel", KERNELS)
def test_agreement_equals_step_by_step_reference(kernel):
    lr, b1, b2, wd = 0.05, 0.9, 0.95, 0.3
    init, grad = _problem()
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = LionSF(params, lr=lr, betas=(b1, b2), weight_decay=wd, kernel=kernel, mode="agreement")
    direction = get_kernel(kernel).direction
    xs, ms = [x.clone() for x in init], [torch.zeros_like(x) for x in init]
    for t in range(6):
        for i, p in enumerate(params):
            p.grad = grad(t, i, p.detach())
        opt.step()
        for i in range(len(xs)):
            g = grad(t, i, xs[i])
            rho = (torch.sign(ms[i]) * torch.sign(g)).mean().clamp(0, 1).item()
            xs[i], ms[i] = _lionk_by_hand(xs[i], g, ms[i], lr * rho, b1, b2, wd, direction)
            assert opt.state[params[i]]["agreement"] == pytest.approx(rho, abs=1e-15)
    for p, x, m in zip(params, xs, ms):
        torch.testing.assert_close(p.detach(), x, **TOL)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, **TOL)


def test_agreement_factor_by_hand():
    m = torch.tensor([1.0, -1.0, 2.0, 0.0, 1.0])
    g = torch.tensor([3.0, -1.0, -1.0, 5.0, 1.0])
    assert sign_agreement(m, g) == pytest.approx(2 / 5)  # products 1, 1, -1, 0, 1
    assert sign_agreement(m, -g) == 0.0  # -2/5 is clipped to 0
    assert sign_agreement(m, torch.tensor([3.0, -1.0, float("nan"), 5.0, 1.0])) == pytest.approx(3 / 5)  # NaN counts 0
    assert sign_agreement(torch.empty(0), torch.empty(0)) == 1.0


def test_agreement_step_by_hand_scales_decay_too():
    lr, wd = 0.1, 0.5
    p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
    opt = LionSF([p], lr=lr, betas=(0.9, 0.99), weight_decay=wd)
    opt.state[p]["exp_avg"] = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    p.grad = torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    opt.step()
    # rho = (1 + 1 + 1 - 1) / 4 = 0.5; c = 0.9 m + 0.1 g = [1.1, 1.1, 1.1, -0.7]; lr * rho = 0.05
    expected = 1 - 0.05 * wd - 0.05 * torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)


def test_agreement_first_step_moves_nothing_and_maximize_negates():
    p = torch.nn.Parameter(torch.randn(10, dtype=torch.float64))
    before = p.detach().clone()
    opt = LionSF([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.randn(10, dtype=torch.float64)
    opt.step()  # m = 0: rho = 0
    assert torch.equal(p.detach(), before)
    a, b = torch.nn.Parameter(before.clone()), torch.nn.Parameter(before.clone())
    opt_a, opt_b = LionSF([a], lr=0.1, weight_decay=0.5, maximize=True), LionSF([b], lr=0.1, weight_decay=0.5)
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        g = torch.randn(10, generator=gen, dtype=torch.float64)
        a.grad, b.grad = g, -g
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


def test_agreement_vanishes_under_pure_noise():
    """Gradients of pure noise: m is independent of the new g, the mean of n signs products is ~N(0, 1/n)."""
    n = 100_000
    p = torch.nn.Parameter(torch.zeros(n))
    opt = LionSF([p], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        p.grad = torch.randn(n, generator=gen)
        opt.step()
        assert opt.state[p]["agreement"] <= 5 / n**0.5  # five standard deviations


def _averaging_reference(init, grad, steps, lr, b1, b2, wd, sf_beta, warmup, power, direction):
    """Defazio et al.'s schedule-free averaging around a Lion-K step, with explicit z, x, y."""
    zs, xs, ys = [x.clone() for x in init], [x.clone() for x in init], [x.clone() for x in init]
    ms = [torch.zeros_like(x) for x in init]
    lr_max, weight_sum = 0.0, 0.0
    for t in range(steps):
        lr_t = lr * min(1.0, (t + 1) / warmup) if warmup else lr
        lr_max = max(lr_max, lr_t)
        weight = lr_max**power
        weight_sum += weight
        ckp1 = weight / weight_sum
        for i in range(len(zs)):
            g = grad(t, i, ys[i])
            zs[i], ms[i] = _lionk_by_hand(zs[i], g, ms[i], lr_t, b1, b2, wd, direction)
            xs[i] = (1 - ckp1) * xs[i] + ckp1 * zs[i]
            ys[i] = sf_beta * xs[i] + (1 - sf_beta) * zs[i]
    return zs, xs, ys, ms


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("warmup", [0, 3])
def test_averaging_equals_step_by_step_reference(kernel, warmup):
    lr, b1, b2, wd, sf_beta, power = 0.05, 0.9, 0.95, 0.3, 0.8, 2.0
    init, grad = _problem(1)
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = LionSF(params, lr=lr, betas=(b1, b2), weight_decay=wd, kernel=kernel, mode="averaging", sf_beta=sf_beta, warmup_steps=warmup)
    opt.train()
    for t in range(6):
        for i, p in enumerate(params):
            p.grad = grad(t, i, p.detach())
        opt.step()
    zs, xs, ys, ms = _averaging_reference(init, grad, 6, lr, b1, b2, wd, sf_beta, warmup, power, get_kernel(kernel).direction)
    for p, z, x, y, m in zip(params, zs, xs, ys, ms):
        torch.testing.assert_close(p.detach(), y, **TOL)
        torch.testing.assert_close(opt.state[p]["z"], z, **TOL)
        torch.testing.assert_close(opt.state[p]["x"], x, **TOL)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, **TOL)
    opt.eval()
    for p, x in zip(params, xs):
        torch.testing.assert_close(p.detach(), x, **TOL)


def _trained(mode, steps=5):
    init, grad = _problem(2)
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = LionSF(params, lr=0.05, weight_decay=0.3, mode=mode)
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = grad(t, i, p.detach())
        opt.step()
    return params, opt, grad


@pytest.mark.parametrize("mode", ["agreement", "averaging"])
def test_train_eval_round_trips_are_exact(mode):
    params, opt, _ = _trained(mode)
    y = [p.detach().clone() for p in params]
    opt.eval()
    x = [p.detach().clone() for p in params]
    opt.eval()  # idempotent
    opt.train()
    opt.train()
    assert all(torch.equal(p, v) for p, v in zip(params, y))
    opt.eval()
    assert all(torch.equal(p, v) for p, v in zip(params, x))
    if mode == "agreement":
        assert all(torch.equal(a, b) for a, b in zip(x, y))
    else:
        assert not any(torch.equal(a, b) for a, b in zip(x, y))


def test_eval_weights_are_the_plain_average_of_the_z_iterates():
    """Constant lr, no warmup: c_{t+1} = 1/(t+1), so x_T = (z_1 + ... + z_T) / T."""
    init, grad = _problem(3)
    params = [torch.nn.Parameter(x.clone()) for x in init]
    opt = LionSF(params, lr=0.05, weight_decay=0.3, mode="averaging")
    history = [[] for _ in params]
    for t in range(6):
        for i, p in enumerate(params):
            p.grad = grad(t, i, p.detach())
        opt.step()
        for i, p in enumerate(params):
            history[i].append(opt.state[p]["z"].clone())
    opt.eval()
    for p, zs in zip(params, history):
        torch.testing.assert_close(p.detach(), torch.stack(zs).mean(0), **TOL)


@pytest.mark.parametrize("mode", ["agreement", "averaging"])
def test_step_in_eval_mode_raises(mode):
    _, opt, _ = _trained(mode, steps=1)
    opt.eval()
    with pytest.raises(RuntimeError, match=r"eval mode.*optimizer\.train\(\)"):
        opt.step()
    opt.train()
    opt.step()


# f(x) = 1/2 sum h_i (x_i - a_i)^2 with sign and wd = 1: the optimum is clip(a, -1, 1).
H = torch.linspace(0.5, 2.0, 8, dtype=torch.float64)
A = torch.tensor([3.0, -3.0, 0.3, -0.7, 0.5, -0.2, 0.9, 5.0], dtype=torch.float64)
INSIDE = A.abs() < 1


def _run_quadratic(mode, lr, steps):
    p = torch.nn.Parameter(torch.zeros(8, dtype=torch.float64))
    opt = LionSF([p], lr=lr, weight_decay=1.0, mode=mode)
    for _ in range(steps):
        p.grad = H * (p.detach() - A)
        opt.step()
    opt.eval()
    return p.detach()


def test_averaging_constant_lr_converges_on_a_convex_quadratic():
    lr, steps = 1e-2, 2000
    x = _run_quadratic("averaging", lr, steps)
    # Outside the box (|a| > 1) the gradient at y (inside the box) never changes sign, so sign(c) is fixed and
    # z_t = 1 - q^t exactly (q = 1 - lr*wd, from 0); the average is then 1 - (1/T) sum_{t<=T} q^t in closed form.
    q = 1 - lr
    closed = 1 - (q * (1 - q**steps) / (1 - q)) / steps
    torch.testing.assert_close(x[~INSIDE].abs(), torch.full((int((~INSIDE).sum()),), closed, dtype=torch.float64), **TOL)
    # Inside, z ends in a cycle of width about lr around a_i and the average of a cycle lies inside it: within lr.
    assert (x[INSIDE] - A[INSIDE]).abs().max() <= lr


def test_agreement_constant_lr_converges_on_a_convex_quadratic():
    lr = 1e-2
    x = _run_quadratic("agreement", lr, 2000)
    # Deterministic run; within one largest step inside the box, lr * (1 + wd*|x|) <= 2 lr, of the optimum.
    assert (x - A.clamp(-1, 1)).abs().max() <= 2 * lr


def test_averaging_keeps_every_sequence_in_the_box():
    """For sign with lr*wd <= 1 an iterate inside the box stays inside; x and y are convex combinations of z."""
    wd = 2.0
    p = torch.nn.Parameter(torch.empty(1000, dtype=torch.float64).uniform_(-0.5, 0.5))
    opt = LionSF([p], lr=0.05, weight_decay=wd, mode="averaging", sf_beta=0.7)
    gen = torch.Generator().manual_seed(4)
    for _ in range(60):
        p.grad = 10 * torch.randn(1000, generator=gen, dtype=torch.float64) + 3
        opt.step()
        for v in (p.detach(), opt.state[p]["z"], opt.state[p]["x"]):
            assert (wd * v).abs().max() <= 1 + 1e-12


@pytest.mark.parametrize("mode", ["agreement", "averaging"])
def test_state_dict_round_trip_continues_identically(mode):
    params, opt, grad = _trained(mode, steps=3)
    clone_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    clone = LionSF(clone_params, lr=1.0, mode=mode)
    clone.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert clone.param_groups[0]["lr"] == 0.05 and clone.param_groups[0]["sf_step"] == opt.param_groups[0]["sf_step"]
    for t in range(3, 6):
        for ps in (params, clone_params):
            for i, p in enumerate(ps):
                p.grad = grad(t, i, p.detach())
        opt.step()
        clone.step()
    opt.eval()
    clone.eval()
    assert all(torch.equal(a, b) for a, b in zip(params, clone_params))


def test_old_state_dict_without_schedule_free_keys_loads_with_defaults():
    params, opt, _ = _trained("agreement", steps=2)
    state = opt.state_dict()
    for group in state["param_groups"]:
        for key in ("sf_beta", "warmup_steps", "weight_lr_power", "train_mode", "sf_step", "lr_max", "weight_sum", "mode", "cautious"):
            del group[key]
    fresh = LionSF([torch.nn.Parameter(p.detach().clone()) for p in params])
    fresh.load_state_dict(state)
    group = fresh.param_groups[0]
    assert group["mode"] == "agreement" and group["sf_beta"] == 0.9 and group["train_mode"] and group["cautious"] is False


def test_is_a_lion_with_the_same_validation_and_kernels():
    p = torch.nn.Parameter(torch.zeros(3, 3))
    assert isinstance(LionSF([p]), Lion)
    with pytest.raises(ValueError, match="kernel 'nuclear' needs parameters with at least 2 dims"):
        LionSF([torch.nn.Parameter(torch.zeros(3))], kernel="nuclear")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="cosine"), r"Invalid mode: 'cosine' \(must be one of \('agreement', 'averaging'\)\)"),
        (dict(sf_beta=1.5), r"Invalid sf_beta: 1.5 \(must be in \[0, 1\]\)"),
        (dict(warmup_steps=-1), r"Invalid warmup_steps: -1 \(must be an integer >= 0\)"),
        (dict(warmup_steps=2.5), r"Invalid warmup_steps: 2.5"),
        (dict(weight_lr_power=float("nan")), r"Invalid weight_lr_power: nan \(must be a finite number >= 0\)"),
        (dict(lr=-1.0), r"Invalid learning rate: -1.0 \(must be a finite number >= 0\)"),
        (dict(betas=(0.9, 1.0)), r"Invalid beta parameter at index 1: 1.0 \(must be in \[0, 1\)\)"),
        (dict(weight_decay=-0.1), r"Invalid weight_decay: -0.1"),
        (dict(kernel="nope"), r"Unknown kernel 'nope'"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LionSF([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_invalid_param_group_is_named_and_not_added():
    opt = LionSF([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=r"Invalid mode in param group 1: 'sgd'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "mode": "sgd"})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("mode", ["agreement", "averaging"])
def test_complex_params_are_pairs_of_reals_and_tensor_lr_equals_float_lr(mode):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, generator=gen, dtype=torch.complex128)
    a, b, c = (torch.nn.Parameter(v.clone()) for v in (x, torch.view_as_real(x), torch.view_as_real(x)))
    opts = [
        LionSF([a], lr=0.1, weight_decay=0.2, mode=mode),
        LionSF([b], lr=0.1, weight_decay=0.2, mode=mode),
        LionSF([c], lr=torch.tensor(0.1, dtype=torch.float64), weight_decay=0.2, mode=mode),
    ]
    for _ in range(4):
        g = torch.randn(6, generator=gen, dtype=torch.complex128) + a.detach() - 1
        a.grad, b.grad, c.grad = g, torch.view_as_real(g).clone(), torch.view_as_real(g).clone()
        for opt in opts:
            opt.step()
    for opt in opts:
        opt.eval()
    assert torch.equal(torch.view_as_real(a.detach()), b.detach()) and torch.equal(b, c)
