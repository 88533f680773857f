r"""Momentum storage (float32, bfloat16, int8 blockwise) and stochastic rounding.

**Stochastic rounding** of a float32 value :math:`x` to a 16-bit float format (bfloat16 or float16):
let :math:`a` and :math:`b` be the two representable neighbours of :math:`x` with :math:`|a| \le |x| < |b|`;
the result is :math:`b` with probability :math:`(|x|-|a|)/(|b|-|a|)` and :math:`a` otherwise, so its
expectation is :math:`x` (up to :math:`2^{-16}` of an ulp). Exactly representable values, infinities and
NaN are kept. The uniform number :math:`r = k / 2^{16}` of each element comes from a 32-bit hash of
(tensor, step, element index in the parameter's memory order), see :func:`random_bits`: the weight uses
its high 16 bits and the momentum (or the int8 codes) its low 16 bits, so one hash serves both. A run is
bitwise reproducible, a resumed run continues with the same bits, and every execution path (reference,
foreach, fused) draws the same numbers. The native library implements the same formulas (``_engine/native.c``).

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

**The storage protocol**: every momentum storage is a :class:`Storage` (:class:`FloatStorage` for a float dtype,
:class:`Int8Storage` for the blockwise codes). A storage creates a parameter's state (:meth:`Storage.init`),
says what is wrong with a state it is asked to step (:meth:`Storage.problem`, checked before any memory is
written), reads the momentum into the opmath dtype and writes it back rounded (:meth:`Storage.read`,
:meth:`Storage.write`), and names its layout for the fused paths (:attr:`Storage.name`). Weights are stored
by :func:`store_weight` with the same rounding. A new storage is a new subclass, registered in
:func:`storage_for`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._tensor import as_real, is_dtensor, layout_problem, share_dense_layout

__all__ = [
    "FloatStorage",
    "Int8Storage",
    "Storage",
    "held_storage",
    "rounding_bits",
    "storage_for",
    "store_weight",
    "MOMENTUM_DTYPES",
    "INT8_BLOCK",
    "INT8_MIN_NUMEL",
    "canonical_momentum_dtype",
    "stochastic_round",
    "quantize_int8",
    "dequantize_int8",
    "HALF_TYPES",
    "read_momentum",
    "convert_momentum",
]

MOMENTUM_DTYPES = (None, "float32", "bfloat16", "int8")
INT8_BLOCK = 256
INT8_MIN_NUMEL = 4096
HALF_TYPES = (torch.bfloat16, torch.float16)  # the storages that round stochastically
_M32 = 0xFFFFFFFF


def canonical_momentum_dtype(value: Any) -> str | None:
    """None, "float32", "bfloat16" or "int8" from a torch dtype or its name; ValueError/TypeError otherwise."""
    if value is None:
        return None
    if not isinstance(value, (str, torch.dtype)):
        raise TypeError(
            f"Invalid momentum_dtype: {value!r} of type {type(value).__name__} (must be None, torch.float32, torch.bfloat16, 'int8' "
            "or one of the names 'float32', 'bfloat16')"
        )
    name = str(value).removeprefix("torch.")
    if name not in MOMENTUM_DTYPES:
        raise ValueError(f"Invalid momentum_dtype: {value!r} (must be one of None, torch.float32, torch.bfloat16, 'int8')")
    return name


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
    """Each element's position in memory (int64, t's shape) when t covers its memory densely (contiguous,
    channels_last or any permutation of them), else its row-major index."""
    n = t.numel()
    flat = torch.arange(n, dtype=torch.int64, device=t.device)
    if t.dim() > 0 and not t.is_contiguous() and share_dense_layout(t):
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


def rounding_bits(t: Tensor, key: int | None) -> Tensor | None:
    """The 32 random bits of every element of ``t`` under ``key`` (:func:`random_bits` of its position in t's memory
    order; a DTensor: in this rank's shard), or None without a key (round to nearest)."""
    if key is None:
        return None
    return random_bits(memory_order_index(t.to_local() if is_dtensor(t) else t), key)


def store(dst: Tensor, value: Tensor, r: Tensor | None) -> None:
    """``dst.copy_(value)``, rounding stochastically with the uniforms ``r`` when given (dst bfloat16/float16)."""
    if r is None or dst.dtype not in HALF_TYPES:
        dst.copy_(value)
        return
    if is_dtensor(dst):  # round this rank's shard: r holds its positions' bits
        dst, value = dst.to_local(), value.to_local()
    dst.copy_(stochastic_round(value.to(torch.float32), dst.dtype, r))


def store_weight(weight: Tensor, value: Tensor, bits: Tensor | None) -> None:
    """Write a new weight (its real view for complex weights), rounding a bfloat16/float16 weight stochastically with
    the high 16 of the element's random ``bits`` (:func:`rounding_bits`), else to nearest."""
    store(weight, value, None if bits is None else uniform16(bits >> 16))


class Storage:
    """How a parameter's momentum is held in its state (the storage protocol; see the module docstring).

    ``name`` is the element type the fused paths read and write (``"float32"``, ``"bfloat16"``, ..., ``"int8"``);
    ``rounds`` says whether writing it rounds stochastically when a rounding key is given.
    """

    name: str
    rounds: bool

    def init(self, param: Tensor) -> dict[str, Tensor]:
        """The zero momentum of ``param`` in this storage: the state entries to add."""
        raise NotImplementedError

    def problem(self, state: dict[str, Any], param: Tensor) -> str | None:
        """What makes ``state`` unusable as this storage's momentum of ``param`` (None if nothing): checked
        before a step touches any memory."""
        raise NotImplementedError

    def read(self, state: dict[str, Any], opmath: torch.dtype) -> Tensor:
        """The momentum in the ``opmath`` dtype (pairs of reals for a complex parameter)."""
        raise NotImplementedError

    def write(self, state: dict[str, Any], value: Tensor, key: int | None, bits: Tensor | None) -> None:
        """Store the new momentum ``value`` (opmath), rounding stochastically under ``key`` (``bits``: the random bits
        of the parameter's elements, :func:`rounding_bits`) or, without a key, to nearest."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class FloatStorage(Storage):
    """The momentum as a float tensor of ``dtype`` (complex for complex parameters), in the parameter's layout."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype
        real = torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype
        self.name = str(real).removeprefix("torch.")
        self.rounds = real in HALF_TYPES

    def init(self, param: Tensor) -> dict[str, Tensor]:
        return {"exp_avg": torch.zeros_like(param, dtype=self.dtype, memory_format=torch.preserve_format)}

    def problem(self, state: dict[str, Any], param: Tensor) -> str | None:
        m = state.get("exp_avg")
        if not isinstance(m, Tensor):
            return f"state['exp_avg'] is {type(m).__name__}, not a tensor"
        if "exp_avg_absmax" in state:
            return "state has 'exp_avg_absmax' (int8 scales) but its exp_avg is not int8 codes"
        if m.dtype != self.dtype:
            return f"state['exp_avg'] has dtype {m.dtype}, expected {self.dtype}"
        if m.is_complex() != param.is_complex():
            return f"state['exp_avg'] has dtype {m.dtype} for a {param.dtype} parameter"
        return layout_problem(m, param, "state['exp_avg']")

    def read(self, state: dict[str, Any], opmath: torch.dtype) -> Tensor:
        return as_real(state["exp_avg"]).to(opmath)

    def write(self, state: dict[str, Any], value: Tensor, key: int | None, bits: Tensor | None) -> None:
        store(as_real(state["exp_avg"]), value, None if bits is None or not self.rounds else uniform16(bits & 0xFFFF))


class Int8Storage(Storage):
    """The momentum as int8 codes (``exp_avg``: the parameter's shape, contiguous) and float32 block scales
    (``exp_avg_absmax``: one per block of :data:`INT8_BLOCK` values in row-major order)."""

    name = "int8"
    rounds = True

    def init(self, param: Tensor) -> dict[str, Tensor]:
        return {
            "exp_avg": torch.zeros(param.shape, dtype=torch.int8, device=param.device),
            "exp_avg_absmax": torch.zeros(_blocks(param.numel()), dtype=torch.float32, device=param.device),
        }

    def problem(self, state: dict[str, Any], param: Tensor) -> str | None:
        codes, absmax = state.get("exp_avg"), state.get("exp_avg_absmax")
        if not isinstance(codes, Tensor) or codes.dtype != torch.int8:
            return f"state['exp_avg'] is not int8 codes ({type(codes).__name__} {getattr(codes, 'dtype', '')})"
        if not isinstance(absmax, Tensor):
            return "int8 state['exp_avg'] has no state['exp_avg_absmax'] (its block scales)"
        layout = layout_problem(codes, param, "state['exp_avg']")
        if layout is not None:
            return layout
        if not codes.is_contiguous():
            return f"int8 state['exp_avg'] must be contiguous (its blocks follow row-major order), got strides {codes.stride()}"
        blocks = _blocks(param.numel())
        if absmax.dtype != torch.float32 or absmax.dim() != 1 or absmax.numel() != blocks or not absmax.is_contiguous():
            return (
                f"state['exp_avg_absmax'] must be a contiguous 1-d float32 tensor of {blocks} block scales, "
                f"got {absmax.dtype} of shape {tuple(absmax.shape)}"
            )
        if absmax.device != param.device:
            return f"state['exp_avg_absmax'] is on {absmax.device}, the parameter on {param.device}"
        return None

    def read(self, state: dict[str, Any], opmath: torch.dtype) -> Tensor:
        return dequantize_int8(state["exp_avg"], state["exp_avg_absmax"]).to(opmath)

    def write(self, state: dict[str, Any], value: Tensor, key: int | None, bits: Tensor | None) -> None:
        codes, absmax = quantize_int8(value, key)
        state["exp_avg"].copy_(codes)
        state["exp_avg_absmax"].copy_(absmax)


def _blocks(numel: int) -> int:
    return -(-numel // INT8_BLOCK)


def storage_for(momentum_dtype: str | None, param: Tensor) -> Storage:
    """The storage a param group's ``momentum_dtype`` asks for ``param``: its own dtype for None, and for "int8"
    on tensors of fewer than :data:`INT8_MIN_NUMEL` elements (as bitsandbytes' ``min_8bit_size``)."""
    if momentum_dtype is None or (momentum_dtype == "int8" and param.numel() < INT8_MIN_NUMEL):
        return FloatStorage(param.dtype)
    if momentum_dtype == "int8":
        return Int8Storage()
    return FloatStorage(getattr(torch, momentum_dtype))


def held_storage(state: dict[str, Any]) -> Storage | None:
    """The storage ``state``'s momentum is held in now (None when it has no tensor momentum)."""
    m = state.get("exp_avg")
    if not isinstance(m, Tensor):
        return None
    return Int8Storage() if m.dtype == torch.int8 else FloatStorage(m.dtype)


def read_momentum(state: dict[str, Tensor]) -> Tensor:
    """The momentum held in ``state`` in any storage, as a tensor (float32 for int8 codes)."""
    storage = held_storage(state)
    if isinstance(storage, Int8Storage):
        return storage.read(state, torch.float32)
    return state["exp_avg"]


def convert_momentum(state: dict[str, Any], param: Tensor, storage: Storage) -> None:
    """Re-store ``state``'s momentum in ``storage`` (rounded to nearest); a no-op when it already is."""
    held = held_storage(state)
    if held == storage:
        return
    value = held.read(state, torch.float64 if param.dtype == torch.float64 else torch.float32)
    state.pop("exp_avg_absmax", None)
    state.update(storage.init(param))
    storage.write(state, value, None, None)


# ---------------------------------------------------------------------------------------------------
# int8 blockwise momentum


def quantize_int8(m: Tensor, key: int | None = None) -> tuple[Tensor, Tensor]:
    """Codes (int8, m's shape, contiguous) and float32 block scales of ``m``; stochastic when ``key`` is given
    (the low 16 bits of :func:`random_bits` of each element's row-major index)."""
    flat = m.detach().to(torch.float32).contiguous().view(-1)
    n = flat.numel()
    blocks = _blocks(n)
    padded = torch.nn.functional.pad(flat, (0, blocks * INT8_BLOCK - n)).view(blocks, INT8_BLOCK)
    absmax = padded.abs().amax(dim=1)
    # tensor / tensor: an IEEE division, as in the native library (torch evaluates scalar / tensor as a reciprocal times)
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
