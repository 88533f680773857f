"""``lionk bench``: time one optimizer step on a GPT-like parameter set against a bandwidth roof.

Every contender steps the same parameters and gradients (each with its own state), in interleaved
rounds after warm-up, so a noisy machine slows all of them alike. A step is memory-bound: it reads
and writes each parameter, reads its gradient, and reads and writes its state, so its ideal cost is
``bytes / bandwidth`` with

    Lion:  2*P + G + 2*S bytes per parameter (P, G, S = element sizes of param, grad, momentum)
    AdamW: 2*P + G + 4*S (two state buffers)

e.g. 20 and 28 bytes in float32. Low-bit momentum rows use S = 2 (bfloat16) and S = 1 + 4/256 (int8 codes
plus one float32 scale per block of 256). The roof is the bandwidth of an in-place ``a += s*b`` over a
large tensor (12 bytes per float32 element), measured in the same rounds on the same device.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..memory import state_bytes
from . import CLIError

LION_LR, ADAMW_LR = 1e-5, 1e-5  # tiny steps keep the shared parameters finite through many rounds
TRITON_NAME = "lionk fused (Triton)"


@dataclass
class Contender:
    name: str
    family: str  # "lion" or "adamw": which ideal byte count applies
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
    state_size: float | None = None  # bytes per state element, when not the parameter's element size
    samples_ms: list[float] = field(default_factory=list)
    first_step_ms: float | None = None
    state_bytes: int | None = None
    error: str | None = None


def parse_size(text: str) -> int:
    """'50M', '1.5G', '200k' or '123456' -> a number of parameters."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgG]?)\s*", text)
    if not match:
        raise CLIError(f"invalid size {text!r} (expected a number with an optional k/M/G suffix, e.g. 50M)")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
    if value < 1000:
        raise CLIError(f"invalid size {text!r} (must be at least 1k parameters)")
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


def _contenders(device: torch.device, dtype: torch.dtype) -> tuple[list[Contender], list[str]]:
    """lionk's paths and storages, torch's AdamW variants and every installed peer Lion; and the peers not found."""
    import lionk

    cuda = device.type == "cuda"
    contenders = [
        Contender("lionk (default)", "lion", lambda ps: lionk.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        Contender("lionk foreach", "lion", lambda ps: lionk.Lion(ps, lr=LION_LR, weight_decay=0.1, foreach=True, fused=False)),
        Contender("lionk for-loop", "lion", lambda ps: lionk.Lion(ps, lr=LION_LR, weight_decay=0.1, foreach=False, fused=False)),
    ]
    if dtype in (torch.bfloat16, torch.float16):  # the default rounds stochastically; this is the contrast
        contenders.append(
            Contender("lionk round-to-nearest", "lion", lambda ps: lionk.Lion(ps, lr=LION_LR, weight_decay=0.1, stochastic_rounding=False))
        )
    if dtype != torch.bfloat16:
        contenders.append(
            Contender("lionk bf16 momentum", "lion", lambda ps: lionk.Lion(ps, lr=LION_LR, weight_decay=0.1, momentum_dtype="bfloat16"), 2)
        )
    contenders += [
        Contender(
            "lionk int8 momentum", "lion", lambda ps: lionk.Lion(ps, lr=LION_LR, weight_decay=0.1, momentum_dtype="int8"), 1 + 4 / 256
        ),
        Contender("torch AdamW fused", "adamw", lambda ps: torch.optim.AdamW(ps, lr=ADAMW_LR, fused=True)),
        Contender("torch AdamW foreach", "adamw", lambda ps: torch.optim.AdamW(ps, lr=ADAMW_LR, foreach=True)),
        Contender("torch AdamW for-loop", "adamw", lambda ps: torch.optim.AdamW(ps, lr=ADAMW_LR, foreach=False)),
    ]
    if cuda:  # opt-in until lionk._engine.dispatch.TRITON_BY_DEFAULT is set; fails with its reason where triton cannot run
        contenders.insert(1, Contender(TRITON_NAME, "lion", lambda ps: lionk.Lion(ps, lr=LION_LR, weight_decay=0.1, fused=True)))
    peers = {
        "lion-pytorch": ("lion_pytorch", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "lion-pytorch foreach": ("lion_pytorch.foreach", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "timm Lion": ("timm.optim", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "pytorch_optimizer Lion": ("pytorch_optimizer", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1)),
        "bitsandbytes Lion32bit": ("bitsandbytes.optim", lambda m: lambda ps: m.Lion32bit(ps, lr=LION_LR, weight_decay=0.1)),
    }
    if cuda:
        peers["lion-pytorch triton"] = ("lion_pytorch", lambda m: lambda ps: m.Lion(ps, lr=LION_LR, weight_decay=0.1, use_triton=True))
    missing = []
    for name, (module, factory) in peers.items():
        try:
            contenders.append(Contender(name, "lion", factory(importlib.import_module(module))))
        except Exception as err:  # a peer that fails to import is reported, not fatal
            missing.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''})")
    return contenders, missing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


def run_bench(
    size: int, layers: int, dtype: torch.dtype, device: torch.device, rounds: int, warmup: int, roof_elements: int, small: int | None = None
) -> dict:
    shapes = gpt_shapes(size, layers) if small is None else small_shapes(size, small)
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device=device, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in params)

    contenders, missing = _contenders(device, dtype)
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for c in contenders:
        try:
            opt = c.make(params)
            c.first_step_ms = _time_ms(opt.step, device)
            for _ in range(warmup):
                opt.step()
            c.state_bytes = state_bytes(opt)
            optimizers[c.name] = opt
        except Exception as err:  # a contender that cannot run here is reported with its reason
            c.error = f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"
    a = torch.zeros(roof_elements, device=device)
    b = torch.ones(roof_elements, device=device)
    for _ in range(warmup):
        a.add_(b, alpha=1e-3)
    roof_ms: list[float] = []
    for _ in range(rounds):
        roof_ms.append(_time_ms(lambda: a.add_(b, alpha=1e-3), device))
        for c in contenders:
            if c.name in optimizers:
                c.samples_ms.append(_time_ms(optimizers[c.name].step, device))
    roof_gbs = 12 * roof_elements / (statistics.median(roof_ms) * 1e-3) / 1e9

    elt = torch.empty((), dtype=dtype).element_size()
    state_buffers = {"lion": 2, "adamw": 4}  # state elements read + written per parameter
    ideal_bytes = {family: (3 * elt + k * elt) * n_params for family, k in state_buffers.items()}
    rows = []
    for c in contenders:
        row = {"name": c.name, "family": c.family, "first_step_ms": c.first_step_ms, "state_bytes": c.state_bytes, "error": c.error}
        if c.samples_ms:
            ms = statistics.median(c.samples_ms)
            ideal = ideal_bytes[c.family] if c.state_size is None else (3 * elt + state_buffers[c.family] * c.state_size) * n_params
            row["ideal_bytes_per_param"] = ideal / n_params
            gbs = ideal / (ms * 1e-3) / 1e9
            row.update(ms=ms, ms_min=min(c.samples_ms), gbs=gbs, roof_pct=100 * gbs / roof_gbs, samples_ms=c.samples_ms)
        rows.append(row)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "device": _device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": str(dtype).replace("torch.", ""),
        "params": n_params,
        "tensors": len(params),
        "rounds": rounds,
        "roof_gbs": roof_gbs,
        "roof_ms": roof_ms,
        "ideal_bytes_per_param": {k: v / n_params for k, v in ideal_bytes.items()},
        "results": rows,
        "not_installed": missing,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def _speedup(theirs_ms: float, ours_ms: float) -> str:
    """'1.31x faster' or '1.43x slower'."""
    ratio = theirs_ms / ours_ms
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def format_report(report: dict) -> str:
    lines = [
        f"lionk bench: {report['params'] / 1e6:.1f}M {report['dtype']} parameters in {report['tensors']} tensors on {report['device']}",
        f"roof (in-place a += s*b, same rounds): {report['roof_gbs']:.1f} GB/s; ideal bytes/param: "
        f"Lion {report['ideal_bytes_per_param']['lion']:.0f}, AdamW {report['ideal_bytes_per_param']['adamw']:.0f}; "
        f"median of {report['rounds']} interleaved rounds",
        "",
        f"{'optimizer':<26}{'ms/step':>10}{'min ms':>10}{'GB/s':>9}{'% roof':>9}{'first step ms':>15}{'state MB':>10}{'% AdamW':>9}",
    ]
    by_name = {r["name"]: r for r in report["results"]}
    adamw_state = by_name.get("torch AdamW fused", {}).get("state_bytes")
    for r in report["results"]:
        if r.get("ms") is None:
            lines.append(f"{r['name']:<26}  failed: {r['error']}")
            continue
        state = r.get("state_bytes") or 0
        share = f"{100 * state / adamw_state:>8.1f}%" if adamw_state else f"{'-':>9}"
        lines.append(
            f"{r['name']:<26}{r['ms']:>10.2f}{r['ms_min']:>10.2f}{r['gbs']:>9.1f}{r['roof_pct']:>8.0f}%{r['first_step_ms']:>15.1f}"
            f"{state / 1e6:>10.1f}{share}"
        )
    ours = by_name.get("lionk (default)", {}).get("ms")
    adamw = by_name.get("torch AdamW fused", {}).get("ms")
    peers = [r for r in report["results"] if r.get("ms") and r["family"] == "lion" and not r["name"].startswith("lionk")]
    lines.append("")
    if ours and adamw:
        lines.append(f"lionk default vs torch AdamW(fused=True): {_speedup(adamw, ours)}")
    if ours and peers:
        best = min(peers, key=lambda r: r["ms"])
        lines.append(f"lionk default vs fastest peer Lion ({best['name']}): {_speedup(best['ms'], ours)}")
    triton = by_name.get(TRITON_NAME, {}).get("ms")
    if triton:
        versus = [(adamw, "torch AdamW(fused=True)"), (by_name.get("lion-pytorch triton", {}).get("ms"), "lion-pytorch use_triton=True")]
        lines += [f"{TRITON_NAME} vs {name}: {_speedup(other, triton)}" for other, name in versus if other]
    if report["not_installed"]:
        lines.append("peers not available here: " + "; ".join(report["not_installed"]))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.warmup < 0:
        raise CLIError(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    if args.layers < 1:
        raise CLIError(f"--layers must be >= 1, got {args.layers}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda requested but CUDA is not available")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    roof = parse_size(args.roof_size)
    small = None if args.small_tensors is None else parse_size(args.small_tensors)
    report = run_bench(parse_size(args.size), args.layers, dtype, device, args.rounds, args.warmup, roof, small)
    print(format_report(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="time the optimizer step against torch AdamW, peer Lions and a bandwidth roof")
    parser.add_argument("--size", default="50M", help="parameters in the GPT-like set (default 50M)")
    parser.add_argument("--layers", type=int, default=8, help="transformer blocks: 12*layers+4 tensors (default 8 -> 100 tensors)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per contender first (default 2)")
    parser.add_argument(
        "--small-tensors",
        metavar="SIZE",
        help="instead of the GPT-like set, split --size into tensors of SIZE elements (e.g. 4k: the many-small-tensors case)",
    )
    parser.add_argument("--roof-size", default="64M", help="elements of each roof tensor (default 64M)")
    parser.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    parser.set_defaults(func=run)
