"""Gradient release: each parameter is stepped inside backward as soon as its gradient is accumulated, and the gradient
is freed; the trajectory is the one of ``backward(); step()`` (bitwise, every path and storage), and what it does with
accumulation, schedulers, GradScaler and clipping is decided and checked here."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch

from lionk import Lion, LionSF

PATHS = {"reference": dict(fused=False, foreach=False), "foreach": dict(fused=False, foreach=True), "fused": dict()}


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(96, 128), torch.nn.GELU(), torch.nn.Linear(128, 64), torch.nn.LayerNorm(64)).to(dtype)


def _batches(n, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 96, generator=g).to(dtype) for _ in range(n)]


def _loss(model, x):
    return model(x).float().square().mean()


def _pair(make, dtype=torch.float32, **kwargs):
    """The same model twice: one stepped by backward(); step(), one by gradient release."""
    a = _model(dtype)
    b = copy.deepcopy(a)
    return a, make(a.parameters(), **kwargs), b, make(b.parameters(), gradient_release=True, **kwargs)


def _assert_same(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(kernel="huber(a=0.5)", cautious=True, weight_decay_mode="cautious"),
        dict(momentum_dtype="int8", nonfinite="skip"),
        dict(kernel="lp(p=1.5)", weight_decay_mode="independent"),
    ],
    ids=["sign", "huber-cautious", "int8-skip", "lp-independent"],
)
@pytest.mark.parametrize("bucket", [0, 1 << 12, 1 << 30])
def test_same_trajectory_as_backward_then_step(path, options, bucket):
    a, opt_a, b, opt_b = _pair(Lion, lr=1e-2, weight_decay=0.1, release_bucket=bucket, **PATHS[path], **options)
    for x in _batches(4):
        opt_a.zero_grad()
        _loss(a, x).backward()
        opt_a.step()
        opt_b.zero_grad()
        _loss(b, x).backward()
        assert all(p.grad is None for p in b.parameters())  # stepped and freed inside backward
        opt_b.step()  # nothing left to do
    _assert_same(a, b)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(opt_a.state[p]["exp_avg"], opt_b.state[q]["exp_avg"]) and opt_b.state[q]["step"] == 4


def test_bfloat16_weights_with_stochastic_rounding_and_lionsf_agreement():
    for make in (Lion, lambda params, **kw: LionSF(params, mode="agreement", **kw)):
        a, opt_a, b, opt_b = _pair(make, dtype=torch.bfloat16, lr=1e-2, weight_decay=0.1)
        for x in _batches(4, torch.bfloat16):
            for m, o in ((a, opt_a), (b, opt_b)):
                o.zero_grad()
                _loss(m, x).backward()
                o.step()
        _assert_same(a, b)


def test_only_a_bucket_of_gradients_is_alive_at_once():
    model = _model()
    opt = Lion(model.parameters(), lr=1e-2, gradient_release=True, release_bucket=0)  # kept alive: its hooks hold it weakly
    alive = []

    def count(_):
        alive.append(sum(p.grad.numel() for p in model.parameters() if p.grad is not None))

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(count)  # runs after lionk's hook, which was registered first
    _loss(model, _batches(1)[0]).backward()
    assert max(alive) == 0  # with release_bucket=0 each gradient is stepped and freed as soon as it is ready
    assert all(opt.state[p]["step"] == 1 for p in model.parameters())


@pytest.mark.parametrize("path", PATHS)
def test_released_gradients_are_freed_not_only_unlinked(path):
    """The gradients gradient release frees are gone once backward ends: nothing in the optimizer (its plan cache
    included) keeps a reference to them."""
    model = _model()
    opt = Lion(model.parameters(), lr=1e-2, gradient_release=True, **PATHS[path])
    grads = []
    for x in _batches(2):
        grads.clear()
        hooks = [p.register_post_accumulate_grad_hook(lambda q: grads.append(weakref.ref(q.grad))) for p in model.parameters()]
        _loss(model, x).backward()
        for h in hooks:
            h.remove()
        assert len(grads) == len(list(model.parameters())) and all(g() is None for g in grads)
    assert all(opt.state[p]["step"] == 2 for p in model.parameters())


def test_accumulation_over_micro_batches():
    """Inside accumulate() the gradients accumulate; the first backward outside steps with their sum."""
    a, opt_a, b, opt_b = _pair(Lion, lr=1e-2, weight_decay=0.1)
    batches = _batches(6)
    for start in (0, 3):
        micro = batches[start : start + 3]
        opt_a.zero_grad()
        for x in micro:
            _loss(a, x).backward()
        opt_a.step()
        for x in micro[:-1]:
            with opt_b.accumulate():
                _loss(b, x).backward()
            assert all(p.grad is not None for p in b.parameters())
        _loss(b, micro[-1]).backward()
        assert all(p.grad is None for p in b.parameters())
    _assert_same(a, b)


def test_accumulated_gradients_left_for_step_are_stepped_and_freed():
    a, opt_a, b, opt_b = _pair(Lion, lr=1e-2)
    x = _batches(1)[0]
    _loss(a, x).backward()
    opt_a.step()
    with opt_b.accumulate():
        _loss(b, x).backward()
    opt_b.step()
    assert all(p.grad is None for p in b.parameters())
    _assert_same(a, b)


def test_lr_scheduler_between_iterations():
    a, opt_a, b, opt_b = _pair(Lion, lr=1e-2, weight_decay=0.1)
    schedulers = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5) for o in (opt_a, opt_b)]
    for x in _batches(5):
        for m, o, s in ((a, opt_a, schedulers[0]), (b, opt_b, schedulers[1])):
            o.zero_grad()
            _loss(m, x).backward()
            o.step()
            s.step()
    _assert_same(a, b)


def test_per_tensor_clipping_works_with_release_and_global_clipping_cannot():
    """clip_grad_norm_ needs every gradient, which release frees as it steps: max_grad_norm clips each tensor instead,
    the same way with and without release (and clip_grad_norm_ after a released backward finds nothing to clip)."""
    a, opt_a, b, opt_b = _pair(Lion, lr=1e-2, max_grad_norm=0.01, kernel="quadratic")
    for x in _batches(3):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            _loss(m, x).backward()
            o.step()
    _assert_same(a, b)
    assert float(torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)) == 0.0  # no gradients are left to clip


def test_grad_scaler_is_refused_with_the_reason():
    model = _model()
    opt = Lion(model.parameters(), lr=1e-2, gradient_release=True)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(_loss(model, _batches(1)[0])).backward()
    with pytest.raises(RuntimeError, match=r"gradient_release=True cannot be used with torch\.amp\.GradScaler"):
        scaler.step(opt)


def test_settings_that_cannot_release_are_refused():
    with pytest.raises(ValueError, match="mode='averaging'"):
        LionSF(_model().parameters(), mode="averaging", gradient_release=True)
    with pytest.raises(ValueError, match="Invalid release_bucket: -1"):
        Lion(_model().parameters(), gradient_release=True, release_bucket=-1)
    with pytest.raises(ValueError, match="Invalid gradient_release: 'yes'"):
        Lion(_model().parameters(), gradient_release="yes")
    with pytest.raises(ValueError, match="Invalid max_grad_norm: 0"):
        Lion(_model().parameters(), max_grad_norm=0)


def test_refused_across_processes_before_anything_is_stepped(monkeypatch):
    """With more than one process (DDP) the hook would step on the local gradient before the all-reduce: refused at
    construction, and in backward when the process group was made after the optimizer (nothing stepped)."""
    import torch.distributed as dist

    model = _model()
    opt = Lion(model.parameters(), lr=1e-2, gradient_release=True)
    before = [p.detach().clone() for p in model.parameters()]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(ValueError, match="gradient_release=True with 2 processes"):
        Lion(_model().parameters(), gradient_release=True)
    with pytest.raises(RuntimeError, match="before DDP averages it"):
        _loss(model, _batches(1)[0]).backward()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)) and len(opt.state) == 0
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)  # one process: allowed
    Lion(_model().parameters(), gradient_release=True)


def test_the_optimizer_is_not_kept_alive_by_its_hooks():
    import gc
    import weakref

    model = _model()
    opt = Lion(model.parameters(), gradient_release=True)
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None
    _loss(model, _batches(1)[0]).backward()  # the dead optimizer's hooks do nothing
    assert all(p.grad is not None for p in model.parameters())
