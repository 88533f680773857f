"""The fused CPU path against the reference path, and its dispatch and fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import lionk
from lionk import Lion
from lionk._paths import cpu_fused
from lionk._paths.reference import lion_reference
from lionk.kernels import get_kernel
from lionk.precision import rounding_key

pytestmark = pytest.mark.skipif(cpu_fused.unavailable_reason() is not None, reason=f"fused CPU path: {cpu_fused.unavailable_reason()}")

# sign, quadratic and huber use only +, -, *, / and comparisons: the C loop rounds exactly as torch does.
EXACT = ["sign", "quadratic", "huber(a=0.5)"]
# power, relativistic and tanh call libm (pow, hypot, tanh), which may differ from torch's vectorised
# versions by an ulp or two of the opmath type.
TRANSCENDENTAL = ["power(p=1.5)", "relativistic(a=0.5)", "tanh(a=0.5)"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
LR = 1e-2


def _shapes_and_layouts(dtype):
    """Tensors of awkward shapes and layouts: 0-d, empty, odd sizes, a transposed view, channels_last."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    tensors = [
        rand(),
        rand(0),
        rand(1),
        rand(7),
        rand(33, 5),
        rand(70_001),
        rand(6, 9).t(),
        rand(2, 3, 4, 5).to(memory_format=torch.channels_last),
    ]
    return tensors


def _step_pair(kernel, dtype, *, maximize, wd, nonfinite, steps=3, stochastic=False, cautious=False):
    """Run the reference path and the fused path from the same state on the same gradients."""
    params = _shapes_and_layouts(dtype)
    fused_params = [p.clone() for p in params]  # clone keeps the layout (preserve_format)
    exp_avgs = [torch.zeros_like(p) for p in params]
    fused_avgs = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(1)
    kw = dict(lr=LR, beta1=0.9, beta2=0.99, weight_decay=wd, kernel=get_kernel(kernel), maximize=maximize, nonfinite=nonfinite)
    kw["cautious"] = cautious
    for step in range(steps):
        if stochastic:
            kw["rounding_keys"] = [rounding_key(i, step) for i in range(len(params))]
        grads = [torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64)) for p in params]
        big = grads[5]
        if step == 1:  # non-finite entries in the middle of the tensor that the threads split
            big[35_000], big[35_001], big[-1] = float("nan"), float("inf"), -float("inf")
            grads[4][3, 2] = float("nan")
        lion_reference(params, grads, exp_avgs, **kw)
        cpu_fused.lion_cpu_fused(fused_params, [g.clone() for g in grads], fused_avgs, **kw)
    return params + exp_avgs, fused_params + fused_avgs


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", EXACT)
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
@pytest.mark.parametrize("maximize, wd", [(False, 0.0), (True, 0.3)])
def test_exact_kernels_bitwise_equal_reference(dtype, kernel, nonfinite, maximize, wd):
    ref, fused = _step_pair(kernel, dtype, maximize=maximize, wd=wd, nonfinite=nonfinite)
    for a, b in zip(ref, fused):
        assert a.dtype == b.dtype and a.stride() == b.stride()
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kernel", EXACT)
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
@pytest.mark.parametrize("cautious", [False, True])
def test_stochastic_rounding_bitwise_equal_reference(dtype, kernel, nonfinite, cautious):
    """The C loops draw the same hash bits and round as lionk.precision does, every layout and kernel."""
    ref, fused = _step_pair(kernel, dtype, maximize=True, wd=0.3, nonfinite=nonfinite, stochastic=True, cautious=cautious)
    for a, b in zip(ref, fused):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    plain, _ = _step_pair(kernel, dtype, maximize=True, wd=0.3, nonfinite=nonfinite, cautious=cautious)
    assert any(not torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(ref, plain))  # it does round differently


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", TRANSCENDENTAL)
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
def test_transcendental_kernels_match_reference_to_rounding(dtype, kernel, nonfinite):
    ref, fused = _step_pair(kernel, dtype, maximize=True, wd=0.3, nonfinite=nonfinite)
    eps_opmath = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    for a, b in zip(ref, fused):
        assert torch.equal(a.isnan(), b.isnan())
        # a few ulp of difference in grad K(c) (|grad K| <= ~3 here) moves p by lr * that; the result may
        # then round to the neighbouring value of the storage type: one ulp of storage, relative.
        torch.testing.assert_close(b.nan_to_num(), a.nan_to_num(), rtol=torch.finfo(dtype).eps, atol=LR * 16 * eps_opmath, equal_nan=True)


def test_nan_gradient_is_visible_not_frozen():
    p = torch.nn.Parameter(torch.ones(100_000))
    opt = Lion([p], lr=0.1, fused=True)
    g = torch.ones(100_000)
    g[50_000] = float("nan")
    p.grad = g
    opt.step()
    assert torch.isnan(p[50_000]) and torch.isfinite(p[:50_000]).all() and torch.isfinite(p[50_001:]).all()


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_split_covers_every_element_once(threads):
    """Worker ranges split tensors in the middle; every element must be updated exactly once."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        sizes = [100_003, 1, 65_537, 17, 200_000]
        params = [torch.zeros(n, dtype=torch.float64) for n in sizes]
        grads = [torch.ones(n, dtype=torch.float64) for n in sizes]
        avgs = [torch.zeros(n, dtype=torch.float64) for n in sizes]
        cpu_fused.lion_cpu_fused(params, grads, avgs, lr=1.0, beta1=0.0, beta2=0.0, weight_decay=0.0, kernel=get_kernel("sign"),
                                 maximize=False, nonfinite="propagate")  # fmt: skip
        for p, m in zip(params, avgs):
            assert torch.equal(p, -torch.ones_like(p)) and torch.equal(m, torch.ones_like(m))
    finally:
        torch.set_num_threads(old)


def test_default_path_is_fused_on_cpu_and_matches_forced_reference():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    twin.load_state_dict(model.state_dict())
    opt, ref = Lion(model.parameters(), lr=1e-3, weight_decay=0.1), Lion(twin.parameters(), lr=1e-3, weight_decay=0.1, fused=False)
    calls = []
    original = cpu_fused.lion_cpu_fused
    cpu_fused.lion_cpu_fused = lambda *a, **k: (calls.append(1), original(*a, **k))
    try:
        for _ in range(5):
            x = torch.randn(8, 16)
            for m, o in ((model, opt), (twin, ref)):
                o.zero_grad()
                m(x).square().mean().backward()
                o.step()
    finally:
        cpu_fused.lion_cpu_fused = original
    assert len(calls) == 5
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_fused_true_rejects_what_it_cannot_run():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="elementwise"):
        Lion([p], kernel="l2", fused=True)
    with pytest.raises(ValueError, match="cannot be used together"):
        Lion([p], fused=True, foreach=True)
    assert lionk.fused_unavailable_reason("sign") is None
    assert "whole tensor" in lionk.fused_unavailable_reason("nuclear")


def test_tensor_scope_kernels_and_subclasses_use_other_paths():
    p = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
    opt = Lion([p], lr=0.1, kernel="l2")  # fused=None: falls back without a word
    p.grad = torch.randn(4, 4, dtype=torch.float64)
    opt.step()
    assert torch.isfinite(p).all()


def test_no_compiler_degrades_to_reference_with_a_reason(tmp_path):
    code = (
        "import torch, lionk\n"
        "reason = lionk.fused_unavailable_reason()\n"
        "assert reason and 'compiler' in reason, reason\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "lionk.Lion([p], lr=0.5).step(); assert torch.equal(p.detach(), torch.full((3,), 0.5))\n"
        "try:\n    lionk.Lion([p], fused=True)\nexcept RuntimeError as e:\n    print('RAISED', e)\n"
    )
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    env = {**os.environ, "PATH": str(empty_bin), "CC": "", "LIONK_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RAISED fused=True cannot run here: no C compiler found" in out.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_default_path_matches_cpu_reference(dtype):
    torch.manual_seed(4)
    cpu = [torch.randn(s, dtype=dtype) for s in [(33, 5), (1000,), ()]]
    gpu = [t.cuda() for t in cpu]
    grads = [torch.randn_like(t) for t in cpu]
    for ps, gs in ((cpu, grads), (gpu, [g.cuda() for g in grads])):
        ms = [torch.zeros_like(p) for p in ps]
        lionk.lion(ps, gs, ms, lr=1e-2, beta1=0.9, beta2=0.99, weight_decay=0.1, fused=False if ps is cpu else None)
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=torch.finfo(dtype).eps, atol=0)


MIXED = [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float16, torch.float32), (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("p_dtype, m_dtype", MIXED, ids=str)
@pytest.mark.parametrize("kernel", ["sign", "huber(a=0.5)"])
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("cautious", [False, True])
def test_momentum_in_another_dtype_bitwise_equal_reference(p_dtype, m_dtype, kernel, stochastic, cautious):
    """momentum_dtype storage in the C loops: same results as the reference on the same mixed storage."""
    params = _shapes_and_layouts(p_dtype)
    fused_params = [p.clone() for p in params]
    exp_avgs = [torch.zeros_like(p, dtype=m_dtype) for p in params]
    fused_avgs = [torch.zeros_like(p, dtype=m_dtype) for p in params]
    gen = torch.Generator().manual_seed(2)
    kw = dict(lr=LR, beta1=0.9, beta2=0.99, weight_decay=0.3, kernel=get_kernel(kernel), maximize=False, nonfinite="skip")
    kw["cautious"] = cautious
    for step in range(3):
        if stochastic:
            kw["rounding_keys"] = [rounding_key(i, step) for i in range(len(params))]
        grads = [torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64)) for p in params]
        if step == 1:
            grads[5][35_000] = float("nan")
        assert cpu_fused._shares_dense_layout(params[5], grads[5], exp_avgs[5])  # the big tensor runs in C
        lion_reference(params, grads, exp_avgs, **kw)
        cpu_fused.lion_cpu_fused(fused_params, [g.clone() for g in grads], fused_avgs, **kw)
    for a, b in zip(params + exp_avgs, fused_params + fused_avgs):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kernel", EXACT)
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_int8_momentum_in_c_equals_dequantise_step_quantise(dtype, kernel, nonfinite, stochastic):
    """The per-block C loop against the definition: dequantise, reference step, quantise (bitwise)."""
    from lionk.functional import lion_int8
    from lionk.precision import quantize_int8

    gen = torch.Generator().manual_seed(5)
    shapes = [(70_001,), (33, 300), (4096,), (5000,)]
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    states = [quantize_int8(torch.randn(s, generator=gen) * 0.1) for s in shapes]
    copies = [p.clone() for p in params], [(q.clone(), a.clone()) for q, a in states]
    kw = dict(lr=LR, beta1=0.9, beta2=0.99, weight_decay=0.3, kernel=get_kernel(kernel), maximize=True, nonfinite=nonfinite)
    for step in range(3):
        grads = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
        if step == 1:
            grads[0][40_000] = float("nan")
        keys = [rounding_key(i, step) for i in range(len(shapes))] if stochastic else None
        assert all(cpu_fused.int8_fusable(p, g) for p, g in zip(params, grads))
        lion_int8(params, grads, [q for q, _ in states], [a for _, a in states], fused=False, rounding_keys=keys, **kw)
        lion_int8(copies[0], grads, [q for q, _ in copies[1]], [a for _, a in copies[1]], rounding_keys=keys, **kw)
    for a, b in zip(params, copies[0]):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    for (qa, aa), (qb, ab) in zip(states, copies[1]):
        assert torch.equal(qa, qb) and torch.equal(aa.isnan(), ab.isnan()) and torch.equal(aa.nan_to_num(), ab.nan_to_num())


def test_int8_momentum_non_contiguous_param_takes_the_torch_path():
    p = torch.randn(100, 64).t()
    assert not cpu_fused.int8_fusable(p, torch.randn(100, 64).t())
    opt = Lion([torch.nn.Parameter(p.clone())], lr=1e-3, momentum_dtype="int8")
    (param,) = opt.param_groups[0]["params"]
    param.grad = torch.randn(64, 100)
    opt.step()
    assert opt.state[param]["exp_avg"].dtype == torch.int8


@pytest.mark.parametrize("m_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stochastic_store_edge_values_equal_reference(m_dtype):
    """With beta2 = 0 the stored momentum is the rounded gradient: the C stochastic store against the torch one on
    edge values (largest finite, overflow, subnormals, signed zeros, inf, NaN) and many random magnitudes."""
    gen = torch.Generator().manual_seed(7)
    fmax, tiny = torch.finfo(m_dtype).max, torch.finfo(m_dtype).tiny
    edge = torch.tensor([0.0, -0.0, fmax, -fmax, fmax * 1.001, 3.3e38, tiny, tiny / 3, -tiny / 7, float("inf"), float("nan"), 1.0])
    g = torch.cat([edge, torch.randn(100_000, generator=gen) * 10.0 ** torch.randint(-30, 30, (100_000,), generator=gen)])
    results = []
    for path in (lion_reference, cpu_fused.lion_cpu_fused):
        p, m = torch.zeros_like(g), torch.zeros_like(g, dtype=m_dtype)
        path([p], [g.clone()], [m], lr=0.0, beta1=0.9, beta2=0.0, weight_decay=0.0, kernel=get_kernel("sign"),
             maximize=False, nonfinite="propagate", rounding_keys=[rounding_key(3, 4)])  # fmt: skip
        results.append(m)
    assert cpu_fused._shares_dense_layout(p, g, m)
    assert torch.equal(results[0].isnan(), results[1].isnan())
    assert torch.equal(results[0].nan_to_num(), results[1].nan_to_num())
