"""Step times of lionk variants against torch AdamW(fused=True) and the native stream roof, in interleaved rounds.

Unlike ``lionk bench``, which also times the slow paths and every peer, this times only the contenders named, so
that the allocations of a slow contender do not disturb the fast ones. Run it three times and take the medians
(BENCHMARKS.md does).

    python benchmarks/interleaved.py --dtype float32 --threads 2 default bf16-momentum int8-momentum
    python benchmarks/interleaved.py --dtype bfloat16 default round-to-nearest float32-momentum
    python benchmarks/interleaved.py --small-tensors 4000 --tensors 10000 default
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import lionk
from lionk._engine import native
from lionk.cli.bench import gpt_shapes

VARIANTS = {
    "default": {},
    "round-to-nearest": {"stochastic_rounding": False},
    "bf16-momentum": {"momentum_dtype": "bfloat16"},
    "float32-momentum": {"momentum_dtype": "float32"},
    "int8-momentum": {"momentum_dtype": "int8"},
    "int8-round-to-nearest": {"momentum_dtype": "int8", "stochastic_rounding": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=["default"], choices=sorted(VARIANTS))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--small-tensors", type=int, default=None, metavar="N", help="tensors of N elements instead of the GPT set")
    parser.add_argument("--tensors", type=int, default=10_000, help="how many, with --small-tensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    shapes = [(args.small_tensors,)] * args.tensors if args.small_tensors else gpt_shapes(50_000_000, 8)
    gen = torch.Generator().manual_seed(0)
    base = [torch.randn(s, generator=gen) * 0.02 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 1e-3 for s in shapes]
    steps = {}
    for name in [*args.variants, "AdamW fused"]:
        params = [torch.nn.Parameter(b.to(dtype)) for b in base]
        for p, g in zip(params, grads):
            p.grad = g.to(dtype)
        if name == "AdamW fused":
            opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
        else:
            opt = lionk.Lion(params, lr=1e-5, weight_decay=0.1, **VARIANTS[name])
        steps[name] = opt.step
    if native.library() is not None:  # a Lion step's own stream over float32 tensors of these shapes
        steps["roof"] = native.stream_roof(*([torch.randn(s, generator=gen) for s in shapes] for _ in range(3)))
    for fn in steps.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.rounds):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - start))
    median = {k: statistics.median(v) for k, v in times.items()}
    n = sum(b.numel() for b in base)
    print(f"{n / 1e6:.1f}M {args.dtype} parameters in {len(shapes)} tensors, {args.threads} threads, {args.rounds} rounds")
    for name, ms in median.items():
        extra = ""
        if name != "AdamW fused" and name != "roof":
            extra = f"  AdamW fused / this = {median['AdamW fused'] / ms:.2f}"
            if "roof" in median and dtype == torch.float32 and name in ("default", "float32-momentum"):
                extra += f"  {100 * median['roof'] / ms:.0f}% of roof"
        print(f"  {name:<24}{ms:8.1f} ms{extra}")


if __name__ == "__main__":
    main()
