"""Checked at the boundary: every state, gradient and setting is checked against its parameter before any memory is
written. One regression test per defect found by the fault and fuzz battery of 2026-11-30."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import lionk
from lionk import Lion, LionSF, functional


def _linear(out_features, in_features=10, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features)


def _trained(model, steps=2, **kwargs):
    opt = Lion(model.parameters(), lr=1e-3, **kwargs)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(4, model.in_features)).square().sum().backward()
        opt.step()
    return opt


def _snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(opt.state_dict())


def _assert_unchanged(model, opt, snapshot):
    params, state = snapshot
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    now = opt.state_dict()
    assert now["param_groups"] == state["param_groups"]
    for key, entry in state["state"].items():
        for name, value in entry.items():
            assert torch.equal(now["state"][key][name], value)


# ---- load_state_dict ----------------------------------------------------------------------------------------


def test_momentum_of_another_shape_is_refused_at_load_and_nothing_changes():
    """The state of Linear(10, 20) loaded into Linear(10, 10): the C loop used to read and write past the tensors."""
    big, small = _linear(20), _linear(10)
    source = _trained(big).state_dict()
    opt = _trained(small)
    snapshot = _snapshot(small, opt)
    with pytest.raises(
        ValueError, match=r"loaded state of parameter 0: state\['exp_avg'\] has shape \(20, 10\), the parameter has \(10, 10\)"
    ):
        opt.load_state_dict(source)
    _assert_unchanged(small, opt, snapshot)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda g, s: g.update(betas=(1.5, 0.99)),
            r"Invalid beta parameter at index 0: 1.5 \(must be in \[0, 1\)\) in loaded param group 0",
        ),
        (lambda g, s: g.update(lr=-1.0), r"Invalid learning rate: -1.0 \(must be a finite number >= 0\) in loaded param group 0"),
        (lambda g, s: g.update(weight_decay=float("nan")), r"Invalid weight_decay: nan"),
        (lambda g, s: g.update(maximize="yes"), r"Invalid maximize: 'yes' \(must be True or False\)"),
        (lambda g, s: g.update(kernel="nope"), r"Unknown kernel 'nope'"),
        (lambda g, s: s[0].update(exp_avg=None), r"loaded state of parameter 0: 'exp_avg' is NoneType, not a tensor"),
        (lambda g, s: s[0].update(exp_avg=[0.0] * 100), r"'exp_avg' is list, not a tensor"),
        (lambda g, s: s[0].update(exp_avg=torch.zeros(1, dtype=torch.float64)), r"has shape \(1,\), the parameter has \(10, 10\)"),
        (
            lambda g, s: s[0].update(exp_avg=torch.zeros(10, 10, dtype=torch.int8)),
            r"int8 state\['exp_avg'\] has no state\['exp_avg_absmax'\]",
        ),
    ],
)
def test_invalid_loaded_state_is_refused_naming_the_problem(edit, message):
    model = _linear(10)
    opt = _trained(model)
    sd = copy.deepcopy(opt.state_dict())
    edit(sd["param_groups"][0], sd["state"])
    snapshot = _snapshot(model, opt)
    with pytest.raises((ValueError, TypeError), match=message):
        opt.load_state_dict(sd)
    _assert_unchanged(model, opt, snapshot)


@pytest.mark.parametrize("peer", ["adamw", "sgd", "adamw-fresh"])
def test_another_optimizers_state_dict_is_refused_with_a_pointer_to_load_peer_state(peer):
    model = _linear(10)
    other = copy.deepcopy(model)
    foreign = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9) if peer == "sgd" else torch.optim.AdamW(other.parameters())
    if peer != "adamw-fresh":
        other(torch.randn(4, 10)).sum().backward()
        foreign.step()
    opt = _trained(model)
    snapshot = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"not a Lion's.*lionk\.load_peer_state"):
        opt.load_state_dict(foreign.state_dict())
    _assert_unchanged(model, opt, snapshot)


def test_int8_state_with_short_codes_or_scales_is_refused():
    model = _linear(100, 100)
    opt = _trained(model, momentum_dtype="int8")
    for key, short in (("exp_avg", torch.zeros(100, 50, dtype=torch.int8)), ("exp_avg_absmax", torch.zeros(3))):
        sd = copy.deepcopy(opt.state_dict())
        sd["state"][0][key] = short
        with pytest.raises(ValueError, match="loaded state of parameter 0"):
            opt.load_state_dict(sd)


def test_non_contiguous_int8_codes_load_as_their_values():
    """Codes with identical values in another layout: the blocks follow row-major order, so they load contiguous and
    step as the contiguous codes do (2,080 of 4,096 weights stepped the wrong way before)."""
    torch.manual_seed(0)
    weights = torch.randn(64, 64)
    results = []
    for transposed in (False, True):
        p = torch.nn.Parameter(weights.clone())
        opt = Lion([p], lr=0.1, momentum_dtype="int8")
        p.grad = torch.randn(64, 64, generator=torch.Generator().manual_seed(1))
        opt.step()
        sd = copy.deepcopy(opt.state_dict())
        if transposed:
            sd["state"][0]["exp_avg"] = sd["state"][0]["exp_avg"].t().contiguous().t()
            assert not sd["state"][0]["exp_avg"].is_contiguous()
        opt.load_state_dict(sd)
        p.grad = -torch.ones(64, 64)
        opt.step()
        results.append(p.detach().clone())
    assert torch.equal(*results)


def test_old_checkpoints_without_a_step_tensor_load():
    model = _linear(10)
    opt = _trained(model)
    sd = copy.deepcopy(opt.state_dict())
    for entry in sd["state"].values():
        entry.pop("step")
    sd["state"][1]["step"] = 7  # lionk 0.1 kept an int where it rounded stochastically
    opt.load_state_dict(sd)
    assert all(isinstance(s["step"], torch.Tensor) and s["step"].dtype == torch.float32 for s in opt.state.values())
    assert opt.state[model.bias]["step"].item() == 7


# ---- the state and the settings at a step ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda s, p: s.update(exp_avg=torch.zeros(5)), r"has shape \(5,\), the parameter has \(10, 10\)"),
        (lambda s, p: s.update(exp_avg=torch.zeros(())), r"has shape \(\), the parameter has \(10, 10\)"),
        (lambda s, p: s.update(exp_avg=torch.zeros(10).expand(10, 10)), r"overlapping memory"),
        (lambda s, p: s.update(exp_avg=torch.zeros(10, 10, device="meta")), r"is on meta, the parameter on cpu"),
        (lambda s, p: s.update(exp_avg=torch.zeros(10, 10, dtype=torch.int8)), r"has no state\['exp_avg_absmax'\]"),
        (lambda s, p: s.update(exp_avg="zeros"), r"is str, not a tensor"),
    ],
)
@pytest.mark.parametrize("path", [dict(fused=False), dict()], ids=["reference", "default"])
def test_corrupt_state_is_refused_before_anything_is_written(corrupt, message, path):
    model = _linear(10)
    opt = _trained(model, **path)
    corrupt(opt.state[model.weight], model.weight)
    before = [p.detach().clone() for p in model.parameters()]
    bias_state = opt.state[model.bias]["exp_avg"].clone()
    model(torch.randn(4, 10)).sum().backward()
    with pytest.raises(ValueError, match=message):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert torch.equal(opt.state[model.bias]["exp_avg"], bias_state)  # the other tensor was not stepped either


def test_a_group_edited_by_hand_is_checked_at_the_step():
    model = _linear(10)
    opt = _trained(model)
    opt.param_groups[0]["lr"] = -1.0
    model(torch.randn(4, 10)).sum().backward()
    with pytest.raises(ValueError, match=r"Invalid learning rate in param group 0: -1.0"):
        opt.step()
    opt.param_groups[0]["lr"] = 1e-3
    opt.param_groups[0]["momentum_dtype"] = 8
    with pytest.raises(TypeError, match="Invalid momentum_dtype: 8"):
        opt.step()


def test_a_failing_group_leaves_the_other_groups_unstepped():
    """Every group is checked before any is stepped (the reference path used to step earlier groups first)."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = Lion([{"params": [a]}, {"params": [b]}], lr=0.1, fused=False)
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    opt.step()
    opt.state[b]["exp_avg"] = torch.zeros(4)
    before = a.detach().clone()
    with pytest.raises(ValueError, match=r"parameter 1 \(param group 1"):
        opt.step()
    assert torch.equal(a.detach(), before)


def test_svd_of_a_non_finite_momentum_gives_nan_instead_of_raising_mid_step():
    a, w = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.eye(4))
    opt = Lion([{"params": [a]}, {"params": [w], "kernel": "nuclear(method='svd')"}], lr=0.1)
    a.grad, w.grad = torch.ones(3), torch.full((4, 4), float("nan"))
    opt.step()
    assert torch.equal(a.detach(), torch.full((3,), 0.9)) and torch.isnan(w).all()


@pytest.mark.parametrize("kernel", ["huber(a=1e-50)", "tanh(a=1e-45)", "relativistic(a=1e-39)"])
def test_kernel_widths_that_underflow_float32_are_refused(kernel):
    with pytest.raises(ValueError, match=r"must be >= 1.175494e-38, float32's smallest normal number"):
        lionk.get_kernel(kernel)


@pytest.mark.parametrize("value", [8, 3.5, [], np.dtype("float32"), torch.float16, "int4"])
def test_invalid_momentum_dtype_is_an_error_not_none(value):
    with pytest.raises((TypeError, ValueError), match="Invalid momentum_dtype"):
        Lion([torch.nn.Parameter(torch.zeros(3))], momentum_dtype=value)


def test_step_is_a_tensor_in_every_state():
    model = _linear(10)
    for opt in (_trained(model), _trained(model, stochastic_rounding=False), LionSF(model.parameters(), lr=1e-3)):
        model(torch.randn(4, 10)).sum().backward()
        opt.step()
        for state in opt.state.values():
            assert isinstance(state["step"], torch.Tensor) and state["step"].shape == () and state["step"].dtype == torch.float32


# ---- the functional API ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tensors, message",
    [
        (dict(m=torch.zeros(5)), r"tensor 0: state\['exp_avg'\] has shape \(5,\), the parameter has \(10,\)"),
        (dict(g=torch.zeros(5)), r"tensor 0: its gradient has shape \(5,\), the parameter has \(10,\)"),
        (dict(g=torch.zeros(10, device="meta")), r"tensor 0: its gradient is on meta, the parameter on cpu"),
        (dict(g=torch.zeros(10, dtype=torch.int64)), r"its gradient has dtype torch.int64"),
        (dict(m=None), r"exp_avgs\[0\] is NoneType, not a tensor"),
        (dict(p=torch.zeros(10, dtype=torch.int32)), r"tensor 0 has dtype torch.int32"),
    ],
)
@pytest.mark.parametrize("fused", [None, True, False])
def test_functional_lion_checks_every_tensor_first(tensors, message, fused):
    p, g, m = tensors.get("p", torch.zeros(10)), tensors.get("g", torch.ones(10)), tensors.get("m", torch.zeros(10))
    ok_p, ok_g, ok_m = torch.zeros(4), torch.ones(4), torch.zeros(4)
    with pytest.raises((ValueError, TypeError), match=message):
        functional.lion([p, ok_p], [g, ok_g], [m, ok_m], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, fused=fused)
    assert torch.equal(ok_p, torch.zeros(4)) and torch.equal(ok_m, torch.zeros(4))


def test_functional_lion_checks_list_lengths_and_keys():
    with pytest.raises(ValueError, match="exp_avgs must have one entry per parameter, got 1 for 2 params"):
        functional.lion([torch.zeros(2)] * 2, [torch.zeros(2)] * 2, [torch.zeros(2)], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0)
    with pytest.raises(ValueError, match=r"rounding key -1"):
        functional.lion(
            [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0, rounding_keys=[-1]
        )


# ---- paths --------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_default_path_is_foreach_for_parameters():
    """torch.optim's rule is foreach for CUDA tensors; nn.Parameter counts (the per-tensor loop used to run)."""
    p = torch.nn.Parameter(torch.zeros(10, device="cuda"))
    assert Lion([p]).paths()[0].path == "foreach"


# ---- a group's plan is kept between steps only while it still fits --------------------------------------------


def _twin_runs(mutate, steps=4):
    """The same training run with a kept plan and with a plan rebuilt at every step (the reference for it)."""
    results = []
    for fresh in (False, True):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(40, 30)), torch.nn.Parameter(torch.randn(30))]
        opt = Lion(params, lr=0.1, weight_decay=0.1)
        g = torch.Generator().manual_seed(1)
        for step in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            mutate(step, params, opt)
            if fresh:
                opt._plans.clear()
            opt.step()
        results.append([p.detach().clone() for p in params] + [opt.state[p]["exp_avg"].clone() for p in params])
    for a, b in zip(*results):
        assert torch.equal(a, b)
    return opt


def test_a_kept_plan_follows_a_parameter_moved_by_p_data():
    """p.data = ... gives a parameter new memory behind the same object: the kept plan must write there."""

    def move(step, params, opt):
        if step == 2:
            params[0].data = params[0].data.clone()

    _twin_runs(move)


def test_a_kept_plan_is_remade_when_a_gradient_changes_layout_or_dtype():
    def relayout(step, params, opt):
        if step == 1:
            params[0].grad = params[0].grad.t().contiguous().t()  # same values, transposed strides: another path
        if step == 2:
            params[1].grad_dtype = None
            params[1].grad = params[1].grad.to(torch.bfloat16)

    opt = _twin_runs(relayout)
    assert all(row.path.startswith("fused") for row in opt.paths())  # back on the fused path once the layout is plain


def test_a_kept_plan_is_remade_when_gradients_come_and_go_or_the_state_is_replaced():
    def vary(step, params, opt):
        if step == 1:
            params[1].grad = None
        if step == 2:
            opt.state[params[0]]["exp_avg"] = opt.state[params[0]]["exp_avg"].clone()

    _twin_runs(vary)
    p = torch.nn.Parameter(torch.ones(4))
    opt = Lion([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    opt.state[p]["exp_avg"] = torch.zeros(5)  # replaced after the plan was made: checked again, refused
    with pytest.raises(ValueError, match=r"has shape \(5,\)"):
        opt.step()
