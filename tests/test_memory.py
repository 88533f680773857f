"""Training memory, measured: lionk.memory's tracker and step temporaries against sizes known by construction and
against a peer's known allocations; the per-run peak RSS; the foreach path's bounded temporaries."""

from __future__ import annotations

import pytest
import torch

import lionk
from lionk._engine import native, torch_paths
from lionk.cli.machine import PeakRSS
from lionk.memory import MemoryTracker, state_bytes, step_temporaries

SHAPES = [(256, 256), (256, 512), (512,), (128, 64)]  # 65536 + 131072 + 512 + 8192 elements


def _model(dtype=torch.float32) -> torch.nn.ParameterList:
    gen = torch.Generator().manual_seed(0)
    return torch.nn.ParameterList([torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in SHAPES])


def _backward(params) -> None:
    sum((p.float() ** 2).sum() for p in params).backward()


def test_tracker_counts_weights_gradients_and_state_at_their_peak():
    params = _model()
    n = sum(p.numel() for p in params)
    tracker = MemoryTracker(params)
    opt = lionk.Lion(params, lr=1e-3)
    tracker.watch(opt)
    for _ in range(2):
        opt.zero_grad()
        _backward(params)
        opt.step()
    tracker.close()
    assert tracker.numel == n
    assert tracker.weights == 4 * n and tracker.gradients == 4 * n
    assert tracker.state == state_bytes(opt) == 4 * n + 4 * len(SHAPES)  # momenta and the float32 step counters
    assert tracker.together == tracker.weights + tracker.gradients + tracker.state
    assert tracker.per_param()["together"] == pytest.approx(12 + 16 / n)


def test_tracker_sees_released_gradients_and_stops_after_close():
    """With release_bucket=0 each gradient is freed as soon as it is stepped: at most two exist at once (the one
    accumulated and the one being stepped are the same tensor; the next appears after the first was freed)."""
    params = _model()
    tracker = MemoryTracker(params)  # first: its hook sees each gradient before the optimizer's frees it
    opt = lionk.Lion(params, lr=1e-3, gradient_release=True, release_bucket=0)
    tracker.watch(opt)
    _backward(params)
    opt.step()
    largest = max(p.numel() for p in params) * 4
    assert tracker.gradients == largest and all(p.grad is None for p in params)
    tracker.close()
    before = tracker.together
    params[0].grad = torch.ones_like(params[0])
    _backward(params)  # no hook left: no new sample
    assert tracker.together == before


def test_low_bit_training_memory_with_release_is_about_three_bytes():
    """bf16 weights (2 B), int8 momentum with its block scales (about 1.02 B), gradients released a bucket at a time."""
    params = _model(torch.bfloat16)
    n = sum(p.numel() for p in params)
    tracker = MemoryTracker(params)
    opt = lionk.Lion(params, lr=1e-3, momentum_dtype="int8", gradient_release=True, release_bucket=1 << 14)
    tracker.watch(opt)
    for _ in range(2):
        _backward(params)
        opt.step()
    per = tracker.per_param()
    assert per["weights"] == 2.0 and 1.0 < per["state"] < 1.1
    assert per["gradients"] <= 2 * (131072 + (1 << 14)) / n  # the largest tensor plus at most a bucket
    assert per["together"] <= per["weights"] + per["gradients"] + per["state"]


def test_step_temporaries_of_known_allocations():
    def two_live():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB, while a is alive
        del a, b
        c = torch.empty(1 << 18)  # 1 MiB, after both were freed
        return c.sum()

    assert step_temporaries(two_live) == pytest.approx(6 << 20, abs=4096)
    kept = []
    assert step_temporaries(lambda: kept.append(torch.empty(1000))) == pytest.approx(4000, abs=64)


def test_step_temporaries_fused_lion_none_adamw_foreach_one_buffer():
    """A peer's known cost (torch's foreach AdamW allocates one parameter-sized list) and lionk's fused step (none)."""
    params = _model()
    n = sum(p.numel() for p in params)
    for p in params:
        p.grad = torch.randn_like(p)
    adamw = torch.optim.AdamW(params, foreach=True)
    adamw.step()
    assert 4 * n <= step_temporaries(adamw.step) <= 5 * n
    if native.unavailable_reason() is None:
        lion = lionk.Lion(params)
        lion.step()
        assert step_temporaries(lion.step) < 0.01 * 4 * n


def _stepped_params(shapes, **options) -> tuple[list[torch.nn.Parameter], lionk.Lion]:
    """Seeded parameters with gradients, and a Lion with ``options`` that has taken its first step."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt = lionk.Lion(params, lr=1e-2, weight_decay=0.1, fused=False, **options)
    opt.step()
    return params, opt


def test_foreach_temporaries_are_bounded_and_runs_change_no_value(monkeypatch):
    """The foreach path steps its tensors in runs of FOREACH_CHUNK elements: its temporaries stay near four of the
    largest run's tensors, and the values are bitwise those of one run and of the reference path."""
    shapes = [(64, 64)] * 24
    results = []
    for chunk in (1 << 30, 4096 * 3):
        monkeypatch.setattr(torch_paths, "FOREACH_CHUNK", chunk)
        params, opt = _stepped_params(shapes, foreach=True)
        used = step_temporaries(opt.step)
        results.append(([p.detach().clone() for p in params], used))
    (whole, used_whole), (runs, used_runs) = results
    assert all(torch.equal(a, b) for a, b in zip(whole, runs))
    n = 24 * 4096
    assert used_whole >= 3 * 4 * n  # every tensor's temporaries at once
    assert used_runs <= 5 * 4 * 3 * 4096  # about four of a run of three tensors
    params, opt = _stepped_params(shapes, foreach=False)
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(whole, params))


def test_peak_rss_is_per_interval_on_linux():
    first = PeakRSS()
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
    high = first.mb()
    del block
    second = PeakRSS()
    assert high >= second.mb() + 32 or not second.per_interval
    assert second.mb() > 0


def test_state_bytes_skips_parameters_that_a_peer_keeps_in_its_state():
    """torch-optimi keeps each parameter's group (with its parameters) in the parameter's state: not state memory."""
    p = torch.nn.Parameter(torch.zeros(100))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p] = {"group": opt.param_groups[0], "exp_avg": torch.zeros(100)}
    assert state_bytes(opt) == 400


class _Wrapped(torch.Tensor):
    """A tensor subclass that holds its data in inner tensors, as torchao's 8-bit optimizer states do."""

    @staticmethod
    def __new__(cls, codes: torch.Tensor, scale: torch.Tensor):
        t = torch.Tensor._make_wrapper_subclass(cls, codes.shape, dtype=torch.float32)
        t.codes, t.scale = codes, scale
        return t

    def __tensor_flatten__(self):
        return ["codes", "scale"], None

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise NotImplementedError(func)


def test_state_bytes_counts_the_inner_tensors_of_a_wrapper_subclass():
    p = torch.nn.Parameter(torch.zeros(1000))
    opt = torch.optim.SGD([p], lr=0.1)
    opt.state[p] = {"exp_avg": _Wrapped(torch.zeros(1000, dtype=torch.uint8), torch.ones(4))}
    assert state_bytes(opt) == 1000 + 16
