"""lionk.Lion: Program 1 exactly, the paths against the reference, and torch.optim's conventions."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import lionk
from lionk import Lion
from lionk.functional import lion
from lionk.kernels import get_kernel

ELEMENTWISE = ["sign", "power(p=1.5)", "quadratic", "huber(a=0.5)", "relativistic(a=0.5)", "tanh(a=0.5)"]
TENSOR_SCOPE = ["lp(p=1.5)", "l2", "lp(p=2.0, match_sign_rms=True)", "linf", "nuclear(method='svd')", "nuclear"]
ALL_KERNELS = ELEMENTWISE + TENSOR_SCOPE


def program1(p, g, m, lr, b1, b2, wd):
    """Program 1 of the Lion paper, written out in float64 with Python scalars."""
    c = b1 * m + (1 - b1) * g
    u = torch.sign(c)
    return p - (u + wd * p) * lr, b2 * m + (1 - b2) * g


# ----------------------------------------------------------------------------------------------
# Program 1, exact steps
# ----------------------------------------------------------------------------------------------


def test_first_step_is_plus_minus_lr_without_decay():
    torch.manual_seed(0)
    p0 = torch.randn(50, dtype=torch.float64)
    g = torch.randn(50, dtype=torch.float64)
    p = p0.clone().requires_grad_()
    opt = Lion([p], lr=0.01, betas=(0.9, 0.99))
    p.grad = g.clone()
    opt.step()
    # zero momentum: c = (1-b1) g, so every weight moves by exactly -lr*sign(g)
    torch.testing.assert_close(p.detach() - p0, -0.01 * torch.sign(g), rtol=0, atol=1e-15)
    assert torch.equal(opt.state[p]["exp_avg"], (1 - 0.99) * g)  # m_1 = (1 - b2) g exactly


def test_hand_computed_steps_with_decay_and_momentum():
    torch.manual_seed(1)
    lr, b1, b2, wd = 3e-3, 0.9, 0.99, 0.5
    p_ref = torch.randn(7, 5, dtype=torch.float64)
    m_ref = torch.zeros_like(p_ref)
    p = p_ref.clone().requires_grad_()
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    for _ in range(20):
        g = torch.randn_like(p_ref)
        p.grad = g.clone()
        opt.step()
        p_ref, m_ref = program1(p_ref, g, m_ref, lr, b1, b2, wd)
    torch.testing.assert_close(p.detach(), p_ref, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m_ref, rtol=1e-13, atol=1e-15)


PATHS = {"reference": dict(fused=False, foreach=False), "foreach": dict(fused=False, foreach=True), "fused": dict(fused=True)}


@pytest.mark.parametrize("path", PATHS)
def test_weight_decay_modes_by_hand(path):
    """x = [2, -2, 2, -2, 0.5] with m = 0, g = [1, 1, -1, -1, 0]: u = sign(c) = sign(g) = [1, 1, -1, -1, 0]."""
    x0 = torch.tensor([2.0, -2.0, 2.0, -2.0, 0.5], dtype=torch.float64)
    g = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0], dtype=torch.float64)
    u = torch.sign(g)
    lr, wd = 0.1, 0.5
    expected = {
        "decoupled": x0 * (1 - lr * wd) - lr * u,
        # the scheduler halved the lr after the group was made: the decay keeps wd * lr / initial_lr = 0.5 * 0.05 / 0.1
        "independent": x0 * (1 - wd * (lr / 2) / lr) - (lr / 2) * u,
        # decay only where u * x > 0: entries 0 and 3 (and never the entry with u = 0)
        "cautious": torch.where(u * x0 > 0, x0 * (1 - lr * wd), x0) - lr * u,
    }
    for mode, want in expected.items():
        p = torch.nn.Parameter(x0.clone())
        opt = Lion([p], lr=lr, weight_decay=wd, weight_decay_mode=mode, **PATHS[path])
        if mode == "independent":
            opt.param_groups[0]["lr"] = lr / 2
        p.grad = g.clone()
        opt.step()
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-15)
        assert opt.state_dict()["param_groups"][0]["weight_decay_mode"] == mode


def test_independent_decay_follows_an_lr_scheduler_and_refuses_a_zero_initial_lr():
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Lion([p], lr=0.1, weight_decay=0.5, weight_decay_mode="independent")
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    for t in range(3):
        p.grad = torch.zeros(3, dtype=torch.float64)  # only the decay moves p
        before = p.detach().clone()
        opt.step()
        scheduler.step()
        torch.testing.assert_close(p.detach(), before * (1 - 0.5 * (0.1 * 0.5**t) / 0.1), rtol=0, atol=1e-15)
    q = torch.nn.Parameter(torch.ones(3))
    opt = Lion([q], lr=0.0, weight_decay=0.5, weight_decay_mode="independent")
    q.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"initial_lr is 0\.0"):
        opt.step()


def test_momentum_is_the_analytic_ema():
    lr, b2 = 1e-3, 0.99
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = Lion([p], lr=lr, betas=(0.9, b2))
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    steps = 37
    for _ in range(steps):
        p.grad = g.clone()
        opt.step()
    # m_t = (1 - b2^t) g for a constant gradient from m_0 = 0
    torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - b2**steps) * g, rtol=1e-13, atol=0)


def test_zero_gradient_rows_only_decay():
    """sign(0) = 0: a weight with zero gradient and zero momentum moves only by its decay (DeepSpeed's bug moved it by lr)."""
    lr, wd = 0.1, 0.3
    w0 = torch.randn(4, 6, dtype=torch.float64)
    w = w0.clone().requires_grad_()
    opt = Lion([w], lr=lr, weight_decay=wd)
    grad = torch.randn(4, 6, dtype=torch.float64)
    grad[1] = 0.0
    for _ in range(5):
        w.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(w.detach()[1], w0[1] * (1 - lr * wd) ** 5, rtol=1e-14, atol=0)
    assert torch.all(opt.state[w]["exp_avg"][1] == 0)


def test_frozen_parameter_never_moves():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    frozen = model[0].weight.detach().clone()
    opt = Lion(model.parameters(), lr=0.1, weight_decay=1.0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().sum().backward()
        opt.step()
    assert torch.equal(model[0].weight, frozen)
    assert model[0].weight not in opt.state


def test_maximize_negates_the_gradient():
    torch.manual_seed(2)
    a = torch.randn(10, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    opt_a = Lion([a], lr=0.01, weight_decay=0.1, maximize=True)
    opt_b = Lion([b], lr=0.01, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(10)
        a.grad, b.grad = g.clone(), -g
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# Storage precision (every path against the reference: test_conformance.py)
# ----------------------------------------------------------------------------------------------


def _tensors(dtype, shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


SHAPES = [(5, 7), (3,), (), (0,), (4, 3, 2), (6, 8)]


@pytest.mark.parametrize("kernel", ["sign", "tanh(a=0.5)", "l2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fused", [False, None])
def test_low_precision_is_the_float32_step_rounded(kernel, dtype, fused):
    """One step on low-precision storage equals the float32 step on the same values, rounded once (to nearest)."""
    params = _tensors(dtype, SHAPES)
    grads = _tensors(dtype, SHAPES, seed=5)
    exp_avgs = _tensors(dtype, SHAPES, seed=6)
    p32, g32, m32 = ([t.float().clone() for t in ts] for ts in (params, grads, exp_avgs))
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, kernel=kernel, fused=fused, foreach=False)
    lion(p32, g32, m32, **kw)
    lion(params, grads, exp_avgs, **kw)
    for low, high in zip(params + exp_avgs, p32 + m32):
        assert low.dtype == dtype
        assert torch.equal(low, high.to(dtype))


def test_mixed_gradient_dtypes_step_in_opmath_on_every_path():
    """A float32 parameter may receive a bfloat16 or float64 gradient (p.grad_dtype = None): every path steps in
    float32 and keeps the momentum float32 (foreach used to keep the gradient's dtype for all but the first tensor)."""
    results = []
    for path in (dict(fused=False, foreach=False), dict(fused=False, foreach=True), dict()):
        params = [torch.nn.Parameter(torch.zeros(1000)) for _ in range(3)]
        opt = Lion(params, lr=1e-3, **path)
        g = torch.Generator().manual_seed(0)
        for _ in range(20):
            for p, dtype in zip(params, (torch.float32, torch.bfloat16, torch.float64)):
                p.grad_dtype = None
                p.grad = torch.randn(1000, generator=g, dtype=torch.float64).to(dtype)
            opt.step()
        assert all(opt.state[p]["exp_avg"].dtype == torch.float32 for p in params)
        results.append([t.detach().clone() for p in params for t in (p, opt.state[p]["exp_avg"])])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_complex_params_are_pairs_of_reals():
    torch.manual_seed(4)
    z = torch.randn(5, 3, dtype=torch.complex128, requires_grad=True)
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    opt_z = Lion([z], lr=0.05, weight_decay=0.3)
    opt_r = Lion([r], lr=0.05, weight_decay=0.3)
    for _ in range(4):
        gz = torch.randn(5, 3, dtype=torch.complex128)
        z.grad = gz
        r.grad = torch.view_as_real(gz).clone()
        opt_z.step()
        opt_r.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())
    assert torch.equal(torch.view_as_real(opt_z.state[z]["exp_avg"]), opt_r.state[r]["exp_avg"])


def test_non_contiguous_and_channels_last_params():
    torch.manual_seed(5)
    base = torch.randn(6, 4, dtype=torch.float64)
    p_nc = torch.nn.Parameter(base.t())  # non-contiguous view
    p_c = torch.nn.Parameter(base.t().contiguous())
    conv = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    q_cl = torch.nn.Parameter(conv.to(memory_format=torch.channels_last))
    q_c = torch.nn.Parameter(conv.clone())
    opt_a = Lion([p_nc, q_cl], lr=0.01, weight_decay=0.1)
    opt_b = Lion([p_c, q_c], lr=0.01, weight_decay=0.1)
    for _ in range(3):
        g1, g2 = torch.randn(4, 6, dtype=torch.float64), torch.randn(2, 3, 4, 5, dtype=torch.float64)
        p_nc.grad, p_c.grad, q_cl.grad, q_c.grad = g1.clone(), g1.clone(), g2.clone(), g2.clone()
        opt_a.step()
        opt_b.step()
    assert not p_nc.is_contiguous()
    assert opt_a.state[q_cl]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(p_nc, p_c) and torch.equal(q_cl, q_c)


# ----------------------------------------------------------------------------------------------
# Non-finite gradients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("kernel", ["sign", "tanh(a=0.5)", "l2"])
def test_nonfinite_propagates_to_the_weight(bad, kernel):
    """lion-pytorch freezes such a weight forever (sign(NaN) = 0); lionk makes it visible, as AdamW does."""
    assert torch.sign(torch.tensor(float("nan"))).item() == 0  # the trap this guards against
    p = torch.nn.Parameter(torch.ones(4))
    opt = Lion([p], lr=0.1, kernel=kernel)
    p.grad = torch.tensor([1.0, bad, -1.0, 0.5])
    opt.step()
    assert not torch.isfinite(p[1])
    if get_kernel(kernel).elementwise:
        assert torch.isfinite(p[[0, 2, 3]]).all()


@pytest.mark.parametrize("kernel", ["sign", "quadratic", "l2", "nuclear(method='svd')"])
@pytest.mark.parametrize("foreach", [False, True])
def test_nonfinite_skip_keeps_weight_and_momentum(kernel, foreach):
    torch.manual_seed(6)
    p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = Lion([p], lr=0.1, weight_decay=0.5, kernel=kernel, nonfinite="skip", foreach=foreach)
    p.grad = torch.randn(3, 4, dtype=torch.float64)
    opt.step()
    before_p, before_m = p.detach().clone(), opt.state[p]["exp_avg"].clone()
    g = torch.randn(3, 4, dtype=torch.float64)
    g[0, 1], g[2, 3], g[1, 0] = float("nan"), float("inf"), -float("inf")
    p.grad = g
    opt.step()
    bad = ~torch.isfinite(g)
    assert torch.equal(p.detach()[bad], before_p[bad])
    assert torch.equal(opt.state[p]["exp_avg"][bad], before_m[bad])
    assert torch.isfinite(p).all() and torch.isfinite(opt.state[p]["exp_avg"]).all()
    assert (p.detach()[~bad] != before_p[~bad]).all()
    if get_kernel(kernel).elementwise:
        # the finite entries moved exactly as they would have with the bad entries absent
        q = torch.nn.Parameter(before_p.clone())
        ref = Lion([q], lr=0.1, weight_decay=0.5, kernel=kernel)
        ref.state[q]["exp_avg"] = before_m.clone()
        q.grad = torch.where(bad, 0.0, g)
        ref.step()
        assert torch.equal(p.detach()[~bad], q.detach()[~bad])


# ----------------------------------------------------------------------------------------------
# Validation and errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1e-3), "-0.001"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(betas=(1.0, 0.99)), "index 0: 1.0 (must be in [0, 1))"),
        (dict(betas=(0.9, -0.1)), "index 1: -0.1 (must be in [0, 1))"),
        (dict(weight_decay=-0.5), "weight_decay: -0.5"),
        (dict(kernel="adam"), "valid names"),
        (dict(kernel="lp(p=3)"), "[1, 2]"),
        (dict(kernel="huber(a=-1)"), "-1"),
        (dict(nonfinite="ignore"), "'ignore'"),
        (dict(maximize="yes"), "maximize"),
        (dict(foreach="auto"), "foreach"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_value(kwargs, message):
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError) as err:
        Lion([p], **kwargs)
    assert message in str(err.value)


def test_invalid_param_group_is_named_and_not_added():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt = Lion([a], lr=1e-3)
    with pytest.raises(ValueError, match=r"param group 1"):
        opt.add_param_group({"params": [b], "betas": (0.9, 1.5)})
    assert len(opt.param_groups) == 1
    with pytest.raises(ValueError, match=r"shape \(3,\).*param group 1"):
        opt.add_param_group({"params": [b], "kernel": "nuclear"})


def test_sparse_gradient_raises_runtime_error():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = Lion(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


# ----------------------------------------------------------------------------------------------
# torch.optim conventions
# ----------------------------------------------------------------------------------------------


def test_param_groups_use_their_own_hyperparameters():
    torch.manual_seed(7)
    a = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = Lion([{"params": [a], "kernel": "l2", "lr": 0.05}, {"params": [b], "weight_decay": 1.0, "betas": (0.5, 0.9)}], lr=0.01)
    a0, b0 = a.detach().clone(), b.detach().clone()
    ga, gb = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    a.grad, b.grad = ga.clone(), gb.clone()
    opt.step()
    torch.testing.assert_close(a.detach(), a0 - 0.05 * ga / ga.norm(), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(b.detach(), b0 * (1 - 0.01) - 0.01 * torch.sign(gb), rtol=1e-14, atol=1e-15)
    assert opt.param_groups[0]["kernel"] == "lp(p=2.0, match_sign_rms=False)"


def test_closure_runs_with_grad_and_its_loss_is_returned():
    model = torch.nn.Linear(3, 1)
    opt = Lion(model.parameters(), lr=0.01)
    x = torch.randn(5, 3)

    def closure():
        assert torch.is_grad_enabled()
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad


def test_params_without_grad_are_skipped_and_step_with_no_grads_is_a_no_op():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = Lion([a, b], lr=0.1, weight_decay=1.0)
    opt.step()
    assert torch.equal(a, torch.ones(2)) and len(opt.state) == 0
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b, torch.ones(2)) and b not in opt.state


def test_tensor_lr_equals_float_lr():
    torch.manual_seed(8)
    x = torch.randn(6, dtype=torch.float64)
    a, b = torch.nn.Parameter(x.clone()), torch.nn.Parameter(x.clone())
    opt_a = Lion([a], lr=torch.tensor(0.01, dtype=torch.float64), weight_decay=0.5)
    opt_b = Lion([b], lr=0.01, weight_decay=0.5)
    for _ in range(3):
        g = torch.randn(6, dtype=torch.float64)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=1e-15, atol=1e-16)


def test_lr_scheduler_drives_the_step_size():
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = Lion([p], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    expected = 0.0
    for _ in range(5):
        expected -= opt.param_groups[0]["lr"]  # constant positive gradient: each step is -lr
        p.grad = torch.ones(1, dtype=torch.float64)
        opt.step()
        sched.step()
    torch.testing.assert_close(p.detach(), torch.tensor([expected], dtype=torch.float64), rtol=1e-14, atol=0)
    assert opt.param_groups[0]["initial_lr"] == 0.1


def test_grad_scaler_skips_inf_steps_and_unscales_exactly():
    torch.manual_seed(9)
    model = torch.nn.Linear(4, 2)
    twin = copy.deepcopy(model)
    opt, opt_twin = Lion(model.parameters(), lr=0.01), Lion(twin.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        opt_twin.zero_grad()
        scaler.scale(model(x).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
        twin(x).square().mean().backward()
        opt_twin.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # unscaling by a power of two is exact up to fp32 rounding of the loss
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(x).square().mean() * float("inf")).backward()
    scaler.step(opt)  # inf gradients: the scaler skips the step
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


def test_state_dict_round_trip_and_dtype_layout():
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    opt = Lion(model.parameters(), lr=0.01, kernel="tanh(a=0.5)")
    model(torch.randn(4, 3, dtype=torch.bfloat16)).sum().backward()
    opt.step()
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"exp_avg", "step"} and sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    assert sd["state"][0]["step"] == 1  # counts the stochastically rounded steps
    assert sd["param_groups"][0]["kernel"] == "tanh(a=0.5)"
    opt2 = Lion(model.parameters(), lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.01 and opt2.param_groups[0]["kernel"] == "tanh(a=0.5)"
    assert torch.equal(opt2.state[model.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])


def test_state_dict_without_new_flags_loads_with_defaults():
    """A checkpoint written before a flag existed (or by lion-pytorch) gets the flag's default."""
    p = torch.nn.Parameter(torch.zeros(2))
    opt = Lion([p], lr=0.01)
    sd = opt.state_dict()
    for key in ("kernel", "maximize", "nonfinite", "foreach"):
        del sd["param_groups"][0][key]
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["kernel"] == "sign" and opt.param_groups[0]["nonfinite"] == "propagate"


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys, torch, lionk
    path, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    opt = lionk.Lion(model.parameters(), lr=3e-3, weight_decay=0.1, kernel="{kernel}")
    data = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 8, generator=data), torch.randn(32, 4, generator=data)) for _ in range(20)]
    def train(steps):
        for x, y in steps:
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    if mode == "save":
        train(batches[:10])
        torch.save({{"model": model.state_dict(), "opt": opt.state_dict()}}, path)
    elif mode == "resume":
        ckpt = torch.load(path)  # weights_only=True: the state dict is plain data
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        train(batches[10:])
        torch.save(model.state_dict(), path + ".resumed")
    else:
        train(batches)
        torch.save(model.state_dict(), path + ".full")
    """
)


@pytest.mark.parametrize("kernel", ["sign", "lp(p=1.5)"])
def test_resume_in_a_fresh_process_is_bitwise_identical(tmp_path, kernel):
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT.format(kernel=kernel))
    ckpt = str(tmp_path / "ckpt.pt")
    for mode in ("save", "resume", "full"):
        subprocess.run([sys.executable, str(script), ckpt, mode], check=True, timeout=120)
    resumed, full = torch.load(ckpt + ".resumed"), torch.load(ckpt + ".full")
    for key in full:
        assert torch.equal(resumed[key], full[key]), key


def test_deepcopy_pickle_and_repr():
    model = torch.nn.Linear(3, 2)
    opt = Lion(model.parameters(), lr=0.02, kernel="huber(a=0.25)")
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    clone = copy.deepcopy(opt)
    assert torch.equal(clone.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    restored = pickle.loads(pickle.dumps(opt))
    assert restored.param_groups[0]["kernel"] == "huber(a=0.25)"
    text = repr(opt)
    assert text.startswith("Lion (") and "kernel: huber(a=0.25)" in text and "lr: 0.02" in text


def test_custom_kernel_object():
    class Cube(lionk.Kernel):
        name = "cube"

        def direction(self, c):
            return c**3

    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt = Lion([p], lr=1.0, betas=(0.0, 0.0), kernel=Cube())
    p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), -torch.tensor([1.0, -8.0, 0.125], dtype=torch.float64), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Interop with peers
# ----------------------------------------------------------------------------------------------


def test_lion_pytorch_state_dict_loads_and_continues_on_the_same_trajectory():
    lion_pytorch = pytest.importorskip("lion_pytorch")
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    peer_model = copy.deepcopy(model)
    peer = lion_pytorch.Lion(peer_model.parameters(), lr=1e-3, weight_decay=0.1)
    batches = [(torch.randn(16, 6), torch.randn(16, 3)) for _ in range(12)]

    def step(m, o, x, y):
        o.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        o.step()

    for x, y in batches[:6]:
        step(peer_model, peer, x, y)
    ours_model = copy.deepcopy(peer_model)
    ours = Lion(ours_model.parameters(), lr=0.5)
    ours.load_state_dict(copy.deepcopy(peer.state_dict()))  # a live state dict shares its tensors
    assert ours.param_groups[0]["lr"] == 1e-3 and ours.param_groups[0]["kernel"] == "sign"
    for x, y in batches[6:]:
        step(peer_model, peer, x, y)
        step(ours_model, ours, x, y)
    # same signs every step, so the weights agree to fp32 rounding of p*(1-lr*wd) - lr*sign(c)
    for a, b in zip(ours_model.parameters(), peer_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for p, q in zip(ours_model.parameters(), peer_model.parameters()):
        torch.testing.assert_close(ours.state[p]["exp_avg"], peer.state[q]["exp_avg"], rtol=1e-5, atol=1e-8)
