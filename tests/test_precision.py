"""Momentum storage (float32, bfloat16, int8 blockwise) and stochastic rounding, against closed forms."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

import lionk
from lionk import Lion, LionSF, state_bytes
from lionk.precision import (
    INT8_BLOCK,
    INT8_MIN_NUMEL,
    dequantize_int8,
    memory_order_index,
    quantize_int8,
    random_bits,
    stochastic_round,
    uniform16,
)

HALF = [torch.bfloat16, torch.float16]


def _neighbours(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The representable values of ``dtype`` just below and above each float32 x, by exhaustive search.

    Independent of lionk's bit arithmetic: every finite value of the 16-bit format, sorted.
    """
    values = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).to(torch.float32)
    values = torch.unique(values[torch.isfinite(values)])  # sorted; -0 and +0 merge
    hi_idx = torch.searchsorted(values, x, right=False).clamp(max=values.numel() - 1)
    lo_idx = torch.searchsorted(values, x, right=True).sub(1).clamp(min=0)
    return values[lo_idx], values[hi_idx]


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_stochastic_round_picks_a_neighbour_with_the_right_probability(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(2000, generator=gen) * 10.0 ** torch.randint(-6, 4, (2000,), generator=gen), torch.tensor([1e-30, -1e-30])])
    lo, hi = _neighbours(x, dtype)
    draws = 4000
    ups = torch.zeros_like(x)
    for k in range(draws):
        r = uniform16(random_bits(torch.arange(x.numel()), k) >> 16)
        y = stochastic_round(x, dtype, r).to(torch.float32)
        assert torch.all((y == lo) | (y == hi)), "the result must be one of the two neighbours"
        ups += (y == hi).float()
    exact = lo == hi
    p = torch.where(exact, torch.ones_like(x), (x - lo) / (hi - lo))  # exact values: always y == hi == x
    freq = ups / draws
    se = torch.sqrt(p * (1 - p) / draws)
    # deterministic (hashed) draws; 5 standard errors + 1/draws is a bound a correct sampler meets
    assert torch.all((freq - p).abs() <= 5 * se + 1.0 / draws)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_stochastic_round_keeps_representable_and_special_values(dtype):
    special = torch.tensor([0.0, -0.0, 1.0, -2.0, float("inf"), -float("inf"), float("nan"), torch.finfo(dtype).max])
    r = torch.full_like(special, 0.999)
    out = stochastic_round(special, dtype, r)
    expected = special.to(dtype)
    assert torch.equal(out.isnan(), expected.isnan())
    assert torch.equal(out.nan_to_num(), expected.nan_to_num())
    assert torch.equal(torch.signbit(out), torch.signbit(expected))


@pytest.mark.parametrize("half", ["high", "low"])
def test_random_bits_are_uniform_independent_and_reproducible(half):
    def r(key):
        bits = random_bits(torch.arange(200_000), key)
        return uniform16(bits >> 16 if half == "high" else bits & 0xFFFF)

    a = r(7)
    assert torch.equal(a, r(7)) and not torch.equal(a, r(8))
    assert a.min() >= 0 and a.max() < 1
    expected = 200_000 / 20
    assert ((torch.histc(a, bins=20, min=0, max=1) - expected).abs() < 5 * math.sqrt(expected)).all()
    # the two halves (weight and momentum rounding) and consecutive keys (steps) are uncorrelated
    bits = random_bits(torch.arange(200_000), 7)
    hi, lo = uniform16(bits >> 16) - 0.5, uniform16(bits & 0xFFFF) - 0.5
    assert abs((hi * lo).mean() / (hi.std() * lo.std())) < 5 / math.sqrt(200_000)
    b = r(8) - 0.5
    assert abs(((a - 0.5) * b).mean() / ((a - 0.5).std() * b.std())) < 5 / math.sqrt(200_000)


def test_memory_order_index_follows_channels_last():
    t = torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last)
    idx = memory_order_index(t)
    flat = torch.empty(t.numel(), dtype=torch.int64)
    flat.as_strided(t.shape, t.stride()).copy_(idx)
    assert torch.equal(flat, torch.arange(t.numel()))


# ---------------------------------------------------------------------------------------------------
# int8 blockwise codes


def test_int8_round_to_nearest_error_bound_and_layout():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(10_000, generator=gen) * torch.rand(10_000, generator=gen) ** 4
    m[300:556] = 0.0  # an all-zero block
    codes, absmax = quantize_int8(m)
    assert codes.dtype == torch.int8 and codes.shape == m.shape and absmax.numel() == math.ceil(10_000 / INT8_BLOCK)
    blocks = torch.nn.functional.pad(m, (0, absmax.numel() * INT8_BLOCK - m.numel())).view(-1, INT8_BLOCK)
    assert torch.equal(absmax, blocks.abs().amax(dim=1))
    assert codes.abs().max() <= 127
    err = (dequantize_int8(codes, absmax) - m).abs()
    bound = (absmax / 254).repeat_interleave(INT8_BLOCK)[: m.numel()]
    assert torch.all(err <= bound * (1 + 1e-6) + 1e-12)
    assert torch.equal(dequantize_int8(codes, absmax)[300:512], torch.zeros(212))
    # the largest entry of each block is stored exactly (code +-127)
    top = blocks.abs().argmax(dim=1)
    deq = torch.nn.functional.pad(dequantize_int8(codes, absmax), (0, absmax.numel() * INT8_BLOCK - m.numel())).view(-1, INT8_BLOCK)
    rows = torch.arange(absmax.numel())
    assert torch.allclose(deq[rows, top], blocks[rows, top], rtol=1e-6, atol=0)


def test_int8_stochastic_codes_are_unbiased():
    gen = torch.Generator().manual_seed(2)
    m = torch.randn(4096, generator=gen)
    codes, absmax = quantize_int8(m, 12)
    assert ((dequantize_int8(codes, absmax) - m).abs() < (absmax / 127).repeat_interleave(INT8_BLOCK)).all()
    mean = torch.zeros_like(m)
    draws = 400
    for k in range(draws):
        mean += dequantize_int8(*quantize_int8(m, k))
    mean /= draws
    step = (absmax / 127).repeat_interleave(INT8_BLOCK)
    # each draw is one of two codes one step apart: standard error <= step / (2 sqrt(draws))
    assert ((mean - m).abs() <= 5 * step / (2 * math.sqrt(draws)) + 1e-7).all()


# ---------------------------------------------------------------------------------------------------
# the optimizer's storage


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 8)).to(dtype)


def _train(model, opt, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(32, 64, generator=gen).to(dtype)
        y = torch.randn(32, 8, generator=gen).to(dtype)
        opt.zero_grad()
        (model(x).float() - y.float()).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("momentum_dtype, expected", [(None, torch.float32), (torch.float32, torch.float32), ("bfloat16", torch.bfloat16)])
def test_momentum_storage_dtypes(momentum_dtype, expected):
    model = _model()
    opt = Lion(model.parameters(), lr=1e-3, momentum_dtype=momentum_dtype)
    _train(model, opt, 1)
    for p in model.parameters():
        assert opt.state[p]["exp_avg"].dtype == expected
    assert opt.param_groups[0]["momentum_dtype"] in (None, "float32", "bfloat16")


def test_int8_storage_only_for_large_tensors():
    model = _model()
    opt = Lion(model.parameters(), lr=1e-3, momentum_dtype="int8")
    _train(model, opt, 2)
    for p in model.parameters():
        state = opt.state[p]
        if p.numel() >= INT8_MIN_NUMEL:
            assert state["exp_avg"].dtype == torch.int8 and state["exp_avg_absmax"].numel() == math.ceil(p.numel() / INT8_BLOCK)
        else:
            assert state["exp_avg"].dtype == p.dtype and "exp_avg_absmax" not in state


def test_state_bytes_by_storage():
    """On the bench parameter set's kind of tensors: 50% (fp32), 25% (bf16) and ~13% (int8) of AdamW's state."""
    params = [torch.nn.Parameter(torch.zeros(s)) for s in [(1024, 512), (512, 512), (2048, 512), (512,)]]
    for p in params:
        p.grad = torch.ones_like(p)
    adamw = torch.optim.AdamW(params, lr=1e-3)
    adamw.step()
    base = sum(8 * p.numel() for p in params)
    assert state_bytes(adamw) == base + 4 * len(params)  # + the float32 step counters
    fractions = {}
    for md in (None, "bfloat16", "int8"):
        opt = Lion(params, lr=0.0, momentum_dtype=md)
        opt.step()
        fractions[md] = (state_bytes(opt) - 4 * len(params)) / base  # without the float32 step counters
    assert fractions[None] == pytest.approx(0.5, abs=1e-6)
    assert fractions["bfloat16"] == pytest.approx(0.25, abs=1e-3)
    assert fractions["int8"] == pytest.approx(1.0 / 8 * (1 + 4 / INT8_BLOCK), abs=2e-3)  # 1 B + 4 B per 256 of 8 B


def _sign_flip_fraction(momentum_dtype: str, steps: int = 60) -> float:
    """Train with float32 Lion and count, over all steps, entries where sign(c) from the stored momentum
    (quantised to ``momentum_dtype`` from the exact one) differs from the exact sign(c)."""
    model = _model()
    opt = Lion(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(3)
    flips = total = 0
    for _ in range(steps):
        x, y = torch.randn(32, 64, generator=gen), torch.randn(32, 8, generator=gen)
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        for p in model.parameters():
            if p.numel() < INT8_MIN_NUMEL or "exp_avg" not in opt.state[p]:
                continue
            m = opt.state[p]["exp_avg"]
            stored = dequantize_int8(*quantize_int8(m)) if momentum_dtype == "int8" else m.to(torch.bfloat16).float()
            exact, approx = torch.sign(0.9 * m + 0.1 * p.grad), torch.sign(0.9 * stored + 0.1 * p.grad)
            flips += int((exact != approx).sum())
            total += m.numel()
        opt.step()
    return flips / total


def test_quantised_momentum_rarely_flips_the_sign():
    """Lion uses only sign(c): storage error flips it only where |c| is below the error (measured)."""
    bf16, int8 = _sign_flip_fraction("bfloat16"), _sign_flip_fraction("int8")
    assert bf16 < 0.005  # bf16 keeps 8 significant bits: a relative error of 2^-9
    assert int8 < 0.05  # int8 errors reach absmax/254 of the block: small entries of c can flip
    assert bf16 < int8


@pytest.mark.parametrize("momentum_dtype, tol", [("bfloat16", 0.02), ("int8", 0.05)])
def test_low_bit_momentum_trajectory_stays_close_to_float32(momentum_dtype, tol):
    """Same problem, same data: the weights after 50 steps differ from float32 Lion's by a small fraction of the
    distance travelled (lr * steps per entry at most)."""
    ref_model, model = _model(), _model()
    start = [p.detach().clone() for p in ref_model.parameters()]
    _train(ref_model, Lion(ref_model.parameters(), lr=1e-3, weight_decay=0.1), 50)
    _train(model, Lion(model.parameters(), lr=1e-3, weight_decay=0.1, momentum_dtype=momentum_dtype), 50)
    moved = sum((a - s).abs().sum() for a, s in zip(ref_model.parameters(), start))
    diff = sum((a - b).abs().sum() for a, b in zip(ref_model.parameters(), model.parameters()))
    assert diff / moved < tol


@pytest.mark.parametrize(
    "dtype, momentum_dtype, sr",
    [
        (torch.float32, None, True),
        (torch.float32, "bfloat16", True),
        (torch.float32, "bfloat16", False),
        (torch.float32, "int8", True),
        (torch.float32, "int8", False),
        (torch.bfloat16, None, True),
        (torch.bfloat16, "int8", True),
        (torch.float16, "float32", True),
    ],
)
def test_state_dict_round_trip_continues_bitwise(dtype, momentum_dtype, sr):
    """Save after 3 steps, load into a fresh optimizer (through torch.save / weights_only load), continue:
    the same weights and state as an uninterrupted run, in the same storage."""
    model_a, model_b = _model(dtype), _model(dtype)
    kw = dict(lr=1e-3, weight_decay=0.1, momentum_dtype=momentum_dtype, stochastic_rounding=sr)
    opt_a = Lion(model_a.parameters(), **kw)
    _train(model_a, opt_a, 3)
    model_b.load_state_dict(model_a.state_dict())
    buffer = io.BytesIO()
    torch.save(opt_a.state_dict(), buffer)
    buffer.seek(0)
    opt_b = Lion(model_b.parameters(), lr=0.5, momentum_dtype=momentum_dtype)  # lr comes from the checkpoint
    opt_b.load_state_dict(torch.load(buffer, weights_only=True))
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
        for key, value in opt_a.state[p_a].items():
            loaded = opt_b.state[p_b][key]
            assert type(loaded) is type(value)
            if isinstance(value, torch.Tensor):
                assert loaded.dtype == value.dtype and torch.equal(loaded, value)
    _train(model_a, opt_a, 4, seed=9)
    _train(model_b, opt_b, 4, seed=9)
    for p_a, p_b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(p_a, p_b)
        assert torch.equal(opt_a.state[p_a]["exp_avg"], opt_b.state[p_b]["exp_avg"])


def test_checkpoint_converts_between_storages():
    model = _model()
    fp32 = Lion(model.parameters(), lr=1e-3)
    _train(model, fp32, 3)
    w = model[0].weight
    exact = fp32.state[w]["exp_avg"].clone()
    int8 = Lion(model.parameters(), lr=1e-3, momentum_dtype="int8")
    int8.load_state_dict(fp32.state_dict())  # a float32 checkpoint into an int8 optimizer
    _train(model, int8, 1)
    assert int8.state[w]["exp_avg"].dtype == torch.int8
    back = Lion(model.parameters(), lr=1e-3)  # and an int8 checkpoint into a float32 one
    back.load_state_dict(int8.state_dict())
    codes, absmax = int8.state[w]["exp_avg"], int8.state[w]["exp_avg_absmax"]
    _train(model, back, 0)
    with torch.no_grad():
        model.zero_grad()
        back.param_groups[0]["lr"] = 0.0
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        back.step()  # beta2 * m: the dequantised momentum, decayed once
    assert back.state[w]["exp_avg"].dtype == torch.float32 and "exp_avg_absmax" not in back.state[w]
    assert torch.allclose(back.state[w]["exp_avg"], 0.99 * dequantize_int8(codes, absmax), rtol=1e-6, atol=0)
    assert exact.abs().max() > 0


def test_bf16_weights_keep_small_steps_with_stochastic_rounding():
    """With round to nearest, bf16 weights lose Lion's lr=1e-4 steps and all
    weight decay with lr*wd <= 3e-4; with stochastic rounding the mean drift matches float32's."""
    n, steps, lr = 20_000, 200, 1e-4
    gen = torch.Generator().manual_seed(4)
    start = (torch.rand(n, generator=gen) + 0.5) * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)  # |w| in [0.5, 1.5)
    start = start.to(torch.bfloat16)
    drift = {}
    for name, dtype, sr in (("fp32", torch.float32, True), ("sr", torch.bfloat16, True), ("rtn", torch.bfloat16, False)):
        p = torch.nn.Parameter(start.to(dtype, copy=True))
        opt = Lion([p], lr=lr, weight_decay=1.0, stochastic_rounding=sr)  # decay lr*wd = 1e-4
        for _ in range(steps):
            p.grad = torch.ones(n, dtype=dtype)  # sign step -lr every step
            opt.step()
        drift[name] = p.detach().float() - start.float()
    expected = drift["fp32"]
    # float32 itself: (w + 1) * (1 - 1e-4)^200 - 1 per entry, in closed form
    closed = (start.float() + 1) * (1 - lr) ** steps - 1 - start.float()
    assert torch.allclose(expected, closed, atol=1e-5)
    # stochastic rounding: mean drift within 5 standard errors of the float32 drift
    err = drift["sr"] - expected
    assert abs(err.mean()) < 5 * err.std() / math.sqrt(n)
    # round to nearest: most weights never moved (the ulp at |w| >= 0.5 is 2^-8 or 2^-7 >> 1e-4 + 1e-4 |w|)
    assert (drift["rtn"] == 0).float().mean() > 0.9
    assert drift["rtn"].abs().mean() < 0.1 * expected.abs().mean()


def test_stochastic_rounding_is_default_for_half_weights_and_reproducible():
    runs = []
    for _ in range(2):
        model = _model(torch.bfloat16)
        opt = Lion(model.parameters(), lr=1e-3)
        _train(model, opt, 5)
        runs.append([p.detach().clone() for p in model.parameters()])
        assert opt.state[model[0].weight]["step"] == 5
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    model = _model(torch.bfloat16)
    opt = Lion(model.parameters(), lr=1e-3, stochastic_rounding=False)
    _train(model, opt, 5)
    assert opt.state[model[0].weight]["step"] == 5  # counted whether or not it rounds stochastically
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], model.parameters()))


@pytest.mark.parametrize("path", [dict(fused=False), dict(foreach=True), dict()])
def test_paths_agree_with_low_bit_storage(path):
    """Reference, foreach and the default (fused C) path give identical results with mixed storage and rounding."""
    results = []
    for kw in (dict(fused=False), path):
        model = _model(torch.bfloat16)
        opt = Lion(model.parameters(), lr=1e-3, weight_decay=0.1, momentum_dtype="float32", **kw)
        _train(model, opt, 3)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_lionsf_with_int8_momentum_runs():
    model = _model()
    opt = LionSF(model.parameters(), lr=1e-3, momentum_dtype="int8")
    _train(model, opt, 3)
    assert opt.state[model[0].weight]["exp_avg"].dtype == torch.int8


def test_bad_storage_values_name_the_group():
    p = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(ValueError, match=r"Invalid momentum_dtype: 'int4'.*must be one of"):
        Lion([p], momentum_dtype="int4")
    with pytest.raises(ValueError, match=r"Invalid momentum_dtype: torch.float16 .*in param group 1"):
        Lion([{"params": [p]}, {"params": [torch.nn.Parameter(torch.zeros(2))], "momentum_dtype": torch.float16}])
    z = torch.nn.Parameter(torch.zeros(8192, dtype=torch.complex64))
    with pytest.raises(ValueError, match=r"complex parameters.*in param group 0"):
        Lion([z], momentum_dtype="int8")
    with pytest.raises(ValueError, match=r"Invalid stochastic_rounding"):
        Lion([p], stochastic_rounding="yes")
    assert lionk.Lion([p], momentum_dtype=torch.bfloat16).param_groups[0]["momentum_dtype"] == "bfloat16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype, momentum_dtype", [(torch.bfloat16, None), (torch.float32, "bfloat16"), (torch.float32, "int8")])
def test_cuda_storage_and_rounding_match_cpu(dtype, momentum_dtype):
    """Three steps from the same weights with the same gradients on CPU (fused C) and CUDA (foreach): the same
    hash bits and formulas give the same results; CUDA's float32 ops are correctly rounded like the CPU's, so
    at most a rare entry may land one ulp (or one int8 code) apart."""
    models = [_model(dtype), _model(dtype).cuda()]
    opts = [Lion(m.parameters(), lr=1e-3, weight_decay=0.1, momentum_dtype=momentum_dtype) for m in models]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p_cpu, p_cuda in zip(models[0].parameters(), models[1].parameters()):
            g = torch.randn(p_cpu.shape, generator=gen).to(dtype)
            p_cpu.grad, p_cuda.grad = g, g.cuda()
        for opt in opts:
            opt.step()
    for p_cpu, p_cuda in zip(models[0].parameters(), models[1].parameters()):
        for a, b in ((p_cpu.detach(), p_cuda.detach().cpu()), (opts[0].state[p_cpu]["exp_avg"], opts[1].state[p_cuda]["exp_avg"].cpu())):
            assert a.dtype == b.dtype
            same = a == b
            assert same.float().mean() > 0.999
            if a.dtype == torch.int8:
                assert ((a.int() - b.int()).abs() <= 1).all()
            else:
                ulp = torch.finfo(a.dtype).eps * a.float().abs().clamp_min(1e-3)
                assert ((a.float() - b.float()).abs() <= ulp).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_cuda_stochastic_round_equals_cpu(dtype):
    x = torch.randn(100_000) * 3
    r = uniform16(random_bits(torch.arange(x.numel()), 5) >> 16)
    on_cuda = stochastic_round(x.cuda(), dtype, uniform16(random_bits(torch.arange(x.numel(), device="cuda"), 5) >> 16)).cpu()
    assert torch.equal(on_cuda, stochastic_round(x, dtype, r))
    codes, absmax = quantize_int8(x, 3)
    codes_cuda, absmax_cuda = quantize_int8(x.cuda(), 3)
    assert torch.equal(codes, codes_cuda.cpu()) and torch.equal(absmax, absmax_cuda.cpu())


@pytest.mark.parametrize(
    "dtype, sr, lr, warns",
    [(torch.bfloat16, False, 1e-4, True), (torch.float16, False, 1e-5, True), (torch.bfloat16, True, 1e-4, False),
     (torch.float32, False, 1e-4, False), (torch.bfloat16, False, 1e-1, False), (torch.bfloat16, False, 0.0, False)],
)  # fmt: skip
def test_lost_steps_under_round_to_nearest_are_warned_once(dtype, sr, lr, warns):
    """bf16 weights near 1 have an ulp of 2^-7: a step of 1e-4 rounded to nearest returns the old weight."""
    p = torch.nn.Parameter((torch.rand(1000, generator=torch.Generator().manual_seed(0)) + 0.5).to(dtype))
    opt = Lion([p], lr=lr, weight_decay=0.1, stochastic_rounding=sr)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            p.grad = torch.randn(1000, generator=torch.Generator().manual_seed(1)).to(dtype)
            opt.step()
    lost = [w for w in caught if "lose their steps" in str(w.message)]
    assert len(lost) == (1 if warns else 0)
    if warns:
        assert "100% of the" in str(lost[0].message) and "stochastic_rounding=True" in str(lost[0].message)
