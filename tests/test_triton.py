"""The Triton path against the reference path: under Triton's CPU interpreter here, on the GPU where there is one
(every kernel and storage against the reference: test_conformance.py; here the layouts, block boundaries, launches).

Tolerances. sign, quadratic and huber use only +, -, *, IEEE division and comparisons, in the reference's
order and without multiply-add contraction: bitwise equal. power, relativistic and tanh call pow/sqrt,
hypot and tanh, whose implementations differ (numpy's under the interpreter, libdevice's on the GPU,
torch's vectorised ones in the reference; torch's CPU float32 sqrt is not even correctly rounded):
a few ulp of grad K(c) (|grad K| <= ~3 here), i.e. lr * 16 eps of the opmath type on p, then possibly
one ulp of the storage type after rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf under the interpreter

import lionk  # noqa: E402
from lionk import Lion, functional  # noqa: E402
from lionk._engine import Slot, group_hyper  # noqa: E402
from lionk._engine import triton as triton_path  # noqa: E402
from lionk._engine.torch_paths import run_reference  # noqa: E402
from lionk.kernels import get_kernel  # noqa: E402
from lionk.precision import FloatStorage  # noqa: E402

EXACT = ["sign", "quadratic", "huber(a=0.5)"]
TRANSCENDENTAL = ["power(p=1.5)", "power(p=1.3)", "relativistic(a=0.5)", "tanh(a=0.5)"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
LR = 1e-2
BLOCK = 256  # small blocks: the interpreter runs one Python program per block


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's interpreter for this test only (CPU tensors are refused without it)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _tensors(dtype, device):
    """Awkward shapes and layouts: 0-d, empty, odd sizes, several blocks, a transposed view, channels_last,
    and an unaligned view (its launch has no 16-byte alignment hint)."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)

    unaligned = rand(301)[1:]
    return [
        rand(),
        rand(0),
        rand(1),
        rand(7),
        rand(33, 5),
        rand(3 * BLOCK + 5),
        rand(6, 9).t(),
        rand(2, 3, 4, 5).to(memory_format=torch.channels_last),
        unaligned,
    ]


def lion_reference(
    params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, kernel, maximize=False, nonfinite="propagate", cautious=False
):
    functional.lion(params, grads, exp_avgs, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, kernel=kernel,
                    maximize=maximize, nonfinite=nonfinite, cautious=cautious, fused=False, foreach=False)  # fmt: skip


def lion_triton(params, grads, exp_avgs, *, lr, beta1, beta2, weight_decay, kernel, maximize=False, nonfinite="propagate",
                cautious=False, block_size=BLOCK):  # fmt: skip
    """The Triton path on the tensors it takes (block_size set), the reference path on the others, as the dispatcher
    would send them (with its reason)."""
    group = dict(lr=lr, betas=(beta1, beta2), weight_decay=weight_decay, kernel=kernel, maximize=maximize, nonfinite=nonfinite,
                 foreach=None, fused=True, cautious=cautious, stochastic_rounding=False)  # fmt: skip
    hyper = group_hyper(group)
    slots = [
        Slot(p, p, g, {"exp_avg": m}, FloatStorage(m.dtype), f"tensor {i}") for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs))
    ]
    taken = [s for s in slots if triton_path.problem(s, hyper) is None]
    triton_path.run(taken, hyper, block_size=block_size)
    run_reference([s for s in slots if s not in taken], hyper)


def _step_pair(kernel, dtype, *, maximize, wd, nonfinite, cautious=False, steps=2, device="cpu", lr=LR, block_size=BLOCK):
    """Run the reference path and the Triton path from the same state on the same gradients."""
    params = [t.to(device) for t in _tensors(dtype, "cpu")]
    fast = [p.clone() for p in params]  # clone keeps the layout (preserve_format)
    avgs = [torch.zeros_like(p) for p in params]
    fast_avgs = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(1)
    kw = dict(beta1=0.9, beta2=0.99, weight_decay=wd, kernel=kernel, maximize=maximize, nonfinite=nonfinite, cautious=cautious)
    for step in range(steps):
        grads = [torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64)) for p in params]
        if step == 1:  # non-finite entries inside a full block, in a partial block and in a small tensor
            big = grads[5]
            big[BLOCK + 3], big[BLOCK + 4], big[-1] = float("nan"), float("inf"), -float("inf")
            grads[4][3, 2] = float("nan")
        lion_reference(params, grads, avgs, lr=lr, **kw)
        lion_triton(fast, [g.clone() for g in grads], fast_avgs, lr=lr, block_size=block_size, **kw)
    return params + avgs, fast + fast_avgs


def _assert_bitwise(ref, fast):
    for a, b in zip(ref, fast):
        assert a.dtype == b.dtype and a.stride() == b.stride()
        b = b.cpu()
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


def _assert_rounding_close(ref, fast, dtype):
    eps_opmath = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    for a, b in zip(ref, fast):
        b = b.cpu()
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(b.nan_to_num(), a.nan_to_num(), rtol=torch.finfo(dtype).eps, atol=LR * 16 * eps_opmath)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", EXACT)
@pytest.mark.parametrize("nonfinite, maximize, wd", [("propagate", False, 0.0), ("skip", True, 0.3)])
def test_exact_kernels_bitwise_equal_reference(dtype, kernel, nonfinite, maximize, wd):
    _assert_bitwise(*_step_pair(kernel, dtype, maximize=maximize, wd=wd, nonfinite=nonfinite))


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", TRANSCENDENTAL)
def test_transcendental_kernels_match_reference_to_rounding(dtype, kernel):
    ref, fast = _step_pair(kernel, dtype, maximize=True, wd=0.3, nonfinite="propagate")
    _assert_rounding_close(ref, fast, dtype)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kernel", ["sign", "huber(a=0.5)"])
@pytest.mark.parametrize("nonfinite", ["propagate", "skip"])
def test_cautious_bitwise_equal_reference(dtype, kernel, nonfinite):
    _assert_bitwise(*_step_pair(kernel, dtype, maximize=False, wd=0.1, nonfinite=nonfinite, cautious=True))


@pytest.mark.usefixtures("interpreter")
def test_cautious_transcendental_matches_reference_to_rounding():
    ref, fast = _step_pair("tanh(a=0.5)", torch.float32, maximize=False, wd=0.1, nonfinite="propagate", cautious=True)
    _assert_rounding_close(ref, fast, torch.float32)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("lr_dtype", [torch.float64, torch.float32])
def test_tensor_lr_equals_reference_with_the_same_tensor(lr_dtype):
    """The kernel reads lr as float64 and forms 1 - lr*wd in float64, as the reference does for a float or a
    float64 tensor; a float32 lr (exactly representable here: 2**-7) gives the same result."""
    lr = torch.tensor(2.0**-7, dtype=lr_dtype)
    _assert_bitwise(*_step_pair("sign", torch.float32, maximize=False, wd=0.5, nonfinite="propagate", lr=lr))


@pytest.mark.usefixtures("interpreter")
def test_momentum_in_another_dtype():
    """Each of param, grad and momentum has its own pointer type: a bfloat16 momentum with float32 params."""
    gen = torch.Generator().manual_seed(2)
    ps = [torch.randn(n, generator=gen) for n in (5, 2 * BLOCK + 1)]
    ms = [torch.randn(p.shape, generator=gen).bfloat16() for p in ps]
    gs = [torch.randn(p.shape, generator=gen) for p in ps]
    ref_p, ref_m = [p.clone() for p in ps], [m.clone() for m in ms]
    kw = dict(lr=LR, beta1=0.9, beta2=0.99, weight_decay=0.1, kernel="sign")
    lion_reference(ref_p, gs, ref_m, **kw)
    lion_triton(ps, gs, ms, **kw)
    _assert_bitwise(ref_p + ref_m, ps + ms)


@pytest.mark.usefixtures("interpreter")
def test_one_step_applies_exactly_one_update():
    """No autotuner re-runs the in-place kernel: from p = 0, m = 0 with g = 1, lr = 1, betas 0, one step gives
    p = -1 and m = 1 everywhere (two updates would give -2), for tensors spanning many blocks and one launch."""
    sizes = [3 * BLOCK + 1, 1, BLOCK, 17]
    ps = [torch.zeros(n) for n in sizes]
    ms = [torch.zeros(n) for n in sizes]
    gs = [torch.ones(n) for n in sizes]
    for cautious in (False, True):
        for p, m in zip(ps, ms):
            p.zero_()
            m.zero_()
        lion_triton(ps, gs, ms, lr=1.0, beta1=0.0, beta2=0.0, weight_decay=0.0, kernel="sign", cautious=cautious)
        for p, m in zip(ps, ms):
            assert torch.equal(p, -torch.ones_like(p)) and torch.equal(m, torch.ones_like(m))


@pytest.mark.usefixtures("interpreter")
def test_one_launch_per_dtype_group_and_the_table_is_cached(monkeypatch):
    kernels = triton_path._kernels(True)
    launches = []
    original = kernels._step_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return original[grid]

    monkeypatch.setattr(kernels, "_step_kernel", Counting())
    ps = [torch.randn(n) for n in (BLOCK + 1, 3, 2 * BLOCK)] + [torch.randn(5, dtype=torch.float64)]
    kw = dict(lr=LR, beta1=0.9, beta2=0.99, weight_decay=0.0, kernel="sign")
    before = len(triton_path._tables)
    for _ in range(2):
        lion_triton(ps, [torch.randn_like(p) for p in ps], [torch.zeros_like(p) for p in ps], **kw)
    assert sorted(launches) == [(1,), (1,), (5,), (5,)]  # float32: 2 + 1 + 2 blocks in one launch; float64: 1
    assert len(triton_path._tables) <= before + 4  # the params' rows repeat; only the fresh grads/momenta change the keys


@pytest.mark.usefixtures("interpreter")
def test_what_the_kernel_cannot_take_is_refused_with_a_reason():
    p = torch.nn.Parameter(torch.zeros(4, 4))
    with pytest.raises(RuntimeError, match="whole tensor"):
        Lion([p], kernel="l2", fused=True)
    with pytest.raises(ValueError, match="block_size"):
        lion_triton([torch.zeros(3)], [torch.zeros(3)], [torch.zeros(3)], lr=LR, beta1=0.9, beta2=0.99, weight_decay=0.0, kernel="sign",
                    block_size=100)  # fmt: skip
    q = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    q.grad = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="stochastic rounding"):
        Lion([q], fused=True).step()
    assert "stochastic rounding" in Lion([q]).paths()[0].why
    with pytest.raises(RuntimeError, match="int8"):
        r = torch.nn.Parameter(torch.zeros(5000))
        r.grad = torch.ones(5000)
        Lion([r], fused=True, momentum_dtype="int8").step()


def test_cpu_tensors_need_the_interpreter_and_cuda_tensors_refuse_it(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "address table" in triton_path.unavailable_reason("cuda")
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in triton_path.unavailable_reason("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the reasons given without CUDA")
def test_without_cuda_fused_true_on_cuda_says_why():
    assert triton_path.unavailable_reason("cuda") == "CUDA is not available"
    assert lionk.fused_unavailable_reason("sign", "cuda") == "CUDA is not available"
    assert lionk.fused_unavailable_reason("nuclear", "cuda") == "CUDA is not available"


def test_without_triton_the_package_works_and_says_why():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, lionk\n"
        "from lionk._engine import triton\n"
        "print('REASON', triton.unavailable_reason('cuda'))\n"
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
        "lionk.Lion([p], lr=0.5).step(); assert torch.equal(p.detach(), torch.full((3,), 0.5))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert "REASON triton failed to import" in out.stdout or "REASON triton is not installed" in out.stdout


def _nvidia_backend():
    try:
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception:
        return None
    return GPUTarget


@pytest.mark.skipif(_nvidia_backend() is None, reason="needs triton's NVIDIA backend (no GPU needed)")
@pytest.mark.parametrize("kernel, cautious", [("sign", False), ("huber(a=0.5)", True)])
def test_compiles_for_h100_with_vector_loads_ieee_division_and_no_fma(kernel, cautious):
    """Compile the step kernel for sm_90 (ptxas ships with triton; no GPU needed) and read the PTX: full blocks
    use 128-bit loads and stores, float32 divisions are div.rn, and no multiply-add is contracted."""
    import triton
    import triton.language as tl

    kernels = triton_path._kernels(False)
    direction = triton_path._direction(get_kernel(kernel), False)
    consts = dict(P_DT=tl.uint16, G_DT=tl.uint16, M_DT=tl.float32, OPMATH=tl.float32, DIRECTION=direction, MAXIMIZE=False,
                  SKIP=True, CAUTIOUS=cautious, CAUTIOUS_DECAY=False, BLOCK=triton_path.BLOCK, ALIGNED=True)  # fmt: skip
    pointers = {"table": "*i64", "block_map": "*i64", "scalars": "*fp64", "lr_ptr": "*fp64", "counts": "*i64"}
    signature = pointers | dict.fromkeys(consts, "constexpr")
    aligned = {(i,): [["tt.divisibility", 16]] for i in range(5)}
    source = triton.compiler.ASTSource(fn=kernels._step_kernel, signature=signature, constexprs=consts, attrs=aligned)
    options = dict(num_warps=triton_path.NUM_WARPS, enable_fp_fusion=False)
    ptx = triton.compile(source, target=_nvidia_backend()("cuda", 90, 32), options=options).asm["ptx"]
    assert "ld.global.v4" in ptx and "st.global.v4" in ptx
    assert "fma" not in ptx and "div.full" not in ptx and "div.approx" not in ptx
    if kernel.startswith("huber"):
        assert "div.rn.f32" in ptx


# ------------------------------------------------------------------------------------------------
# On a GPU: the compiled kernels against the reference path on the same device
# ------------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", ["sign", "quadratic"])
@pytest.mark.parametrize("nonfinite, maximize, wd, cautious", [("propagate", False, 0.0, False), ("skip", True, 0.3, True)])
def test_cuda_exact_kernels_bitwise_equal_reference(dtype, kernel, nonfinite, maximize, wd, cautious):
    ref, fast = _step_pair(kernel, dtype, maximize=maximize, wd=wd, nonfinite=nonfinite, cautious=cautious, device="cuda", block_size=1024)
    _assert_bitwise([t.cpu() for t in ref], fast)


@cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", ["huber(a=0.5)", *TRANSCENDENTAL])
def test_cuda_other_kernels_match_reference_to_rounding(dtype, kernel):
    """huber too: torch on CUDA divides by a Python scalar as a multiplication by its reciprocal (1 ulp)."""
    ref, fast = _step_pair(kernel, dtype, maximize=True, wd=0.3, nonfinite="propagate", device="cuda", block_size=1024)
    _assert_rounding_close([t.cpu() for t in ref], fast, dtype)


@cuda
def test_cuda_optimizer_fused_true_runs_triton_and_matches_foreach():
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8)).cuda()
    twin = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 8)).cuda()
    twin.load_state_dict(model.state_dict())
    opt, ref = Lion(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True), Lion(twin.parameters(), lr=1e-3, weight_decay=0.1)
    for _ in range(5):
        x = torch.randn(16, 64, device="cuda")
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
