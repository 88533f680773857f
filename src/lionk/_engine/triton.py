r"""The Triton path: the fused Lion-K step on CUDA, many tensors per launch.

The reference formula (:mod:`lionk._engine.update`) for every elementwise kernel, in float32 registers for
float16/bfloat16/float32 storage and float64 for float64, one read and one write of each of p and m and one read
of g per element:

.. math::
    c = \beta_1 m + (1-\beta_1) g, \quad
    p \leftarrow p (1 - \eta\lambda) - \eta\,(\nabla K(c) + (c - c)), \quad
    m \leftarrow \beta_2 m + (1-\beta_2) g

with the reference's sign(0) = 0, NaN propagation, ``nonfinite="skip"`` and cautious masking (a
counting pass, ``count(grad K(c) * g > 0)`` per tensor by atomics, then the step, with no host sync).
:math:`\nabla K` is the kernel's formula written out as a ``@triton.jit`` function by
:func:`lionk.expr.triton_source` (kept in memory, registered with ``linecache`` so that Triton can read its
source) and passed to the kernels as a constexpr: a new kernel needs no change here.

Multi-tensor scheme: tensors are grouped by (device, param/grad/momentum dtypes, 16-byte alignment);
each group is one launch (two with ``cautious``) over all its blocks of ``BLOCK`` elements, driven by
a table of addresses, numels and first blocks plus a block -> tensor map (see
:mod:`lionk._paths._triton_kernels`). The table (5 int64 per tensor) is built on the host and the block
map expanded from it on the device; both are cached by the tensors' addresses and sizes (their
contents are a function of them), so after its first step a training loop uploads only the 7
float64 hyperparameters (wd, betas, cautious floor, lr) per launch group. Tensors this path does not take (a
layout not shared by param, grad and momentum, stochastic rounding, int8 momentum, per-tensor learning rates)
are given to another path by :mod:`lionk._engine.dispatch`, with the reason.

No autotuning: the step updates memory in place, and an autotuner that benchmarks configurations on
the live tensors applies the update several times (lion-pytorch's defect). A memory-bound
elementwise kernel needs no tuning beyond a block large enough for vector loads and enough bytes in
flight: ``BLOCK = 4096`` elements and ``NUM_WARPS = 8`` (16 elements per thread) for every dtype.

Float32 division is ``div_rn`` (IEEE), float32 square root ``sqrt_rn``, multiply-add contraction is
off, and constant exponents 0, 1/2, 1 and 2 are computed as torch computes them (folded by :mod:`lionk.expr`).
So formulas of exact operations (sign, quadratic, huber, ...) round exactly as the reference path on CPU, and as
on CUDA except for divisions by a constant (torch on CUDA divides by a Python scalar as a multiplication by its
reciprocal: an ulp apart). pow, hypot, tanh, exp and log are libdevice's (numpy's under the interpreter): they
agree with torch to a few ulp.

``triton`` is imported only when this path runs. CPU tensors run only under Triton's interpreter
(``TRITON_INTERPRET=1``, for tests); the dispatcher never picks this path for them. CUDA tensors are
refused under the interpreter, which would not follow the device addresses in the table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import linecache
import os
import sys
import threading
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from .._tensor import as_real, share_dense_layout
from ..expr import triton_source
from ..kernels import Kernel
from .update import CAUTIOUS_FLOOR
from .work import Hyper, Slot

BLOCK = 4096  # elements per program
NUM_WARPS = 8
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ROW = 5  # int64 entries per tensor in the table: p, g, m addresses, numel, first block
_CACHE_SIZE = 32  # tables kept (a training loop needs one or two per param group and dtype)
_INTERPRET_ENV = "TRITON_INTERPRET"

_lock = threading.Lock()
_modules: dict[bool, ModuleType] = {}
_directions: dict[tuple[Kernel, bool], Any] = {}
_import_error: str | None = None
_tables: OrderedDict[tuple, tuple[Tensor, Tensor, int]] = OrderedDict()


def _triton_import_error() -> str | None:
    """None if triton imports, else a one-line reason (computed once)."""
    global _import_error
    if _import_error is None:
        if importlib.util.find_spec("triton") is None:
            _import_error = "triton is not installed (pip install 'lionk[triton]')"
        else:
            try:
                import triton  # noqa: F401
            except Exception as err:  # a broken install is a reason, not a crash
                _import_error = f"triton failed to import: {type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
            else:
                _import_error = ""
    return _import_error or None


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET=1``: CPU tensors then run in Triton's interpreter, and CUDA tensors are refused."""
    return os.environ.get(_INTERPRET_ENV, "0") == "1"


def unavailable_reason(device: str | torch.device = "cuda") -> str | None:
    """None when the Triton path can run on ``device``, else a one-line reason why not."""
    device = torch.device(device)
    if device.type not in ("cuda", "cpu"):
        return f"no Triton path for {device.type} tensors"
    reason = _triton_import_error()
    if reason is not None:
        return reason
    if device.type == "cpu":
        if interpreter_requested():
            return None
        return f"the Triton path runs on CUDA tensors (CPU tensors only under the Triton interpreter, {_INTERPRET_ENV}=1)"
    if interpreter_requested():
        return f"{_INTERPRET_ENV}=1: the interpreter copies only argument tensors to the host, not the tensors the address table points to"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if torch.version.hip is None and major < 7:
        return f"Triton needs a GPU of compute capability >= 7.0, this one is {major}.{minor}"
    return None


def _kernels(interpret: bool) -> ModuleType:
    """The kernels module, executed compiled or under the interpreter (each at most once per process)."""
    with _lock:
        module = _modules.get(interpret)
        if module is None:
            import triton

            name = f"{__package__}._triton_kernels{'_interpreted' if interpret else ''}"
            spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_triton_kernels.py"))
            module = importlib.util.module_from_spec(spec)
            with triton.knobs.runtime.scope():  # decides whether triton.jit compiles or interprets
                triton.knobs.runtime.interpret = interpret
                sys.modules[name] = module
                spec.loader.exec_module(module)
            _modules[interpret] = module
    return module


def _direction(kernel: Kernel, interpret: bool) -> Any:
    """The kernel's formula as a ``@triton.jit`` function ``direction(c, T)`` (generated once per kernel and mode)."""
    key = (kernel, interpret)
    with _lock:
        found = _directions.get(key)
    if found is not None:
        return found
    import triton

    module = _kernels(interpret)
    name = "_direction_" + hashlib.sha256(repr(kernel.expression).encode()).hexdigest()[:16]
    source = triton_source(kernel.expression, name)
    filename = f"<lionk generated {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)  # Triton reads the source
    with _lock, triton.knobs.runtime.scope():
        triton.knobs.runtime.interpret = interpret
        exec(compile(source, filename, "exec"), module.__dict__)  # the helpers it calls live there
        found = _directions[key] = triton.jit(module.__dict__[name])
    return found


def _storage_type(dtype: torch.dtype):
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float64: tl.float64, torch.bfloat16: tl.uint16, torch.float16: tl.float16}[dtype]


def _table(device: torch.device, ps: list[Tensor], gs: list[Tensor], ms: list[Tensor], block: int) -> tuple[Tensor, Tensor, int]:
    """(table, block map, number of blocks) on ``device`` for these tensors, cached by addresses and sizes.

    Only the table (5 int64 per tensor) crosses to the device; the block map, ``t`` repeated
    ``ceil(numel_t / block)`` times, is expanded there.
    """
    rows = [(p.data_ptr(), g.data_ptr(), m.data_ptr(), p.numel()) for p, g, m in zip(ps, gs, ms)]
    key = (device, block, *rows)
    with _lock:
        hit = _tables.get(key)
        if hit is not None:
            _tables.move_to_end(key)
            return hit
    n_blocks = [-(-row[3] // block) for row in rows]
    firsts = itertools.accumulate(n_blocks[:-1], initial=0)
    table = torch.tensor([v for row, first in zip(rows, firsts) for v in (*row, first)], dtype=torch.int64).to(device, non_blocking=True)
    total = sum(n_blocks)
    per_tensor = (table.view(-1, _ROW)[:, 3] + (block - 1)) // block
    block_map = torch.repeat_interleave(torch.arange(len(rows), device=device), per_tensor, output_size=total)
    entry = (table, block_map, total)
    with _lock:
        _tables[key] = entry
        if len(_tables) > _CACHE_SIZE:
            _tables.popitem(last=False)
    return entry


def problem(slot: Slot, hyper: Hyper) -> str | None:
    """Why this tensor cannot take the Triton path (None: it can)."""
    reason = unavailable_reason(slot.weight.device)
    if reason is not None:
        return reason
    kernel = hyper.kernel
    if kernel.expression is None:
        return f"kernel {kernel.spec!r} is computed in torch (it defines direction(), not formula())"
    if not kernel.elementwise:
        return f"kernel {kernel.spec!r} is taken over the whole tensor; the fused paths run elementwise kernels"
    p, g = as_real(slot.weight), as_real(slot.grad)
    if slot.storage.name == "int8":
        return "the Triton kernel has no int8 momentum (it runs on foreach)"
    if slot.key is not None and (p.dtype in (torch.bfloat16, torch.float16) or slot.storage.rounds):
        return "the Triton kernel rounds to nearest: stochastic rounding of bfloat16/float16 runs on foreach"
    if slot.lr_scale != 1.0:
        return "the Triton kernel takes one lr per launch: per-tensor learning rates run on foreach"
    m = as_real(slot.state["exp_avg"])
    for t in (p, g, m):
        if t.dtype not in _DTYPES:
            return f"the Triton kernel has no {t.dtype} tensors"
    if not share_dense_layout(p, g, m):
        return "the weight, gradient and momentum do not share one dense memory layout (e.g. a transposed view)"
    return None


def run(slots: list[Slot], hyper: Hyper, block_size: int = BLOCK) -> None:
    """One Lion-K step in place with the Triton kernels (every slot passed :func:`problem`; ``block_size``: elements
    per program, a power of 2)."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"Invalid block_size: {block_size!r} (must be a power of 2 >= 16)")
    groups: dict[tuple, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
    for s in slots:
        p, g, m = as_real(s.weight), as_real(s.grad), as_real(s.state["exp_avg"])
        if p.numel():
            aligned = all(t.data_ptr() % 16 == 0 for t in (p, g, m))
            bucket = groups.setdefault((p.device, p.dtype, g.dtype, m.dtype, aligned), ([], [], []))
            for lst, t in zip(bucket, (p, g, m)):
                lst.append(t)
    lr = hyper.lr
    for (device, p_dtype, g_dtype, m_dtype, aligned), (ps, gs, ms) in groups.items():
        interpret = device.type == "cpu"
        kernels = _kernels(interpret)
        direction = _direction(hyper.kernel, interpret)
        table, block_map, n_blocks = _table(device, ps, gs, ms, block_size)
        host_scalars = [hyper.weight_decay, hyper.beta1, 1 - hyper.beta1, hyper.beta2, 1 - hyper.beta2, CAUTIOUS_FLOOR]
        if isinstance(lr, Tensor):
            host = torch.tensor(host_scalars, dtype=torch.float64).to(device, non_blocking=True)
            lr_dev = lr.detach().to(device=device, dtype=torch.float64, non_blocking=True).reshape(1)
        else:
            host = torch.tensor([*host_scalars, lr], dtype=torch.float64).to(device, non_blocking=True)
            lr_dev = host[len(host_scalars) :]
        types = dict(P_DT=_storage_type(p_dtype), G_DT=_storage_type(g_dtype), M_DT=_storage_type(m_dtype))
        flags = dict(
            OPMATH=_storage_type(torch.float64 if p_dtype == torch.float64 else torch.float32),
            DIRECTION=direction,
            MAXIMIZE=hyper.maximize,
            SKIP=hyper.skip,
            BLOCK=block_size,
            ALIGNED=aligned,
        )
        launch = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)
        counts = torch.zeros(len(ps), dtype=torch.int64, device=device) if hyper.cautious else table  # unused without cautious
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            if hyper.cautious:
                kernels._agree_kernel[(n_blocks,)](table, block_map, host, counts, **types, **flags, **launch)
            kernels._step_kernel[(n_blocks,)](
                table,
                block_map,
                host,
                lr_dev,
                counts,
                **types,
                **flags,
                CAUTIOUS=hyper.cautious,
                CAUTIOUS_DECAY=hyper.cautious_decay,
                **launch,
            )
