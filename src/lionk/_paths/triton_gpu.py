r"""The Triton path: the fused Lion-K step on CUDA, many tensors per launch.

The reference formula (:mod:`lionk._paths.reference`) for the elementwise kernels (sign, power,
quadratic, huber, relativistic, tanh), in float32 registers for float16/bfloat16/float32 storage and
float64 for float64, one read and one write of each of p and m and one read of g per element:

.. math::
    c = \beta_1 m + (1-\beta_1) g, \quad
    p \leftarrow p (1 - \eta\lambda) - \eta\,(\nabla K(c) + (c - c)), \quad
    m \leftarrow \beta_2 m + (1-\beta_2) g

with the reference's sign(0) = 0, NaN propagation, ``nonfinite="skip"`` and cautious masking (a
counting pass, ``count(grad K(c) * g > 0)`` per tensor by atomics, then the step, with no host sync).

Multi-tensor scheme: tensors are grouped by (device, param/grad/momentum dtypes, 16-byte alignment);
each group is one launch (two with ``cautious``) over all its blocks of ``BLOCK`` elements, driven by
a table of addresses, numels and first blocks plus a block -> tensor map (see
:mod:`lionk._paths._triton_kernels`). The table (5 int64 per tensor) is built on the host and the block
map expanded from it on the device; both are cached by the tensors' addresses and sizes (their
contents are a function of them), so after its first step a training loop uploads only the 8
float64 hyperparameters (wd, betas, kernel parameter, cautious floor, lr) per launch group.
Tensors whose layout is not dense and shared by param, grad and momentum (e.g. a transposed view)
are updated by the reference path, as in the fused CPU path.

No autotuning: the step updates memory in place, and an autotuner that benchmarks configurations on
the live tensors applies the update several times (lion-pytorch's defect). A memory-bound
elementwise kernel needs no tuning beyond a block large enough for vector loads and enough bytes in
flight: ``BLOCK = 4096`` elements and ``NUM_WARPS = 8`` (16 elements per thread) for every dtype.

Float32 division is ``div_rn`` (IEEE), float32 square root ``sqrt_rn``, multiply-add contraction is
off, and Power's exponents 0, 1/2 and 1 are computed as torch computes them (1, sqrt, |c|). So sign,
quadratic and huber round exactly as the reference path on CPU, and sign and quadratic as on CUDA
(torch on CUDA divides by a Python scalar as a multiplication by its reciprocal: huber and tanh may
differ by an ulp there). pow, hypot and tanh are libdevice's (numpy's under the interpreter), and
torch's CPU float32 sqrt is not correctly rounded: power, relativistic and tanh agree to a few ulp.

``triton`` is imported only when this path runs. CPU tensors run only under Triton's interpreter
(``TRITON_INTERPRET=1``, for tests); the dispatcher never picks this path for them. CUDA tensors are
refused under the interpreter, which would not follow the device addresses in the table.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import threading
from collections import OrderedDict
from contextlib import nullcontext
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from ..kernels import Kernel, Power
from ..precision import has_half_store
from .elementwise import KERNEL_IDS, kernel_parameter, shares_dense_layout, supports_kernel
from .foreach import lion_foreach
from .reference import CAUTIOUS_FLOOR, as_real, lion_reference

BLOCK = 4096  # elements per program
NUM_WARPS = 8
_POW_MODES = {0.0: 0, 0.5: 1, 1.0: 2}  # Power exponent p - 1 -> the case torch.pow takes; others: 3 (libdevice pow)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_ROW = 5  # int64 entries per tensor in the table: p, g, m addresses, numel, first block
_CACHE_SIZE = 32  # tables kept (a training loop needs one or two per param group and dtype)
_INTERPRET_ENV = "TRITON_INTERPRET"

_lock = threading.Lock()
_modules: dict[bool, ModuleType] = {}
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


def lion_triton(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    kernel: Kernel,
    maximize: bool,
    nonfinite: str,
    cautious: bool = False,
    rounding_keys: list[int] | None = None,
    block_size: int = BLOCK,
) -> None:
    """One Lion-K step in place with the Triton kernels (``block_size``: elements per program, a power of 2).

    The kernels round to nearest: tensors with a stochastic-rounding key and a bfloat16/float16 weight or
    momentum are stepped by the foreach path instead (same formula, torch's ops on the GPU).
    """
    if not supports_kernel(kernel):
        raise RuntimeError(f"the Triton path supports the elementwise kernels {sorted(k.name for k in KERNEL_IDS)}, not {kernel.spec!r}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"Invalid block_size: {block_size!r} (must be a power of 2 >= 16)")
    scalars = dict(
        lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, kernel=kernel, maximize=maximize, nonfinite=nonfinite, cautious=cautious
    )
    groups: dict[tuple, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
    devices: set[torch.device] = set()
    stochastic: tuple[list, list, list, list] = ([], [], [], [])
    for i, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
        p, g, m = as_real(param), as_real(grad), as_real(exp_avg)
        if rounding_keys is not None and has_half_store(p, m):
            for lst, item in zip(stochastic, (param, grad, exp_avg, rounding_keys[i])):
                lst.append(item)
            continue
        for t in (p, g, m):
            if t.dtype not in _DTYPES:
                raise RuntimeError(f"the Triton path needs float16/bfloat16/float32/float64 tensors, got {t.dtype}")
        if not p.device == g.device == m.device:
            raise RuntimeError(f"param, grad and momentum must be on one device, got {p.device}, {g.device}, {m.device}")
        if p.device not in devices:
            reason = unavailable_reason(p.device)
            if reason is not None:
                raise RuntimeError(f"the Triton path cannot run here: {reason}")
            devices.add(p.device)
        if not shares_dense_layout(p, g, m):
            lion_reference([param], [grad], [exp_avg], **scalars)
            continue
        if p.numel():
            aligned = all(t.data_ptr() % 16 == 0 for t in (p, g, m))
            bucket = groups.setdefault((p.device, p.dtype, g.dtype, m.dtype, aligned), ([], [], []))
            for lst, t in zip(bucket, (p, g, m)):
                lst.append(t)
    if stochastic[0]:
        lion_foreach(*stochastic[:3], **scalars, rounding_keys=stochastic[3])
    if not groups:
        return
    kernel_id, kparam = KERNEL_IDS[type(kernel)], kernel_parameter(kernel)
    pow_mode = _POW_MODES.get(kparam, 3) if isinstance(kernel, Power) else 3
    for (device, p_dtype, g_dtype, m_dtype, aligned), (ps, gs, ms) in groups.items():
        kernels = _kernels(interpret=device.type == "cpu")
        table, block_map, n_blocks = _table(device, ps, gs, ms, block_size)
        host_scalars = [weight_decay, beta1, 1 - beta1, beta2, 1 - beta2, kparam, CAUTIOUS_FLOOR]
        if isinstance(lr, Tensor):
            host = torch.tensor(host_scalars, dtype=torch.float64).to(device, non_blocking=True)
            lr_dev = lr.detach().to(device=device, dtype=torch.float64, non_blocking=True).reshape(1)
        else:
            host = torch.tensor([*host_scalars, lr], dtype=torch.float64).to(device, non_blocking=True)
            lr_dev = host[len(host_scalars) :]
        types = dict(P_DT=_storage_type(p_dtype), G_DT=_storage_type(g_dtype), M_DT=_storage_type(m_dtype))
        flags = dict(
            OPMATH=_storage_type(torch.float64 if p_dtype == torch.float64 else torch.float32),
            KERNEL=kernel_id,
            POW_MODE=pow_mode,
            MAXIMIZE=bool(maximize),
            SKIP=nonfinite == "skip",
            BLOCK=block_size,
            ALIGNED=aligned,
        )
        launch = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)
        counts = torch.zeros(len(ps), dtype=torch.int64, device=device) if cautious else table  # unused without cautious
        with torch.cuda.device(device) if device.type == "cuda" else nullcontext():
            if cautious:
                kernels._agree_kernel[(n_blocks,)](table, block_map, host, counts, **types, **flags, **launch)
            kernels._step_kernel[(n_blocks,)](table, block_map, host, lr_dev, counts, **types, **flags, CAUTIOUS=cautious, **launch)
