"""The fused CPU path: one pass over memory per step, many tensors per call, in plain C.

``lion_cpu.c`` implements the reference formula for the elementwise kernels (sign, power, quadratic,
huber, relativistic, tanh) on float32, float64, bfloat16 and float16 storage. It is compiled once per
machine with the system C compiler (``$CC``, else ``cc``/``gcc``/``clang``) into a cache directory
(``$LIONK_CACHE``, else ``~/.cache/lionk``) and loaded with ctypes, so a new process pays only a
library load, and compile cost never depends on tensor shapes. The step is split into one contiguous
range of the concatenated tensors per thread (``torch.get_num_threads()`` threads; ctypes releases
the GIL during the call).

Why not torch.compile: measured on a 2-core machine, a compiled per-tensor step reached the memory
roof but cost about 59 us of dispatch per call (6 ms per step for 100 tensors) and 8.5 s of compile
per process and dtype; this path costs one C call per thread per step.

Tensors whose layout is not dense and shared by param, grad and momentum (e.g. a transposed view)
are updated by the reference path, with the same results.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from ..kernels import Kernel
from ..precision import has_half_store
from .elementwise import KERNEL_IDS, kernel_parameter, shares_dense_layout, supports_kernel
from .reference import CAUTIOUS_FLOOR, as_real, lion_reference

_SOURCE = Path(__file__).with_name("lion_cpu.c")
_FLAGS = ["-O3", "-march=native", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared"]
_NAMES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "f16"}
# (param/grad dtype, momentum dtype) -> the C function suffix
_SUFFIXES = {(dtype, dtype): name for dtype, name in _NAMES.items()} | {
    (torch.float32, torch.bfloat16): "f32_mbf16",
    (torch.bfloat16, torch.float32): "bf16_mf32",
    (torch.float16, torch.float32): "f16_mf32",
    (torch.float16, torch.bfloat16): "f16_mbf16",
    (torch.float32, torch.float16): "f32_mf16",
}
# Below this many elements in a step, one thread does all the work (thread hand-off costs ~20 us).
_MIN_ELEMENTS_PER_THREAD = 1 << 15

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_unavailable: str | None = None
_pool: ThreadPoolExecutor | None = None


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _machine_tag() -> str:
    """Identifies the CPU, since the library is built with -march=native."""
    tag = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                tag += line
    except OSError:
        pass
    return tag


def _build(cc: str) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), cc, version, *_FLAGS, _machine_tag()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("LIONK_CACHE", Path.home() / ".cache" / "lionk"))
    target = cache / f"lion_cpu_{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        out = Path(tmp) / target.name
        result = subprocess.run([cc, *_FLAGS, str(_SOURCE), "-o", str(out), "-lm"], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{cc} failed to build the fused CPU kernel: {result.stderr.strip()[:500]}")
        os.replace(out, target)  # atomic: concurrent builders never see a partial library
    return target


def _load() -> ctypes.CDLL | None:
    """The compiled library, building it on first use; None (and a reason) if that is impossible."""
    global _library, _unavailable
    if _library is not None or _unavailable is not None:
        return _library
    with _lock:
        if _library is None and _unavailable is None:
            cc = _compiler()
            if cc is None:
                _unavailable = "no C compiler found (set CC or install gcc/clang)"
                return None
            try:
                lib = ctypes.CDLL(str(_build(cc)))
            except (OSError, RuntimeError) as err:
                _unavailable = str(err)
                return None
            p, i64, dbl, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
            args = [i64, p, p, p, p, i64, i64, cint, dbl, dbl, dbl, dbl, dbl, dbl, dbl, cint, cint, p]
            for suffix in _SUFFIXES.values():
                for name, extra in (("lion_step_", [p]), ("lion_agree_", [])):
                    fn = getattr(lib, name + suffix)
                    fn.restype = None
                    fn.argtypes = args + extra
            for suffix in ("f32", "bf16", "f16"):
                fn = getattr(lib, "lion_step_q8_" + suffix)
                fn.restype = None
                fn.argtypes = [i64, p, p, p, p, p, i64, i64, cint, dbl, dbl, dbl, dbl, dbl, dbl, dbl, cint, cint, p]
            _library = lib
    return _library


def unavailable_reason() -> str | None:
    """None when the fused CPU path can run here, else a one-line explanation."""
    _load()
    return _unavailable


def _shares_dense_layout(p: Tensor, g: Tensor, m: Tensor) -> bool:
    """True when the C loops take these tensors: a shared dense layout, the gradient in the parameter's dtype
    and the momentum in a dtype the loops pair with it."""
    return p.dtype == g.dtype and (p.dtype, m.dtype) in _SUFFIXES and shares_dense_layout(p, g, m)


def _scalars(kernel: Kernel, lr: float | Tensor, beta1: float, beta2: float, weight_decay: float, maximize: bool, nonfinite: str) -> tuple:
    """The scalar arguments every C step function takes after its worker index."""
    lr = lr.item() if isinstance(lr, Tensor) else lr
    return (KERNEL_IDS[type(kernel)], kernel_parameter(kernel), lr, 1 - lr * weight_decay, beta1, 1 - beta1, beta2, 1 - beta2,
            int(maximize), int(nonfinite == "skip"))  # fmt: skip


def _run_workers(fn, head: tuple, tail: tuple, last: list[tuple], threads: int) -> None:
    """Call ``fn(*head, worker, threads, *tail, *last[worker])`` once per worker, the calling thread taking worker 0."""
    global _pool
    if threads > 1 and (_pool is None or _pool._max_workers != threads - 1):  # resized after torch.set_num_threads
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="lionk")
    futures = [_pool.submit(fn, *head, w, threads, *tail, *last[w]) for w in range(1, threads)]
    fn(*head, 0, threads, *tail, *last[0])
    for f in futures:
        f.result()


def lion_cpu_fused(
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
) -> None:
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the fused CPU path is unavailable: {_unavailable}")
    if not supports_kernel(kernel):
        raise RuntimeError(f"the fused CPU path supports the elementwise kernels {sorted(k.name for k in KERNEL_IDS)}, not {kernel.spec!r}")
    if isinstance(lr, Tensor):
        lr = lr.item()
    scalars = dict(
        lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, kernel=kernel, maximize=maximize, nonfinite=nonfinite, cautious=cautious
    )
    by_dtype: dict[tuple[torch.dtype, torch.dtype, bool], tuple[list, list, list, list]] = {}
    for i, (param, grad, exp_avg) in enumerate(zip(params, grads, exp_avgs)):
        p, g, m = as_real(param), as_real(grad), as_real(exp_avg)
        if p.device.type != "cpu" or p.dtype not in _NAMES:
            raise RuntimeError(f"the fused CPU path needs CPU float tensors, got {p.dtype} on {p.device}")
        keys = None if rounding_keys is None or not has_half_store(p, m) else rounding_keys[i]
        if not _shares_dense_layout(p, g, m):
            lion_reference([param], [grad], [exp_avg], **scalars, rounding_keys=None if keys is None else [keys])
            continue
        if p.numel():
            bucket = by_dtype.setdefault((p.dtype, m.dtype, keys is not None), ([], [], [], []))
            for lst, t in zip(bucket, (p, g, m, keys)):
                lst.append(t)
    common = _scalars(kernel, lr, beta1, beta2, weight_decay, maximize, nonfinite)
    for (dtype, m_dtype, stochastic), (ps, gs, ms, ks) in by_dtype.items():
        n = len(ps)
        key_array = (ctypes.c_uint32 * n)(*ks) if stochastic else None
        pointers = [(ctypes.c_void_p * n)(*[t.data_ptr() for t in ts]) for ts in (ps, gs, ms)]
        numels = (ctypes.c_int64 * n)(*[t.numel() for t in ps])
        total = sum(numels)
        suffix = _SUFFIXES[dtype, m_dtype]
        head = (n, *pointers, numels)
        threads = 1 if total < 2 * _MIN_ELEMENTS_PER_THREAD else max(1, torch.get_num_threads())
        denominators = None
        if cautious:  # first pass: count the entries where the update agrees with the gradient
            counts = [(ctypes.c_int64 * n)() for _ in range(threads)]
            _run_workers(getattr(lib, "lion_agree_" + suffix), head, common, [(c,) for c in counts], threads)
            agree = [sum(c[t] for c in counts) for t in range(n)]
            denominators = (ctypes.c_double * n)(*[max(a / k, CAUTIOUS_FLOOR) for a, k in zip(agree, numels)])
        _run_workers(getattr(lib, "lion_step_" + suffix), head, common, [(denominators, key_array)] * threads, threads)


_INT8_SUFFIXES = {dtype: name for dtype, name in _NAMES.items() if dtype != torch.float64}  # lion_step_q8_*


def int8_fusable(param: Tensor, grad: Tensor) -> bool:
    """True when the int8-momentum C loop can step this tensor: a contiguous float32/bfloat16/float16
    parameter with a gradient of the same dtype and layout (the codes are in row-major order)."""
    return param.dtype in _INT8_SUFFIXES and grad.dtype == param.dtype and param.is_contiguous() and grad.is_contiguous()


def lion_cpu_fused_int8(
    params: list[Tensor],
    grads: list[Tensor],
    codes: list[Tensor],
    absmaxes: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    kernel: Kernel,
    maximize: bool,
    nonfinite: str,
    rounding_keys: list[int] | None = None,
) -> None:
    """One step of tensors whose momentum is int8 blockwise codes (:mod:`lionk.precision`), in C.

    Each block of 256 is dequantised, stepped and re-quantised in one pass; the results equal
    dequantise -> :func:`lionk._paths.reference.lion_reference` -> quantise bit for bit. Every tensor must
    pass :func:`int8_fusable`.
    """
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the fused CPU path is unavailable: {_unavailable}")
    common = _scalars(kernel, lr, beta1, beta2, weight_decay, maximize, nonfinite)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, p in enumerate(params):
        if p.numel():
            by_dtype.setdefault(p.dtype, []).append(i)
    for dtype, idx in by_dtype.items():
        n = len(idx)
        pointers = [(ctypes.c_void_p * n)(*[ts[i].data_ptr() for i in idx]) for ts in (params, grads, codes, absmaxes)]
        numels = (ctypes.c_int64 * n)(*[params[i].numel() for i in idx])
        keys = None if rounding_keys is None else (ctypes.c_uint32 * n)(*[rounding_keys[i] for i in idx])
        threads = 1 if sum(numels) < 2 * _MIN_ELEMENTS_PER_THREAD else max(1, torch.get_num_threads())
        _run_workers(getattr(lib, "lion_step_q8_" + _INT8_SUFFIXES[dtype]), (n, *pointers, numels), common, [(keys,)] * threads, threads)
