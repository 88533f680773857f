"""Train the character GPT of ``lionk compare`` on several processes: DDP + Lion, FSDP2 + Lion or DistributedLion.

    torchrun --nproc_per_node=2 examples/distributed_gpt.py --mode ddp       # gradients all-reduced (fp32)
    torchrun --nproc_per_node=2 examples/distributed_gpt.py --mode fsdp2     # parameters sharded (DTensor)
    torchrun --nproc_per_node=2 examples/distributed_gpt.py --mode distlion  # 1-bit sign votes, no gradient all-reduce
    python examples/distributed_gpt.py --mode single --ranks 2               # one process, the 2 ranks' batches combined

Each rank draws ``--batch-size`` windows per step from its own generator (seeded with ``seed + rank``); ``single``
draws the same windows for ``--ranks`` ranks and concatenates them, so it is Lion on the combined batch. The backend
is NCCL when CUDA is available, else gloo. The model, data and lr schedule are those of ``lionk compare``
(:mod:`lionk.cli.gpt`, :mod:`lionk.cli.data`, :func:`lionk.cli.training.lr_at`); Lion's lr and weight decay come
from ``lionk.from_adamw(1e-3, 0.1)`` and decay applies to 2-D weights only. Gradients are clipped to norm 1 (for
``distlion``: each rank's own gradient). Validation loss is the mean over ``--eval-iters`` batches drawn by every
rank from the same generator. Traffic: DDP's gradient buckets are counted by a comm hook
(:func:`lionk.distributed.counting_allreduce_hook`), DistributedLion's collectives by its ``traffic`` counter;
FSDP2's all-gathers and reduce-scatters are not counted. Rank 0 prints a JSON summary (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

import lionk
from lionk.cli.data import load_corpus
from lionk.cli.gpt import GPT, GPTConfig
from lionk.cli.training import Settings, lr_at
from lionk.distributed import CommCounter, DistributedLion, counting_allreduce_hook

MODES = ("ddp", "fsdp2", "distlion", "single")


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=MODES, required=True)
    ap.add_argument("--ranks", type=int, default=1, help="single mode: how many ranks' batches to combine")
    ap.add_argument("--data", default=None, help="text file (default: the standard-library corpus of lionk compare)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=12, help="windows per rank per step")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--vote", choices=("majority", "mean"), default="majority")
    ap.add_argument("--kernel", default="sign")
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--check-every", type=int, default=50, help="distlion: compare replica checksums every N steps")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--out", default=None, help="write rank 0's JSON summary here")
    args = ap.parse_args(argv)
    if args.ranks < 1 or args.steps < 1 or args.batch_size < 1 or args.eval_iters < 1:
        ap.error("--ranks, --steps, --batch-size and --eval-iters must be >= 1")
    return args


def groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    distributed = args.mode != "single"
    if distributed:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if cuda else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    else:
        rank, world, device = 0, 1, torch.device("cpu")
    ranks = world if distributed else args.ranks

    corpus = load_corpus(args.data)
    settings = Settings(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, block_size=args.block_size)
    corpus.check_context(args.block_size)
    cfg = GPTConfig(corpus.vocab_size, args.block_size, args.n_layer, args.n_head, args.n_embd)
    torch.manual_seed(args.seed)  # the same initial weights on every rank and in single mode
    model = GPT(cfg).to(device)
    hp = lionk.from_adamw(1e-3, 0.1)

    counter = CommCounter()
    if args.mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
        model.register_comm_hook(counter, counting_allreduce_hook)
    elif args.mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
    if args.mode == "distlion":
        opt = DistributedLion(
            groups(model, hp["weight_decay"]),
            lr=hp["lr"],
            betas=hp["betas"],
            kernel=args.kernel,
            vote=args.vote,
            check_every=args.check_every,
        )
        counter = opt.traffic
    else:
        opt = lionk.Lion(groups(model, hp["weight_decay"]), lr=hp["lr"], betas=hp["betas"], kernel=args.kernel)

    # single mode draws the batches of every emulated rank; a real rank draws its own
    batch_gens = [torch.Generator().manual_seed(args.seed + r) for r in (range(ranks) if not distributed else [rank])]
    eval_gen = torch.Generator().manual_seed(args.seed + 10_000)

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        batches = [corpus.batch("val", args.batch_size, args.block_size, eval_gen) for _ in range(args.eval_iters)]
        losses = [model(x.to(device), y.to(device))[1].item() for x, y in batches]
        model.train()
        return sum(losses) / len(losses)

    start = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, hp["lr"], settings)
        batches = [corpus.batch("train", args.batch_size, args.block_size, g) for g in batch_gens]
        x, y = (torch.cat(t).to(device) for t in zip(*batches))
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    wall = time.perf_counter() - start
    comm_bytes, comm_calls = counter.bytes, counter.calls
    summary = {
        "mode": args.mode,
        "vote": args.vote if args.mode == "distlion" else None,
        "kernel": args.kernel,
        "ranks": ranks,
        "steps": args.steps,
        "batch_per_rank": args.batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "val_loss": val_loss(),
        "last_train_loss": loss.item(),
        "train_s": wall,
        "bytes_per_step_per_rank": comm_bytes / args.steps if args.mode in ("ddp", "distlion") else None,
        "collectives_per_step": comm_calls / args.steps if args.mode in ("ddp", "distlion") else None,
    }
    if args.mode == "distlion":
        summary["replica_checksum"] = opt.check_replicas()
    if rank == 0:
        print(json.dumps(summary))
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    if distributed:
        dist.barrier()  # no rank tears gloo down while another still talks to it (that can abort a process at exit)
        dist.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
