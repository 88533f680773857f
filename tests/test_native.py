"""The native library: built at install, loaded from the package only, refused with a reason when it does not fit;
its instruction-set copies, thread split and awkward layouts against the reference path."""

from __future__ import annotations

import ctypes.util
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lionk
from _checks import assert_same, assert_weights_close
from lionk import Lion, functional
from lionk._engine import native
from lionk.precision import rounding_key

pytestmark = pytest.mark.skipif(native.unavailable_reason() is not None, reason=f"native library: {native.unavailable_reason()}")

KERNELS = ["sign", "quadratic", "huber(a=0.5)", "power(p=1.5)", "tanh(a=0.5)", "relativistic(a=0.5)", "softsign"]
LR = 1e-2


def _awkward(dtype, seed=0):
    """Tensors of awkward shapes and layouts: 0-d, empty, odd sizes, a transposed view, channels_last, and one large
    enough (70,001) that the threads split it in the middle."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    return [
        rand(),
        rand(0),
        rand(1),
        rand(7),
        rand(33, 5),
        rand(70_001),
        rand(6, 9).t(),
        rand(2, 3, 4, 5).to(memory_format=torch.channels_last),
    ]


def _run(kernel, dtype, fused, *, momentum=None, keys=False, steps=3, **options):
    params = _awkward(dtype)
    exp_avgs = [torch.zeros_like(p, dtype=momentum or p.dtype) for p in params]
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        grads = [torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64)) for p in params]
        if step == 1:  # non-finite entries in the middle of the tensor the threads split
            grads[5][35_000], grads[5][35_001], grads[5][-1] = float("nan"), float("inf"), -float("inf")
        rounding = [rounding_key(i, step) for i in range(len(params))] if keys else None
        functional.lion(params, grads, exp_avgs, lr=LR, beta1=0.9, beta2=0.99, weight_decay=0.1, kernel=kernel, fused=fused,
                        foreach=False, rounding_keys=rounding, **options)  # fmt: skip
    return params, exp_avgs


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "options", [{}, {"maximize": True, "nonfinite": "skip"}, {"cautious": True}], ids=["plain", "maximize-skip", "cautious"]
)
def test_awkward_shapes_layouts_and_thread_splits_match_reference(kernel, dtype, options):
    """Dense layouts (contiguous, channels_last, a transposed view's strides) run fused, split across threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(3)  # three workers: the 70,001-element tensor is split inside
    try:
        fused = _run(kernel, dtype, True, keys=dtype in (torch.bfloat16, torch.float16), **options)
        ref = _run(kernel, dtype, False, keys=dtype in (torch.bfloat16, torch.float16), **options)
    finally:
        torch.set_num_threads(old)
    exact = kernel in ("sign", "quadratic", "huber(a=0.5)", "softsign")
    for a, b in zip(fused[1], ref[1]):  # the momentum does not depend on the kernel's rounding
        assert a.stride() == b.stride()
        assert_same(a, b)
    for a, b in zip(fused[0], ref[0]):
        assert a.stride() == b.stride()
        if exact:
            assert_same(a, b)
        else:
            assert_weights_close(a, b, LR, 3)


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
        functional.lion(params, grads, avgs, lr=1.0, beta1=0.0, beta2=0.0, weight_decay=0.0, fused=True)
        for p, m in zip(params, avgs):
            assert torch.equal(p, -torch.ones_like(p)) and torch.equal(m, torch.ones_like(m))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_every_instruction_set_gives_the_same_bits(isa):
    """The library's copies for each instruction set compute the same operations in the same order: bitwise equal,
    transcendental kernels included (they call the same libm)."""
    library = native.library()
    if isa not in library.isas:
        pytest.skip(f"this CPU has no {isa}")
    best = library.isa
    results = {}
    try:
        for name in (best, isa):
            assert native.select_isa(name) and library.isa == name
            results[name] = [
                _run(k, torch.bfloat16, True, keys=True, momentum=torch.float32, cautious=True) for k in ("sign", "tanh(a=0.5)")
            ]
    finally:
        native.select_isa(best)
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32}
    for (pa, ma), (pb, mb) in zip(results[best], results[isa]):
        for a, b in zip(pa + ma, pb + mb):
            assert torch.equal(a.view(bits[a.dtype]), b.view(bits[b.dtype]))


@pytest.mark.parametrize("m_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_stochastic_store_edge_values_equal_reference(m_dtype):
    """With beta2 = 0 the stored momentum is the rounded gradient: the native stochastic store against the torch one
    on edge values (largest finite, overflow, subnormals, signed zeros, inf, NaN) and many random magnitudes."""
    gen = torch.Generator().manual_seed(7)
    fmax, tiny = torch.finfo(m_dtype).max, torch.finfo(m_dtype).tiny
    edge = torch.tensor([0.0, -0.0, fmax, -fmax, fmax * 1.001, 3.3e38, tiny, tiny / 3, -tiny / 7, float("inf"), float("nan"), 1.0])
    g = torch.cat([edge, torch.randn(100_000, generator=gen) * 10.0 ** torch.randint(-30, 30, (100_000,), generator=gen)])
    results = []
    for fused in (False, True):
        p, m = torch.zeros_like(g), torch.zeros_like(g, dtype=m_dtype)
        functional.lion(
            [p], [g.clone()], [m], lr=0.0, beta1=0.9, beta2=0.0, weight_decay=0.0, fused=fused, rounding_keys=[rounding_key(3, 4)]
        )
        results.append(m)
    assert torch.equal(results[0].isnan(), results[1].isnan())
    assert torch.equal(results[0].nan_to_num(), results[1].nan_to_num())


def test_library_comes_from_the_package_and_no_cache_is_used(tmp_path):
    """The library is the package's own file, built at install; a step compiles nothing and reads no cache, so a
    LIONK_CACHE pointing at a file, at '' or at a read-only place changes nothing (it used to)."""
    origin = Path(importlib.util.find_spec("lionk._native").origin)
    assert origin.parent == Path(lionk.__file__).parent and origin.name.startswith("_native.")
    a_file = tmp_path / "file"
    a_file.write_text("")
    code = (
        "import torch, lionk\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "opt = lionk.Lion([p], lr=0.5, fused=True); opt.step()\n"
        "assert torch.equal(p.detach(), torch.full((3,), 0.5)) and opt.paths()[0].path.startswith('fused (native')\n"
    )
    for cache in (str(a_file), "", ".", "/proc/nonexistent"):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "LIONK_CACHE": cache, "CC": "false"}, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
    assert list(tmp_path.iterdir()) == [a_file]  # nothing written in the working directory


def _fresh_native(monkeypatch, origin):
    """native as a new process sees it, with the library at ``origin`` (None: not installed)."""
    spec = None if origin is None else importlib.machinery.ModuleSpec("lionk._native", None, origin=str(origin))
    monkeypatch.setattr(native.importlib.util, "find_spec", lambda name: spec)
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_unavailable", None)


def test_without_the_library_the_plain_paths_run_and_say_why(monkeypatch):
    _fresh_native(monkeypatch, None)
    reason = lionk.fused_unavailable_reason()
    assert "installed without its native library" in reason
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = Lion([p], lr=0.5)
    opt.step()
    assert torch.equal(p.detach(), torch.full((3,), 0.5))
    assert "installed without its native library" in opt.paths()[0].why
    with pytest.raises(RuntimeError, match="fused=True cannot run here: lionk was installed without its native library"):
        Lion([p], fused=True)


def test_a_library_without_lionk_symbols_is_refused_with_a_reason(monkeypatch):
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to stand in for a foreign library")
    _fresh_native(monkeypatch, libm)
    assert "cannot be used" in lionk.fused_unavailable_reason()
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    Lion([p], lr=0.5).step()  # the plain path, not an AttributeError at every step
    assert torch.equal(p.detach(), torch.full((3,), 0.5))


def test_default_path_is_fused_on_cpu_and_equals_the_reference():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    twin.load_state_dict(model.state_dict())
    opt, ref = Lion(model.parameters(), lr=1e-3, weight_decay=0.1), Lion(twin.parameters(), lr=1e-3, weight_decay=0.1, fused=False)
    assert all(row.path.startswith("fused (native") for row in opt.paths())
    for _ in range(5):
        x = torch.randn(8, 16)
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_fused_true_refuses_what_it_cannot_run_and_says_why():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="reduces over the whole tensor"):
        Lion([p], kernel="l2", fused=True)
    with pytest.raises(ValueError, match="cannot be used together"):
        Lion([p], fused=True, foreach=True)
    assert lionk.fused_unavailable_reason("sign") is None
    assert "computed in torch" in lionk.fused_unavailable_reason("nuclear")
    t = torch.nn.Parameter(torch.randn(6, 9).t())  # a transposed parameter whose gradient is contiguous
    opt = Lion([t], fused=True)
    t.grad = torch.randn(9, 6)
    before = t.detach().clone()
    with pytest.raises(RuntimeError, match=r"fused=True cannot run parameter 0 .*dense memory layout"):
        opt.step()
    assert torch.equal(t.detach(), before)
    assert "dense memory layout" in Lion([t]).paths()[0].why  # fused=None: another path, and the table says why
