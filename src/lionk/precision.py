r"""Momentum storage (float32, bfloat16, int8 blockwise) and stochastic rounding.

**Stochastic rounding** of a float32 value :math:`x` to a 16-bit float format (bfloat16 or float16):
let :math:`a` and :math:`b` be the two representable neighbours of :math:`x` with :math:`|a| \le |x| < |b|`;
the result is :math:`b` with probability :math:`(|x|-|a|)/(|b|-|a|)` and :math:`a` otherwise, so its
expectation is :math:`x` (up to :math:`2^{-16}` of an ulp). Exactly representable values, infinities and
NaN are kept. The uniform number :math:`r = k / 2^{16}` of each element comes from a 32-bit hash of
(tensor, step, element index in the parameter's memory order), see :func:`random_bits`: the weight uses
its high 16 bits and the momentum (or the int8 codes) its low 16 bits, so one hash serves both. A run is
bitwise reproducible, a resumed run continues with the same bits, and every execution path (reference,
foreach, fused C) draws the same numbers. The C path implements the same formulas (``lion_cpu.c``).

**int8 momentum**: the momentum, flattened in memory order, is cut into blocks of :data:`INT8_BLOCK`
values; each block stores one float32 scale :math:`A = \max|m|` and signed codes
:math:`q = \mathrm{round}(127\, m / A) \in [-127, 127]`, so :math:`\hat m = A q / 127` and
:math:`|\hat m - m| \le A/254` with round to nearest (:math:`< A/127` with stochastic rounding, which
keeps the EMA unbiased: with :math:`\beta_2 = 0.99` most increments are smaller than half a code and
round-to-nearest would drop them). Lion only uses :math:`\mathrm{sign}(c)`, :math:`c = \beta_1 \hat m +
(1-\beta_1) g`, so the step is exact wherever :math:`|c| > \beta_1 A/127`. Tensors of fewer than
:data:`INT8_MIN_NUMEL` elements keep their momentum in the parameter's dtype (as bitsandbytes'
``min_8bit_size``). Storage: ``state["exp_avg"]`` holds the int8 codes (the parameter's shape) and
``state["exp_avg_absmax"]`` the float32 scales, about 1.016 bytes per parameter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._paths import is_dtensor

__all__ = [
    "MOMENTUM_DTYPES",
    "INT8_BLOCK",
    "INT8_MIN_NUMEL",
    "canonical_momentum_dtype",
    "momentum_storage",
    "stochastic_round",
    "quantize_int8",
    "dequantize_int8",
    "HALF_TYPES",
    "has_half_store",
    "stochastic_uniforms",
    "init_momentum",
    "read_momentum",
    "convert_momentum",
]

MOMENTUM_DTYPES = (None, "float32", "bfloat16", "int8")
INT8_BLOCK = 256
INT8_MIN_NUMEL = 4096
HALF_TYPES = (torch.bfloat16, torch.float16)  # the storages that round stochastically
_M32 = 0xFFFFFFFF


def canonical_momentum_dtype(value: Any) -> str | None:
    """None, "float32", "bfloat16" or "int8" from a torch dtype or its name; ValueError otherwise."""
    if value is None:
        return None
    name = str(value).removeprefix("torch.") if isinstance(value, (str, torch.dtype)) else None
    if name not in MOMENTUM_DTYPES:
        raise ValueError(f"Invalid momentum_dtype: {value!r} (must be one of None, torch.float32, torch.bfloat16, 'int8')")
    return name


def momentum_storage(momentum_dtype: str | None, param: Tensor) -> torch.dtype | str:
    """The storage of a parameter's momentum: a torch dtype, or "int8" for blockwise codes.

    ``None`` is the parameter's dtype; "int8" applies to tensors of at least ``INT8_MIN_NUMEL``
    elements, smaller ones keep the parameter's dtype.
    """
    if momentum_dtype is None or (momentum_dtype == "int8" and param.numel() < INT8_MIN_NUMEL):
        return param.dtype
    if momentum_dtype == "int8":
        return "int8"
    return getattr(torch, momentum_dtype)


def check_momentum_dtype(momentum_dtype: str | None, param: Tensor) -> None:
    """ValueError where the storage cannot hold this parameter's momentum (complex parameters keep their dtype)."""
    if momentum_dtype is not None and param.is_complex():
        raise ValueError(f"momentum_dtype={momentum_dtype!r} is not supported for complex parameters (use None)")
    if momentum_dtype == "int8" and is_dtensor(param):
        raise ValueError("momentum_dtype='int8' is not supported for DTensor (FSDP2) parameters (use None, float32 or bfloat16)")


# ---------------------------------------------------------------------------------------------------
# the random numbers: one 32-bit hash per element and step, split between the weight and the momentum


def mix32(x: int) -> int:
    """Wellons' lowbias32 integer hash on a Python int (the per-tensor keys)."""
    x &= _M32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def _mix32_tensor(x: Tensor) -> Tensor:
    """lowbias32 on an int64 tensor holding 32-bit values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def rounding_key(stream: int, step: int) -> int:
    """The 32-bit key of a tensor's ``stream`` (its position in the optimizer) at ``step``."""
    return mix32(mix32(stream ^ 0x5BD1E995) + step)


def memory_order_index(t: Tensor) -> Tensor:
    """Each element's position in memory (int64, t's shape) for dense tensors, else its row-major index."""
    n = t.numel()
    flat = torch.arange(n, dtype=torch.int64, device=t.device)
    if t.dim() > 0 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return flat.as_strided(t.shape, t.stride())
    return flat.view(t.shape)


def random_bits(index: Tensor, key: int) -> Tensor:
    """32 random bits per element: mix32(index * 0x9E3779B1 + key) (int64 tensor, index's shape).

    The weight's stochastic rounding uses the high 16 bits, the momentum's (and the int8 codes') the low 16.
    """
    return _mix32_tensor(((index & _M32) * 0x9E3779B1 + key) & _M32)


def uniform16(bits: Tensor) -> Tensor:
    """float32 uniforms in [0, 1) from 16-bit integers: bits * 2^-16."""
    return bits.to(torch.float32) * 2.0**-16


def stochastic_round(x: Tensor, dtype: torch.dtype, r: Tensor) -> Tensor:
    """Round float32 ``x`` to ``dtype`` (bfloat16/float16), up in magnitude where ``r < (|x|-|a|)/(|b|-|a|)``."""
    y = x.to(dtype)
    yf = y.to(torch.float32)
    ax, ay = x.abs(), yf.abs()
    up = ay < ax  # round to nearest went towards zero: the other neighbour is one ulp further out
    bits = y.view(torch.int16).to(torch.int32)
    other = (bits + torch.where(up, 1, -1)).to(torch.int16).view(dtype)
    ao = other.to(torch.float32).abs()
    a = torch.where(up, ay, ao)
    b = torch.where(up, ao, ay)
    prob = (ax - a) / (b - a)
    far = torch.where(up, other, y)
    near = torch.where(up, y, other)
    rounded = torch.where(r < prob, far, near)
    return torch.where((yf == x) | torch.isnan(x), y, rounded)


def has_half_store(p: Tensor, m: Tensor) -> bool:
    """Whether a step of weight ``p`` with momentum ``m`` stores a bfloat16/float16 value (one that may round)."""
    return p.dtype in HALF_TYPES or m.dtype in HALF_TYPES


def stochastic_uniforms(p: Tensor, m: Tensor, key: int | None) -> tuple[Tensor | None, Tensor | None]:
    """The uniforms of the weight's and the momentum's stochastic rounding: the high and the low 16 bits of
    :func:`random_bits` of each element's position in p's memory order (a DTensor: in this rank's shard);
    None for a store that rounds to nearest (no key) or does not round (a float32/float64 storage)."""
    if key is None or not has_half_store(p, m):
        return None, None
    bits = random_bits(memory_order_index(p.to_local() if is_dtensor(p) else p), key)
    return (uniform16(bits >> 16) if p.dtype in HALF_TYPES else None), (uniform16(bits & 0xFFFF) if m.dtype in HALF_TYPES else None)


def store(dst: Tensor, value: Tensor, r: Tensor | None) -> None:
    """``dst.copy_(value)``, rounding stochastically with the uniforms ``r`` when given (dst bfloat16/float16)."""
    if r is None:
        dst.copy_(value)
        return
    if is_dtensor(dst):  # round this rank's shard: r holds its positions' bits
        dst, value = dst.to_local(), value.to_local()
    dst.copy_(stochastic_round(value.to(torch.float32), dst.dtype, r))


# ---------------------------------------------------------------------------------------------------
# int8 blockwise momentum


def quantize_int8(m: Tensor, key: int | None = None) -> tuple[Tensor, Tensor]:
    """Codes (int8, m's shape, contiguous) and float32 block scales of ``m``; stochastic when ``key`` is given
    (the low 16 bits of :func:`random_bits` of each element's row-major index)."""
    flat = m.detach().to(torch.float32).contiguous().view(-1)
    n = flat.numel()
    blocks = -(-n // INT8_BLOCK)
    padded = torch.nn.functional.pad(flat, (0, blocks * INT8_BLOCK - n)).view(blocks, INT8_BLOCK)
    absmax = padded.abs().amax(dim=1)
    # tensor / tensor: an IEEE division, as in lion_cpu.c (torch evaluates scalar / tensor as a reciprocal times)
    inverse = torch.full_like(absmax, 127.0) / absmax.clamp_min(torch.finfo(torch.float32).tiny)
    scaled = padded * inverse.unsqueeze(1)
    if key is None:
        codes = torch.round(scaled)
    else:
        r = uniform16(random_bits(torch.arange(blocks * INT8_BLOCK, device=m.device), key) & 0xFFFF)
        codes = torch.floor(scaled + r.view(blocks, INT8_BLOCK))
    codes = codes.nan_to_num_(0.0).clamp_(-127, 127).to(torch.int8).view(-1)[:n].view(m.shape)
    return codes, absmax


def dequantize_int8(codes: Tensor, absmax: Tensor) -> Tensor:
    """float32 momentum (codes' shape) from int8 codes and block scales: A * q / 127."""
    n = codes.numel()
    blocks = absmax.numel()
    flat = torch.nn.functional.pad(codes.reshape(-1).to(torch.float32), (0, blocks * INT8_BLOCK - n)).view(blocks, INT8_BLOCK)
    return (flat * (absmax / torch.full_like(absmax, 127.0)).unsqueeze(1)).view(-1)[:n].view(codes.shape)


def read_momentum(state: dict[str, Tensor]) -> Tensor:
    """The momentum held in ``state`` in any storage, as a tensor (float32 for int8 codes)."""
    m = state["exp_avg"]
    if m.dtype == torch.int8:
        return dequantize_int8(m, state["exp_avg_absmax"])
    return m


def convert_momentum(state: dict[str, Tensor], param: Tensor, storage: torch.dtype | str) -> None:
    """Re-store ``state``'s momentum in ``storage`` (a dtype, or "int8"); a no-op when it already is."""
    m = state["exp_avg"]
    if storage == "int8":
        if m.dtype != torch.int8:
            state["exp_avg"], state["exp_avg_absmax"] = quantize_int8(m)
        return
    if m.dtype == storage and "exp_avg_absmax" not in state:
        return
    value = read_momentum(state)
    state.pop("exp_avg_absmax", None)
    state["exp_avg"] = torch.empty_like(param, dtype=storage, memory_format=torch.preserve_format).copy_(value)


def init_momentum(param: Tensor, storage: torch.dtype | str) -> dict[str, Tensor]:
    """A zero momentum for ``param`` in ``storage``: ``{"exp_avg": ...}`` (plus ``"exp_avg_absmax"`` for int8)."""
    if storage == "int8":
        blocks = -(-param.numel() // INT8_BLOCK)
        return {
            "exp_avg": torch.zeros(param.shape, dtype=torch.int8, device=param.device),
            "exp_avg_absmax": torch.zeros(blocks, dtype=torch.float32, device=param.device),
        }
    return {"exp_avg": torch.zeros_like(param, dtype=storage, memory_format=torch.preserve_format)}
