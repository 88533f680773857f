r"""Triton kernels of the fused Lion-K step (imported only by :mod:`lionk._paths.triton_gpu`).

Many tensors per launch: the host builds one int64 ``table`` with a row per tensor,
``(param address, grad address, momentum address, numel, first block)``, and a ``block_map``
with the tensor index of every block of ``BLOCK`` elements. Program ``pid`` reads its tensor
``t = block_map[pid]``, turns the three addresses into typed pointers and updates elements
``[(pid - first_block[t]) * BLOCK, ... + BLOCK)`` of that tensor. The grid is the total number
of blocks of all the tensors of one dtype combination.

Per element, in ``OPMATH`` (float64 for float64 params, else float32), with the reference path's
operations in its order (no multiply-add contraction: the launches pass ``enable_fp_fusion=False``):

    g = -g if maximize;  skip mode: bad = g not finite, g = m where bad
    c = m*b1 + g*(1-b1);  u = grad K(c)
    cautious: u = u * (u*g > 0) / max(count(u*g > 0) / numel, 1e-3)   (count from _agree_kernel)
    u = u + (c - c)                      (NaN where c is not finite)
    p = p*(1 - lr*wd) - u*lr;  m = m*b2 + g*(1-b2);  skip mode: p, m unchanged where bad

Storage conversions are exact on load; stores round to nearest even (bfloat16 with integer bit
operations, which the interpreter and the GPU evaluate alike; float16 with the hardware conversion).

This file is executed twice at most, as two module objects: once compiled (``triton.jit``) and
once under Triton's interpreter (for CPU tensors, in tests). Under the interpreter, whose
``libdevice`` calls are not implemented, ``libdevice`` is a numpy stand-in with the same names.
"""

from __future__ import annotations

import numpy as np
import triton
import triton.language as tl

# The kernel ids (KERNEL), Power's exponent cases (POW_MODE) and the order of the float64 ``scalars``
# (wd, b1, 1-b1, b2, 1-b2, kernel parameter, cautious floor) are set by lionk._paths.triton_gpu.

if triton.knobs.runtime.interpret:
    from triton.runtime.interpreter import TensorHandle

    def _numpy_elementwise(fn):
        def apply(x, *rest):
            data = x.handle.data
            others = [np.broadcast_to(r.handle.data if isinstance(r, tl.tensor) else r, data.shape) for r in rest]
            with np.errstate(all="ignore"):
                out = fn(data, *others).astype(data.dtype)
            return tl.tensor(TensorHandle(out, x.dtype.scalar), x.type)

        return apply

    class libdevice:  # stands in for triton.language.extra.libdevice under the interpreter
        pow = staticmethod(_numpy_elementwise(np.power))
        hypot = staticmethod(_numpy_elementwise(np.hypot))
        tanh = staticmethod(_numpy_elementwise(np.tanh))

else:
    from triton.language.extra import libdevice


# Only builtins and this file's functions are called: triton's own @jit helpers (tl.zeros, tl.sum, ...) are
# decorated when triton is imported, compiled or interpreted for the whole process, whatever this file is.


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _div(a, b, OPMATH: tl.constexpr):
    """IEEE division rounded to nearest (float32 ``/`` may be approximate on the GPU)."""
    if OPMATH == tl.float64:
        return a / b
    else:
        return tl.math.div_rn(a, b)


@triton.jit
def _load(ptrs, mask, DT: tl.constexpr, OPMATH: tl.constexpr, MASKED: tl.constexpr):
    """Load storage values (bfloat16 as its uint16 bits) and widen them exactly to OPMATH."""
    if MASKED:
        x = tl.load(ptrs, mask=mask, other=0)
    else:
        x = tl.load(ptrs)
    if DT == tl.uint16:  # bfloat16: the high half of a float32
        x = (x.to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return x.to(OPMATH)


@triton.jit
def _store(ptrs, x, mask, DT: tl.constexpr, MASKED: tl.constexpr):
    """Round OPMATH values to the storage type (to nearest even) and store them."""
    if DT == tl.uint16:  # bfloat16, as c10::BFloat16 rounds: NaN -> 0x7FC0
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        y = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, 0x7FC0, rounded).to(tl.uint16)
    elif DT == tl.float64:
        y = x.to(tl.float64)
    else:
        y = x.to(tl.float32).to(DT)
    if MASKED:
        tl.store(ptrs, y, mask=mask)
    else:
        tl.store(ptrs, y)


@triton.jit
def _direction(c, kp, KERNEL: tl.constexpr, POW_MODE: tl.constexpr, OPMATH: tl.constexpr):
    """grad K(c) of the elementwise kernels, with the reference's formulas (sign(0) = 0)."""
    if KERNEL == 0:  # sign
        u = (c > 0).to(OPMATH) - (c < 0).to(OPMATH)
    elif KERNEL == 1:  # power: sign(c) |c|^e
        s = (c > 0).to(OPMATH) - (c < 0).to(OPMATH)
        a = tl.abs(c)
        if POW_MODE == 0:
            mag = tl.full(c.shape, 1.0, OPMATH)
        elif POW_MODE == 1:
            if OPMATH == tl.float64:
                mag = tl.sqrt(a)
            else:
                mag = tl.sqrt_rn(a)
        elif POW_MODE == 2:
            mag = a
        else:
            mag = libdevice.pow(a, kp + tl.full(c.shape, 0.0, OPMATH))
        u = s * mag
    elif KERNEL == 2:  # quadratic
        u = c
    elif KERNEL == 3:  # huber: clip(c/a, -1, 1)
        u = tl.minimum(tl.maximum(_div(c, kp, OPMATH), -1.0), 1.0)
    elif KERNEL == 4:  # relativistic: c / hypot(c, a)
        u = _div(c, libdevice.hypot(c, kp + tl.full(c.shape, 0.0, OPMATH)), OPMATH)
    else:  # tanh(c/a)
        u = libdevice.tanh(_div(c, kp, OPMATH))
    return u


@triton.jit
def _locate(table, block_map, P_DT: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr, BLOCK: tl.constexpr,
            ALIGNED: tl.constexpr):  # fmt: skip
    """This program's tensor, its three typed pointers, its numel and the offsets of its block."""
    pid = tl.program_id(0)
    t = tl.load(block_map + pid)
    row = table + t * 5
    p_addr = tl.load(row)
    g_addr = tl.load(row + 1)
    m_addr = tl.load(row + 2)
    numel = tl.load(row + 3)
    start = (pid - tl.load(row + 4)) * BLOCK
    offs = tl.multiple_of(start, BLOCK) + tl.arange(0, BLOCK)
    p_ptr = p_addr.to(tl.pointer_type(P_DT))
    g_ptr = g_addr.to(tl.pointer_type(G_DT))
    m_ptr = m_addr.to(tl.pointer_type(M_DT))
    if ALIGNED:  # every address of this launch is a multiple of 16 bytes: vector loads (the hint must be on the pointer)
        p_ptr = tl.multiple_of(p_ptr, 16)
        g_ptr = tl.multiple_of(g_ptr, 16)
        m_ptr = tl.multiple_of(m_ptr, 16)
    return t, p_ptr, g_ptr, m_ptr, numel, start, offs


@triton.jit
def _gc(g_ptr, m_ptr, offs, mask, scalars, G_DT: tl.constexpr, M_DT: tl.constexpr, OPMATH: tl.constexpr,
        MAXIMIZE: tl.constexpr, SKIP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    """g (negated if maximize, replaced by m where not finite in skip mode), m, c and the bad mask."""
    g = _load(g_ptr + offs, mask, G_DT, OPMATH, MASKED)
    m = _load(m_ptr + offs, mask, M_DT, OPMATH, MASKED)
    if MAXIMIZE:
        g = -g
    bad = (g - g) != 0  # NaN or inf
    if SKIP:
        g = tl.where(bad, m, g)
    c = m * tl.load(scalars + 1).to(OPMATH) + g * tl.load(scalars + 2).to(OPMATH)
    return g, m, c, bad


@triton.jit
def _agree_block(scalars, counts, offs, mask, t, g_ptr, m_ptr, G_DT: tl.constexpr, M_DT: tl.constexpr,
                 OPMATH: tl.constexpr, KERNEL: tl.constexpr, POW_MODE: tl.constexpr, MAXIMIZE: tl.constexpr,
                 SKIP: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    g, _m, c, _bad = _gc(g_ptr, m_ptr, offs, mask, scalars, G_DT, M_DT, OPMATH, MAXIMIZE, SKIP, MASKED)
    u = _direction(c, tl.load(scalars + 5).to(OPMATH), KERNEL, POW_MODE, OPMATH)
    agree = u * g > 0
    if MASKED:
        agree = agree & mask
    tl.atomic_add(counts + t, tl.reduce(agree.to(tl.int64), 0, _add))


@triton.jit
def _agree_kernel(table, block_map, scalars, counts, P_DT: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr,
                  OPMATH: tl.constexpr, KERNEL: tl.constexpr, POW_MODE: tl.constexpr, MAXIMIZE: tl.constexpr,
                  SKIP: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):  # fmt: skip
    """Cautious first pass: counts[t] += number of entries of tensor t with grad K(c) * g > 0."""
    t, _p_ptr, g_ptr, m_ptr, numel, start, offs = _locate(table, block_map, P_DT, G_DT, M_DT, BLOCK, ALIGNED)
    mask = offs < numel
    if start + BLOCK <= numel:
        _agree_block(scalars, counts, offs, mask, t, g_ptr, m_ptr, G_DT, M_DT, OPMATH, KERNEL, POW_MODE,
                     MAXIMIZE, SKIP, False)  # fmt: skip
    else:
        _agree_block(scalars, counts, offs, mask, t, g_ptr, m_ptr, G_DT, M_DT, OPMATH, KERNEL, POW_MODE,
                     MAXIMIZE, SKIP, True)  # fmt: skip


@triton.jit
def _step_block(scalars, lr_ptr, counts, offs, mask, t, numel, p_ptr, g_ptr, m_ptr, P_DT: tl.constexpr, G_DT: tl.constexpr,
                M_DT: tl.constexpr, OPMATH: tl.constexpr, KERNEL: tl.constexpr, POW_MODE: tl.constexpr,
                MAXIMIZE: tl.constexpr, SKIP: tl.constexpr, CAUTIOUS: tl.constexpr, MASKED: tl.constexpr):  # fmt: skip
    g, m, c, bad = _gc(g_ptr, m_ptr, offs, mask, scalars, G_DT, M_DT, OPMATH, MAXIMIZE, SKIP, MASKED)
    p = _load(p_ptr + offs, mask, P_DT, OPMATH, MASKED)
    u = _direction(c, tl.load(scalars + 5).to(OPMATH), KERNEL, POW_MODE, OPMATH)
    if CAUTIOUS:
        fraction = tl.load(counts + t).to(tl.float64) / numel.to(tl.float64)
        denom = tl.maximum(fraction, tl.load(scalars + 6)).to(OPMATH)
        u = _div(u * (u * g > 0).to(OPMATH), denom + tl.full(u.shape, 0.0, OPMATH), OPMATH)
    u = u + (c - c)
    lr64 = tl.load(lr_ptr)
    decay = (1.0 - lr64 * tl.load(scalars)).to(OPMATH)
    new_p = p * decay - u * lr64.to(OPMATH)
    new_m = m * tl.load(scalars + 3).to(OPMATH) + g * tl.load(scalars + 4).to(OPMATH)
    if SKIP:
        new_p = tl.where(bad, p, new_p)
        new_m = tl.where(bad, m, new_m)
    _store(p_ptr + offs, new_p, mask, P_DT, MASKED)
    _store(m_ptr + offs, new_m, mask, M_DT, MASKED)


@triton.jit
def _step_kernel(table, block_map, scalars, lr_ptr, counts, P_DT: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr,
                 OPMATH: tl.constexpr, KERNEL: tl.constexpr, POW_MODE: tl.constexpr, MAXIMIZE: tl.constexpr,
                 SKIP: tl.constexpr, CAUTIOUS: tl.constexpr, BLOCK: tl.constexpr, ALIGNED: tl.constexpr):  # fmt: skip
    """The step, in place; full blocks take an unmasked path (masks on a loaded numel defeat vector loads)."""
    t, p_ptr, g_ptr, m_ptr, numel, start, offs = _locate(table, block_map, P_DT, G_DT, M_DT, BLOCK, ALIGNED)
    mask = offs < numel
    if start + BLOCK <= numel:
        _step_block(scalars, lr_ptr, counts, offs, mask, t, numel, p_ptr, g_ptr, m_ptr, P_DT, G_DT, M_DT, OPMATH, KERNEL,
                    POW_MODE, MAXIMIZE, SKIP, CAUTIOUS, False)  # fmt: skip
    else:
        _step_block(scalars, lr_ptr, counts, offs, mask, t, numel, p_ptr, g_ptr, m_ptr, P_DT, G_DT, M_DT, OPMATH, KERNEL,
                    POW_MODE, MAXIMIZE, SKIP, CAUTIOUS, True)  # fmt: skip
