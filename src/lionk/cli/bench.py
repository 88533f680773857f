"""lionk bench: time one optimizer step on a GPT-like parameter set against a bandwidth roof.

Every contender steps the same parameters and gradients (each with its own state). A step is
memory-bound: it reads and writes each parameter, reads its gradient, and reads and writes its state,
so its ideal cost is bytes / bandwidth with

    ideal bytes per parameter = 3 P + 2 S    (P: parameter element size; S: state bytes per parameter)

that is 20 bytes for Lion (one float32 buffer) and 28 for AdamW (two) in float32, and less for Lion with
bfloat16 (S = 2) or int8 momentum (S = 1 + 4/256: codes plus one float32 scale per 256 values). S is
read off each optimizer's state after warm-up. The roof, timed in the same rounds on the same device, is a Lion
step's own memory traffic with nothing else: on CPU the native library's p += g*s, m += g*s over float32 tensors
of the bench set's shapes (3 arrays read, 2 written); elsewhere an in-place a += s*b over a large tensor.

Noise: each round times every contender once, in a rotating order, and the roof once. A speed ratio is
taken within each round (a slow round slows both sides) and summarised by its median over the rounds,
with a 95% confidence interval from the order statistics of the per-round ratios. Rounds go on past
--rounds until every verdict's interval lies within +-tolerance of its median, or --max-rounds is
reached. Only such a verdict gets a factor ("1.21x faster", or "no measurable difference" when its
interval contains 1); a wider one says only the direction when its interval excludes 1, and "not
determined" otherwise. Rows whose own median is that uncertain are marked with *.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import itertools
import json
import logging
import math
import re
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import Lion, state_bytes
from .._engine import native
from ..memory import step_temporaries, tensors_in
from . import CLIError
from .checks import integer, number, output_file
from .machine import OtherLoad, available_bytes, contended, cpu_name

LION_LR, ADAMW_LR = 1e-5, 1e-5  # tiny steps keep the shared parameters finite through many rounds
TRITON_NAME = "lionk fused (Triton)"
DEFAULT_NAME, ADAMW_NAME = "lionk (default)", "torch AdamW fused"
#: A low-bit storage row is flagged when its storage covers less than this share of the parameters.
STORED_SHARE = 0.95
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Contender:
    """One optimizer in the race; ``storage`` is the momentum dtype it asks for (checked against its state)."""

    name: str
    family: str  # "lion" or "adamw"
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    storage: torch.dtype | None = None
    samples_ms: list[float] = field(default_factory=list)
    first_step_ms: float | None = None
    state_bytes: int | None = None
    temporary_bytes: int | None = None  # what one step allocates beyond the weights, gradients and state
    streamed_bytes: int | None = None  # the state a step reads and writes: all but the 0-d step counters
    error: str | None = None
    note: str | None = None


def parse_size(text: str, flag: str = "--size") -> int:
    """'50M', '1.5G', '200k' or '123456' -> a number of elements (at least 1k)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgG]?)\s*", text)
    if not match:
        raise CLIError(f"invalid {flag} {text!r}: must be a number with an optional k/M/G suffix, e.g. 50M")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    if not 1000 <= value <= 1e11:
        raise CLIError(f"invalid {flag} {text!r}: must be at least 1k and at most 100G elements")
    return int(value)


def gpt_shapes(target: int, layers: int, vocab: int = 16384, context: int = 1024) -> list[tuple[int, ...]]:
    """Parameter shapes of a GPT-2-style model with ``layers`` blocks, width chosen to hold ~``target`` params.

    Each block has 12 tensors (two layer norms, qkv and output projections, a 4x MLP, with biases),
    plus token and position embeddings and a final layer norm: 12*layers + 4 tensors in all.
    """

    def shapes_for(d: int) -> list[tuple[int, ...]]:
        block = [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
        return [(vocab, d), (context, d)] + block * layers + [(d,), (d,)]

    def total(d: int) -> int:
        return sum(torch.Size(s).numel() for s in shapes_for(d))

    d = min(range(16, 16385, 16), key=lambda width: abs(total(width) - target))
    return shapes_for(d)


def small_shapes(target: int, each: int) -> list[tuple[int, ...]]:
    """``target // each`` tensors of ``each`` elements: the many-small-tensors case, where launches dominate."""
    return [(each,)] * max(1, target // each)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what a third-party import prints, logs or warns (bitsandbytes logs about optional CPU kernels)."""
    previous = logging.root.manager.disable
    sink = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _contenders(device: torch.device, dtype: torch.dtype) -> tuple[list[Contender], list[str]]:
    """lionk's paths and storages, torch's AdamW variants and every installed peer Lion; and the peers not found."""
    cuda = device.type == "cuda"
    contenders = [
        Contender(DEFAULT_NAME, "lion", lambda ps: Lion(ps, lr=LION_LR, weight_decay=0.1)),
        Contender("lionk foreach", "lion", lambda ps: Lion(ps, lr=LION_LR, weight_decay=0.1, foreach=True, fused=False)),
        Contender("lionk for-loop", "lion", lambda ps: Lion(ps, lr=LION_LR, weight_decay=0.1, foreach=False, fused=False)),
    ]
    if dtype in (torch.bfloat16, torch.float16):  # the default rounds stochastically; this is the contrast
        contenders.append(
            Contender("lionk round-to-nearest", "lion", lambda ps: Lion(ps, lr=LION_LR, weight_decay=0.1, stochastic_rounding=False))
        )
    if dtype != torch.bfloat16:
        contenders.append(
            Contender(
                "lionk bf16 momentum", "lion", lambda ps: Lion(ps, lr=LION_LR, weight_decay=0.1, momentum_dtype="bfloat16"), torch.bfloat16
            )
        )
    contenders += [
        Contender("lionk int8 momentum", "lion", lambda ps: Lion(ps, lr=LION_LR, weight_decay=0.1, momentum_dtype="int8"), torch.int8),
        Contender(ADAMW_NAME, "adamw", lambda ps: torch.optim.AdamW(ps, lr=ADAMW_LR, fused=True)),
        Contender("torch AdamW foreach", "adamw", lambda ps: torch.optim.AdamW(ps, lr=ADAMW_LR, foreach=True)),
        Contender("torch AdamW for-loop", "adamw", lambda ps: torch.optim.AdamW(ps, lr=ADAMW_LR, foreach=False)),
    ]
    if cuda:  # opt-in until lionk._engine.dispatch.TRITON_BY_DEFAULT is set; fails with its reason where triton cannot run
        contenders.insert(1, Contender(TRITON_NAME, "lion", lambda ps: Lion(ps, lr=LION_LR, weight_decay=0.1, fused=True)))
    # FlashLion's quantisation and error-correction bits need CUDA: on CPU it runs as a plain float32 Lion
    flash_cpu = {} if cuda else dict(quantize=False, master_weight_bits=None, fused=False)
    peers = {
        "lion-pytorch": ("lion_pytorch", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "lion-pytorch foreach": ("lion_pytorch.foreach", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "timm Lion": ("timm.optim.lion", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "pytorch_optimizer Lion": ("pytorch_optimizer", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "bitsandbytes Lion32bit": ("bitsandbytes.optim", lambda m: lambda ps: m.Lion32bit(ps, lr=LION_LR, weight_decay=0.1)),
        "torch-optimi Lion": ("optimi", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "heavyball Lion": ("heavyball", lambda m: lambda ps: m.ForeachLion(ps, lr=LION_LR, weight_decay=0.1)),
        "flashoptim FlashLion" + ("" if cuda else " (CPU)"): (
            "flashoptim",
            lambda m: lambda ps: m.FlashLion(ps, lr=LION_LR, weight_decay=0.1, **flash_cpu),
        ),
    }
    if cuda:
        peers["lion-pytorch triton"] = ("lion_pytorch", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1, use_triton=True))
    missing = []
    for name, (module, factory) in peers.items():
        try:
            with _quiet():
                make = factory(_import_peer(module))
                probe = torch.nn.Parameter(torch.zeros(8, device=device, dtype=dtype))
                probe.grad = torch.zeros_like(probe)
                make([probe]).step()  # a peer that imports but cannot step here is reported, not fatal
            contenders.append(Contender(name, "lion", make))
        except Exception as err:
            missing.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})")
    return contenders, missing


def _import_peer(module: str):
    """Import a peer's module; timm's Lion is one file that needs only torch, while importing timm needs torchvision
    (which may not install beside this torch): it is loaded from that file alone when timm will not import."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if module != "timm.optim.lion":
            raise
    spec = importlib.util.find_spec("timm")
    if spec is None or spec.origin is None:
        raise ImportError("timm is not installed")
    folder = Path(spec.origin).parent / "optim"
    package = types.ModuleType("_timm_optim")
    package.__path__ = [str(folder)]
    sys.modules["_timm_optim"] = package
    for name in ("_helpers", "lion"):
        file_spec = importlib.util.spec_from_file_location(f"_timm_optim.{name}", folder / f"{name}.py")
        loaded = importlib.util.module_from_spec(file_spec)
        sys.modules[file_spec.name] = loaded
        file_spec.loader.exec_module(loaded)
    return sys.modules["_timm_optim.lion"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """(median, low, high): the median and a distribution-free 95% confidence interval for it, between the
    order statistics of ranks n/2 -+ 0.98 sqrt(n) (the whole range when n < 6)."""
    xs = sorted(values)
    n = len(xs)
    k = max(math.floor(n / 2 - 0.98 * math.sqrt(n)) - 1, 0)
    return statistics.median(xs), xs[k], xs[n - 1 - k]


def verdict(ours_ms: list[float], theirs_ms: list[float], tolerance: float) -> dict:
    """How much faster ``ours`` is than ``theirs`` from paired rounds: the per-round ratios theirs/ours, their median
    and 95% interval, whether that interval lies within +-tolerance of the median (stable), and the words, which
    give a factor only when it is stable, a direction only when the interval excludes 1, and otherwise no verdict."""
    ratios = [t / o for o, t in zip(ours_ms, theirs_ms)]
    ratio, low, high = median_interval(ratios)
    stable = (high - low) / 2 <= tolerance * ratio
    interval = f"95% interval {low:.2f}-{high:.2f}x over {len(ratios)} rounds"
    if stable and low <= 1.0 <= high:
        text = f"no measurable difference ({ratio:.2f}x, {interval})"
    elif stable and ratio > 1:
        text = f"{ratio:.2f}x faster ({interval})"
    elif stable:
        text = f"{1 / ratio:.2f}x slower (95% interval {1 / high:.2f}-{1 / low:.2f}x over {len(ratios)} rounds)"
    elif low > 1.0 or high < 1.0:
        text = (
            f"{'faster' if low > 1.0 else 'slower'} by an uncertain factor: the ratio's {interval} is wider than "
            f"+-{tolerance:.0%} (a noisy machine; rerun when it is quiet, or allow more --max-rounds)"
        )
    else:
        text = (
            f"not determined: the ratio's {interval} contains 1 and is wider than +-{tolerance:.0%} "
            "(a noisy machine; rerun when it is quiet, or allow more --max-rounds)"
        )
    return {"ratio": ratio, "low": low, "high": high, "rounds": len(ratios), "stable": stable, "text": text}


def _comparisons(contenders: list[Contender], tolerance: float) -> list[dict]:
    """The verdicts the report prints: lionk's default against fused AdamW and the fastest peer Lion; on CUDA,
    the Triton path against fused AdamW and lion-pytorch's Triton kernel."""
    timed = {c.name: c for c in contenders if c.samples_ms}
    peers = [c for c in timed.values() if c.family == "lion" and not c.name.startswith("lionk")]
    pairs = []
    if DEFAULT_NAME in timed:
        pairs.append((DEFAULT_NAME, ADAMW_NAME, "torch AdamW(fused=True)"))
        if peers:
            best = min(peers, key=lambda c: statistics.median(c.samples_ms))
            pairs.append((DEFAULT_NAME, best.name, f"fastest peer Lion ({best.name})"))
    if TRITON_NAME in timed:
        pairs += [
            (TRITON_NAME, ADAMW_NAME, "torch AdamW(fused=True)"),
            (TRITON_NAME, "lion-pytorch triton", "lion-pytorch use_triton=True"),
        ]
    out = []
    for ours, theirs, label in pairs:
        if ours in timed and theirs in timed:
            v = verdict(timed[ours].samples_ms, timed[theirs].samples_ms, tolerance)
            out.append({"ours": ours, "theirs": theirs, "label": f"{'lionk default' if ours == DEFAULT_NAME else ours} vs {label}"} | v)
    return out


def _stored_share(optimizer: torch.optim.Optimizer, dtype: torch.dtype) -> float:
    """The share of the parameters (by element count) whose optimizer state holds a tensor of ``dtype``."""
    total = stored = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            total += p.numel()
            if any(isinstance(v, torch.Tensor) and v.dtype == dtype for v in optimizer.state.get(p, {}).values()):
                stored += p.numel()
    return stored / total if total else 0.0


class _Progress:
    """Status on stderr while the bench runs: one line rewritten in place on a terminal; elsewhere (a log file)
    a line per update, at most one every ``every_s`` seconds."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.tty = sys.stderr.isatty()
        self.width = 0
        self.every_s = every_s
        self.last = -math.inf

    def __call__(self, text: str) -> None:
        if self.tty:
            sys.stderr.write("\r" + text.ljust(self.width))
            self.width = len(text)
        elif time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.width:
            sys.stderr.write("\r" + " " * self.width + "\r")
            sys.stderr.flush()


def _setup(contenders: list[Contender], params, device: torch.device, warmup: int, progress) -> dict[str, torch.optim.Optimizer]:
    """Build each contender's optimizer, time its first step, warm it up, read its state size and measure the
    temporaries of one more step."""
    optimizers = {}
    for i, c in enumerate(contenders, 1):
        progress(f"lionk bench: setting up {c.name} ({i}/{len(contenders)}): first step and {warmup} warm-up steps")
        try:
            opt = c.make(params)
            c.first_step_ms = _time_ms(opt.step, device)
            for _ in range(warmup):
                opt.step()
            c.state_bytes = state_bytes(opt)
            c.temporary_bytes = step_temporaries(opt.step, device)
            c.streamed_bytes = sum(t.numel() * t.element_size() for t in tensors_in(dict(opt.state)) if t.dim() > 0)
            if c.storage is not None and (share := _stored_share(opt, c.storage)) < STORED_SHARE:
                requested = str(c.storage).replace("torch.", "")
                c.note = (
                    f"{requested} momentum covers only {share:.0%} of the parameters: lionk keeps the momentum of tensors "
                    f"too small for {requested} storage in their own dtype ({str(params[0].dtype).replace('torch.', '')})"
                )
            optimizers[c.name] = opt
        except Exception as err:  # a contender that cannot run here is reported with its reason
            c.error = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    return optimizers


def _roof(shapes: list[tuple[int, ...]], device: torch.device, elements: int) -> tuple[Callable[[], None], int, str]:
    """The bandwidth roof timed in every round: (run it once, bytes it moves, what it is).

    On CPU, with lionk's native library: p += g*s; m += g*s over float32 tensors of the bench set's shapes, split
    over the threads as a step is: a Lion step's own stream (3 arrays read, 2 written, 20 bytes per element) with
    nothing else. Elsewhere: torch's in-place a += s*b over ``elements`` float32 values (12 bytes per element).
    """
    if device.type == "cpu" and native.library() is not None:
        gen = torch.Generator().manual_seed(1)
        p, g, m = ([torch.randn(s, generator=gen) for s in shapes] for _ in range(3))
        return native.stream_roof(p, g, m), 20 * sum(math.prod(s) for s in shapes), "a Lion step's stream: p += g*s, m += g*s"
    a = torch.zeros(elements, device=device)
    b = torch.ones(elements, device=device)
    return (lambda: a.add_(b, alpha=1e-3)), 12 * elements, "in-place a += s*b"


def run_bench(
    size: int,
    layers: int,
    dtype: torch.dtype,
    device: torch.device,
    rounds: int,
    warmup: int,
    roof_elements: int,
    small: int | None = None,
    *,
    max_rounds: int | None = None,
    tolerance: float = 0.05,
    progress: Callable[[str], None] = lambda text: None,
) -> dict:
    """Time every contender over at least ``rounds`` and at most ``max_rounds`` interleaved rounds (see the module
    docstring for the stopping rule) and return every figure as a JSON-ready dict."""
    max_rounds = max(rounds, max_rounds or rounds)
    shapes = gpt_shapes(size, layers) if small is None else small_shapes(size, small)
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device=device, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in params)

    contenders, missing = _contenders(device, dtype)
    optimizers = _setup(contenders, params, device, warmup, progress)
    roof, roof_bytes, roof_name = _roof(shapes, device, roof_elements)
    for _ in range(warmup):
        roof()
    timed = [c for c in contenders if c.name in optimizers]
    roof_ms: list[float] = []
    load = OtherLoad()
    comparisons: list[dict] = []
    for r in itertools.count():
        shift = r % len(timed) if timed else 0
        roof_ms.append(_time_ms(roof, device))
        for c in timed[shift:] + timed[:shift]:
            c.samples_ms.append(_time_ms(optimizers[c.name].step, device))
        done = r + 1
        comparisons = _comparisons(contenders, tolerance)
        widest = max((100 * (v["high"] - v["low"]) / 2 / v["ratio"] for v in comparisons), default=0.0)
        progress(
            f"lionk bench: round {done} (at least {rounds}, at most {max_rounds}): widest verdict interval +-{widest:.0f}% "
            f"(needs +-{100 * tolerance:.0f}%)"
        )
        if done >= max_rounds or (done >= rounds and all(v["stable"] for v in comparisons)):
            break
    other_load = load.share()
    roof_gbs = roof_bytes / (statistics.median(roof_ms) * 1e-3) / 1e9

    elt = torch.empty((), dtype=dtype).element_size()
    rows = []
    for c in contenders:
        row = {"name": c.name, "family": c.family, "first_step_ms": c.first_step_ms, "state_bytes": c.state_bytes, "error": c.error}
        row["note"] = c.note
        if c.state_bytes is not None and c.temporary_bytes is not None:
            row["memory_per_param"] = {  # the bench's gradients are all live at a step, as without gradient release
                "weights": elt,
                "gradients": elt,
                "state": c.state_bytes / n_params,
                "step_temporaries": c.temporary_bytes / n_params,
                "together": 2 * elt + (c.state_bytes + c.temporary_bytes) / n_params,
            }
        if c.samples_ms:
            ideal = 3 * elt + 2 * c.streamed_bytes / n_params
            ms, low, high = median_interval(c.samples_ms)
            q1, _, q3 = statistics.quantiles(c.samples_ms, n=4) if len(c.samples_ms) > 1 else (ms, ms, ms)
            roof_share = [(ideal * n_params / c_ms) / (roof_bytes / r_ms) for c_ms, r_ms in zip(c.samples_ms, roof_ms)]
            row.update(
                ideal_bytes_per_param=ideal,
                ms=ms,
                ms_min=min(c.samples_ms),
                ms_interval=[low, high],
                spread_pct=100 * (q3 - q1) / ms,
                noisy=(high - low) / 2 > tolerance * ms,
                gbs=ideal * n_params / (ms * 1e-3) / 1e9,
                roof_pct=100 * statistics.median(roof_share),
                samples_ms=c.samples_ms,
            )
        rows.append(row)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {cpu_name()}, {torch.get_num_threads()} threads",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "params": n_params,
        "tensors": len(params),
        "rounds": len(roof_ms),
        "min_rounds": rounds,
        "max_rounds": max_rounds,
        "tolerance": tolerance,
        "other_load": other_load,
        "roof": roof_name,
        "roof_gbs": roof_gbs,
        "roof_ms": roof_ms,
        "ideal_bytes_per_param": {"lion": 5 * elt, "adamw": 7 * elt},
        "results": rows,
        "comparisons": comparisons,
        "not_installed": missing,
    }


def _memory_lines(report: dict) -> list[str]:
    """Bytes per parameter at a step: weights, gradients, state, the step's temporaries and their sum."""
    rows = [r for r in report["results"] if r.get("memory_per_param")]
    if not rows:
        return []
    how = "CUDA allocator's peak" if report["device"] and "CPU" not in report["device"] else "CPU allocator's events (torch.profiler)"
    lines = [
        "memory at a step, bytes per parameter: weights, gradients and state measured on the live tensors, a step's",
        f"temporaries from the {how}; 'together' is their sum, all held at once during a step",
        f"{'optimizer':<26}{'weights':>8}{'gradients':>10}{'state':>7}{'step temp':>10}{'together':>9}",
    ]
    for r in rows:
        m = r["memory_per_param"]
        lines.append(
            f"{r['name']:<26}{m['weights']:>8.2f}{m['gradients']:>10.2f}{m['state']:>7.2f}{m['step_temporaries']:>10.2f}{m['together']:>9.2f}"
        )
    return lines


def format_report(report: dict) -> str:
    """The table, the verdicts that the noise allows, and notes on what is not measured as asked."""
    lines = [
        f"lionk bench: {report['params'] / 1e6:.1f}M {report['dtype']} parameters in {report['tensors']} tensors on {report['device']}",
        f"roof ({report['roof']}, same rounds): {report['roof_gbs']:.1f} GB/s; ideal bytes/param: "
        f"Lion {report['ideal_bytes_per_param']['lion']:.0f}, AdamW {report['ideal_bytes_per_param']['adamw']:.0f}; "
        f"medians of {report['rounds']} interleaved rounds",
        "",
        f"{'optimizer':<26}{'ms/step':>10}{'min ms':>9}{'spread':>8}{'GB/s':>8}{'% roof':>8}{'first step ms':>15}{'state MB':>10}"
        f"{'% AdamW':>9}",
    ]
    by_name = {r["name"]: r for r in report["results"]}
    adamw_state = by_name.get(ADAMW_NAME, {}).get("state_bytes")
    notes = []
    for r in report["results"]:
        if r.get("ms") is None:
            lines.append(f"{r['name']:<26}  failed: {r['error']}")
            continue
        state = r.get("state_bytes") or 0
        share = f"{100 * state / adamw_state:>8.1f}%" if adamw_state else f"{'-':>9}"
        marks = ("*" if r["noisy"] else "") + ("!" if r["note"] else "")
        lines.append(
            f"{r['name'] + marks:<26}{r['ms']:>10.2f}{r['ms_min']:>9.2f}{r['spread_pct']:>7.0f}%{r['gbs']:>8.1f}{r['roof_pct']:>7.0f}%"
            f"{r['first_step_ms']:>15.1f}{state / 1e6:>10.1f}{share}"
        )
        if r["note"]:
            notes.append(f"! {r['name']}: {r['note']}")
    if any(r.get("noisy") for r in report["results"]):
        notes.append(
            f"* its median's 95% interval is wider than +-{report['tolerance']:.0%}: a noisy figure "
            "(spread: the middle half of the rounds' times, as a share of the median)"
        )
    if any(r.get("roof_pct", 0) > 100 for r in report["results"]):
        notes.append(
            f"% roof above 100: the step moved its bytes faster than the roof ({report['roof']}) did in the same rounds "
            "(a parameter set that fits in cache does, or the roof is not the fastest way to stream memory here)"
        )
    load = report.get("other_load")
    if contended(load, report["threads"]):
        notes.append(f"other work took {load:.0%} of this machine's CPU time during the rounds: every timing here is contended")
    lines += [*notes, "", *_memory_lines(report), ""]
    lines += [f"{v['label']}: {v['text']}" for v in report["comparisons"]]
    if report["not_installed"]:
        lines.append("peers not available here: " + "; ".join(report["not_installed"]))
    return "\n".join(lines)


def needed_bytes(n_params: int, dtype: torch.dtype, device: torch.device, roof_elements: int) -> int:
    """About how much memory the bench holds at once: parameters and gradients, every contender's state (two
    buffers for AdamW, one for a Lion, less for low-bit storage), a parameter-sized temporary, and the roof tensors."""
    elt = torch.empty((), dtype=dtype).element_size()
    state = 0
    for c in _contenders(device, dtype)[0]:
        per_param = {torch.int8: 1 + 4 / 256, torch.bfloat16: 2}.get(c.storage, elt)
        state += (2 * elt if c.family == "adamw" else per_param) * n_params
    return int(3 * elt * n_params + state + 2 * 4 * roof_elements)


def _device(text: str) -> torch.device:
    """The --device: cpu, or cuda[:N] where this torch sees that GPU."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise CLIError(f"invalid --device {text!r}: must be cpu or cuda[:N]")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {text}: CUDA is not available to this torch ({torch.__version__})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def run(args: argparse.Namespace) -> int:
    integer("--rounds", args.rounds, 1)
    integer("--max-rounds", args.max_rounds, args.rounds)
    integer("--warmup", args.warmup, 0)
    integer("--layers", args.layers, 1)
    tolerance = number("--tolerance", args.tolerance, 0.0, 1.0, low_open=True)
    device = _device(args.device)
    size = parse_size(args.size)
    roof = parse_size(args.roof_size, "--roof-size")
    small = None if args.small_tensors is None else parse_size(args.small_tensors, "--small-tensors")
    n_params = sum(math.prod(shape) for shape in (gpt_shapes(size, args.layers) if small is None else small_shapes(size, small)))
    needed, free = needed_bytes(n_params, DTYPES[args.dtype], device, roof), available_bytes(device)
    if free is not None and needed > free:
        raise CLIError(
            f"--size {args.size} (and --roof-size {args.roof_size}) need about {needed / 1e9:.1f} GB on {device.type}, "
            f"{free / 1e9:.1f} GB is free: give a smaller --size"
        )
    json_path = None if args.json is None else output_file(args.json, "--json")
    progress = _Progress()
    try:
        report = run_bench(
            size,
            args.layers,
            DTYPES[args.dtype],
            device,
            args.rounds,
            args.warmup,
            roof,
            small,
            max_rounds=args.max_rounds,
            tolerance=tolerance,
            progress=progress,
        )
    finally:
        progress.done()
    print(format_report(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
        print(f"wrote {json_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time the optimizer step against torch AdamW, peer Lions and a bandwidth roof",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", default="50M", metavar="SIZE", help="parameters in the GPT-like set, e.g. 50M or 200k (default 50M)")
    parser.add_argument(
        "--layers", type=int, default=8, metavar="N", help="transformer blocks: 12*layers+4 tensors (default 8 -> 100 tensors)"
    )
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32", help="dtype of the parameters and gradients (default float32)")
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda[:N] (default: cuda where available, else cpu)",
    )
    parser.add_argument("--rounds", type=int, default=15, metavar="N", help="interleaved timed rounds at least (default 15)")
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=30,
        metavar="N",
        help="rounds at most, while a verdict is wider than --tolerance (default 30)",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        metavar="X",
        default=0.05,
        help="half-width of a verdict's 95%% interval, relative to its median, below which it is printed (default 0.05)",
    )
    parser.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps per contender first (default 2)")
    parser.add_argument(
        "--small-tensors",
        metavar="SIZE",
        help="instead of the GPT-like set, split --size into tensors of SIZE elements (e.g. 4k: the many-small-tensors case)",
    )
    parser.add_argument("--roof-size", default="64M", metavar="SIZE", help="elements of each roof tensor (default 64M)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON to this file (its directory is created)")
    parser.set_defaults(func=run)
