"""The fused CPU path: one pass over memory per step, many tensors per call, in the native library ``lionk._native``.

The library (``native.c``, ``native_pipeline.h``) is compiled when lionk is installed (``pip install``; setup.py)
for the baseline of the machine's architecture and, on x86-64, for AVX2 and AVX-512 too; it picks the best
copy the CPU supports when loaded. It is found like any module of the package and loaded with ctypes; nothing
is compiled or loaded from elsewhere at run time. Without it (no C compiler at install time) the plain paths run
and :func:`unavailable_reason` says why.

Everything the driver needs from the library is read from it at load time: the layout of the per-tensor rows
(``lk_layout``), the names of its operations (``lk_op_name``: a kernel's formula is compiled to a register
program over them, :func:`lionk.expr.compile_program`) and of its storage types (``lk_dtype_name``). A library
whose ABI version or symbols do not match is refused, with the reason.

A step is one call per thread over all the tensors of a param group: worker w of W takes the chunks
[N*w/W, N*(w+1)/W) of the N chunks (1024 elements each, aligned to the int8 blocks) of all its tensors; ctypes
releases the GIL during each call. Cautious steps make a counting pass first. Each tensor carries its own
dtypes, lr, decay and rounding key, so one call serves mixed storages.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .._tensor import as_real, is_dtensor, opmath_dtype, share_dense_layout
from ..expr import Program, compile_program
from ..kernels import Kernel
from .update import CAUTIOUS_FLOOR
from .work import Hyper, Slot

ABI_VERSION = 2
_MIN_ELEMENTS_PER_THREAD = 1 << 15  # below twice this many elements in a step, one thread does all the work

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


class _Library:
    """The loaded library and what it says about itself."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.lk_abi_version.restype = ctypes.c_int32
        version = lib.lk_abi_version()
        if version != ABI_VERSION:
            raise OSError(f"the native library has ABI version {version}, this lionk needs {ABI_VERSION}: reinstall lionk")
        layout = (ctypes.c_int64 * 21)()
        lib.lk_layout(layout)
        (self.row, self.drow, self.P, self.G, self.M, self.ABSMAX, self.NUMEL, self.DTYPES, self.KEY, self.FLAGS,
         self.LR, self.DECAY, self.DENOM, self.block, self.max_registers, n_ops,
         self.MAXIMIZE, self.SKIP, self.CAUTIOUS, self.COUNT, self.CAUTIOUS_DECAY) = list(layout)  # fmt: skip
        for name in ("lk_op_name", "lk_dtype_name", "lk_isa_name"):
            getattr(lib, name).restype = ctypes.c_char_p
            getattr(lib, name).argtypes = [ctypes.c_int32]
        lib.lk_isa.restype = ctypes.c_char_p
        lib.lk_select_isa.restype = ctypes.c_int32
        lib.lk_select_isa.argtypes = [ctypes.c_char_p]
        self.ops = {lib.lk_op_name(i).decode(): i for i in range(n_ops)}
        self.dtypes = {}
        for i in range(64):
            name = lib.lk_dtype_name(i)
            if name is None:
                break
            self.dtypes[name.decode()] = i
        self.isas = []
        for i in range(16):
            name = lib.lk_isa_name(i)
            if name is not None:
                self.isas.append(name.decode())
        p, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int32
        lib.lk_step.restype = None
        lib.lk_step.argtypes = [i64, p, p, p, f64, f64, f64, f64, i32, p, i32, p, i32, i64, i64]
        self.step = lib.lk_step
        lib.lk_stream.restype = None
        lib.lk_stream.argtypes = [p, i64, ctypes.c_float, i64, i64]
        self.programs: dict[tuple[Kernel, torch.dtype], Program | str] = {}

    @property
    def isa(self) -> str:
        return self.lib.lk_isa().decode()

    def program(self, kernel: Kernel, opmath: torch.dtype) -> Program | str:
        """The kernel's formula compiled for the interpreter, or why it cannot run here (cached)."""
        key = (kernel, opmath)
        found = self.programs.get(key)
        if found is None:
            if kernel.expression is None:
                found = f"kernel {kernel.spec!r} is computed in torch (it defines direction(), not formula())"
            else:
                try:
                    found = compile_program(kernel.expression, self.ops, self.max_registers, torch.finfo(opmath).tiny)
                except ValueError as err:
                    found = f"kernel {kernel.spec!r}: {err}"
            self.programs[key] = found
        return found


_library: _Library | None = None
_unavailable: str | None = None


def library() -> _Library | None:
    """The native library, loaded on first use; None (see :func:`unavailable_reason`) when it cannot be."""
    global _library, _unavailable
    if _library is None and _unavailable is None:
        with _lock:
            if _library is None and _unavailable is None:
                spec = importlib.util.find_spec("lionk._native")
                if spec is None or spec.origin is None:
                    _unavailable = (
                        "lionk was installed without its native library (no C compiler when it was built?); "
                        "reinstall with a C compiler, e.g. pip install --force-reinstall --no-deps lionk"
                    )
                else:
                    try:
                        _library = _Library(ctypes.CDLL(spec.origin))
                    except (OSError, AttributeError) as err:
                        _unavailable = f"the native library {spec.origin} cannot be used: {err}"
    return _library


def unavailable_reason() -> str | None:
    """None when the fused CPU path can run here, else a one-line explanation."""
    library()
    return _unavailable


def select_isa(name: str) -> bool:
    """Make the library use instruction set ``name`` ("generic", "avx2", "avx512"); False where it is unsupported.
    For tests and benchmarks: the library picks the best one itself."""
    lib = library()
    return lib is not None and bool(lib.lib.lk_select_isa(name.encode()))


def problem(slot: Slot, hyper: Hyper) -> str | None:
    """Why this tensor cannot take the fused CPU path (None: it can)."""
    lib = library()
    if lib is None:
        return _unavailable
    w = slot.weight
    if w.device.type != "cpu":
        return f"the fused CPU path runs CPU tensors, this one is on {w.device}"
    if is_dtensor(w):
        return "a DTensor (FSDP2 shard) runs the torch paths, which see the whole tensor where they must"
    program = lib.program(hyper.kernel, opmath_dtype(w.dtype))
    if isinstance(program, str):
        return program
    p, g, m = as_real(w), as_real(slot.grad), slot.state["exp_avg"]
    for what, name in (("weight", str(p.dtype)), ("gradient", str(g.dtype)), ("momentum", slot.storage.name)):
        if name.removeprefix("torch.") not in lib.dtypes or (name.removeprefix("torch.") == "int8" and what != "momentum"):
            return f"the fused CPU path has no {name.removeprefix('torch.')} {what}"
    if slot.storage.name == "int8":
        if not (p.is_contiguous() and g.is_contiguous()):
            return "int8 momentum blocks follow row-major order: the weight and gradient must be contiguous"
    elif not share_dense_layout(p, g, as_real(m)):
        return "the weight, gradient and momentum do not share one dense memory layout (e.g. a transposed view)"
    return None


def _workers(threads: int) -> ThreadPoolExecutor | None:
    global _pool
    if threads <= 1:
        return None
    if _pool is None or _pool._max_workers != threads - 1:  # resized after torch.set_num_threads
        _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="lionk")
    return _pool


class Job:
    """The native step of a fixed list of tensors, prepared once and run at every step.

    The per-tensor rows are built when the job is made; each run refreshes what may change between steps: the
    addresses (gradients are new tensors after ``zero_grad()``; ``p.data = ...`` moves a parameter), the rounding
    keys and the learning rates.
    """

    def __init__(self, slots: list[Slot]):
        self.lib = library()
        self.groups = []  # (opmath, slots, rows, drows, rounding): a float64 weight runs double arithmetic (its TINY differs)
        slots = [s for s in slots if s.weight.numel()]
        self.total = sum(s.weight.numel() for s in slots)
        for opmath in {opmath_dtype(s.weight.dtype) for s in slots}:
            group = [s for s in slots if opmath_dtype(s.weight.dtype) == opmath]
            rows, drows = _static_rows(self.lib, group)
            self.groups.append((opmath, group, rows, drows, [i for i, s in enumerate(group) if s.key is not None]))

    def run(self, hyper: Hyper) -> None:
        lib = self.lib
        threads = 1 if self.total < 2 * _MIN_ELEMENTS_PER_THREAD else max(1, torch.get_num_threads())
        lr = hyper.lr_value
        for opmath, slots, rows, drows, rounding in self.groups:
            # a complex tensor's address is its real view's; the int8 scales' address is 0 for float momenta
            rows[:, lib.P] = torch.tensor([s.weight.data_ptr() for s in slots], dtype=torch.int64)
            rows[:, lib.G] = torch.tensor([s.grad.data_ptr() for s in slots], dtype=torch.int64)
            rows[:, lib.M] = torch.tensor([s.state["exp_avg"].data_ptr() for s in slots], dtype=torch.int64)
            rows[:, lib.ABSMAX] = torch.tensor([_absmax_address(s) for s in slots], dtype=torch.int64)
            if rounding:  # which tensors round is the plan's; their keys change every step
                rows[rounding, lib.KEY] = torch.tensor([slots[i].key for i in rounding], dtype=torch.int64)
            scales = [s.lr_scale for s in slots]
            if any(scale != 1.0 for scale in scales):
                rates = torch.tensor(scales, dtype=torch.float64) * lr
                drows[:, lib.LR] = rates
                drows[:, lib.DECAY] = 1 - rates * hyper.weight_decay
            else:
                drows[:, lib.LR] = lr
                drows[:, lib.DECAY] = 1 - lr * hyper.weight_decay
            _run_job(lib, lib.program(hyper.kernel, opmath), rows, drows, hyper, threads)


def _absmax_address(s: Slot) -> int:
    return s.state["exp_avg_absmax"].data_ptr() if s.storage.name == "int8" else 0


def _static_rows(lib: _Library, slots: list[Slot]) -> tuple[Tensor, Tensor]:
    """The rows' parts that a job keeps: numel and storage codes (addresses, keys and rates are filled at each run)."""
    rows = torch.zeros(len(slots), lib.row, dtype=torch.int64)
    codes = [
        (lib.dtypes[str(as_real(s.weight).dtype)[6:]], lib.dtypes[str(as_real(s.grad).dtype)[6:]], lib.dtypes[s.storage.name])
        for s in slots
    ]
    rows[:, lib.NUMEL] = torch.tensor([s.weight.numel() * (2 if s.weight.is_complex() else 1) for s in slots], dtype=torch.int64)
    rows[:, lib.DTYPES] = torch.tensor([p | g << 8 | m << 16 for p, g, m in codes], dtype=torch.int64)
    rows[:, lib.FLAGS] = torch.tensor([s.key is not None for s in slots], dtype=torch.int64)  # stochastic rounding
    return rows, torch.ones(len(slots), lib.drow, dtype=torch.float64)


def stream_roof(weights: list[Tensor], grads: list[Tensor], momenta: list[Tensor]) -> Callable[[], None]:
    """A function that runs the roof of lionk bench once: p += g * s; m += g * s over these float32 tensors, the
    memory traffic of a Lion step with nothing else, split across the threads as a step is."""
    lib = library()
    rows = torch.zeros(len(weights), lib.row, dtype=torch.int64)
    rows[:, lib.P] = torch.tensor([t.data_ptr() for t in weights])
    rows[:, lib.G] = torch.tensor([t.data_ptr() for t in grads])
    rows[:, lib.M] = torch.tensor([t.data_ptr() for t in momenta])
    rows[:, lib.NUMEL] = torch.tensor([t.numel() for t in weights])

    tensors = (weights, grads, momenta)  # the rows hold their addresses: the roof keeps them alive

    def roof() -> None:
        assert tensors  # (referenced here, so that the closure owns them)
        threads = max(1, torch.get_num_threads())
        pool = _workers(threads)
        args = (rows.data_ptr(), len(weights), 1e-9)
        futures = [pool.submit(lib.lib.lk_stream, *args, w, threads) for w in range(1, threads)] if pool else []
        lib.lib.lk_stream(*args, 0, threads)
        for f in futures:
            f.result()

    return roof


def run(slots: list[Slot], hyper: Hyper) -> None:
    """One step of ``slots`` (all passed :func:`problem`) in the native library."""
    Job(slots).run(hyper)


def _run_job(lib: _Library, program: Program, rows: Tensor, drows: Tensor, hyper: Hyper, threads: int) -> None:
    n = rows.shape[0]
    prog = torch.tensor([v for ins in program.instructions for v in ins] or [0], dtype=torch.int32)
    consts = torch.tensor(program.constants or (0.0,), dtype=torch.float64)
    flags = (lib.MAXIMIZE if hyper.maximize else 0) | (lib.SKIP if hyper.skip else 0) | (lib.CAUTIOUS if hyper.cautious else 0)
    flags |= lib.CAUTIOUS_DECAY if hyper.cautious_decay else 0
    b1, b2 = hyper.beta1, hyper.beta2
    pool = _workers(threads)

    def call(flags: int, counts: Tensor | None) -> None:
        args = (n, rows.data_ptr(), drows.data_ptr(), None if counts is None else counts.data_ptr(), b1, 1 - b1, b2, 1 - b2, flags,
                prog.data_ptr(), len(program.instructions), consts.data_ptr(), program.result)  # fmt: skip
        futures = [pool.submit(lib.step, *args, w, threads) for w in range(1, threads)] if pool else []
        lib.step(*args, 0, threads)
        for f in futures:
            f.result()

    if hyper.cautious:  # first pass: count the entries where the direction agrees with the gradient
        counts = torch.zeros(threads, n, dtype=torch.int64)
        call(flags | lib.COUNT, counts)
        numels = rows[:, lib.NUMEL].to(torch.float64)
        drows[:, lib.DENOM] = (counts.sum(0).to(torch.float64) / numels).clamp_min(CAUTIOUS_FLOOR)
    call(flags, None)
