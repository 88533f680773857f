"""One rank of a tests/test_distributed.py scenario: ``python _distributed_worker.py SCENARIO OUT_DIR``.

The launcher sets RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. Each scenario saves what the test checks to
``OUT_DIR/SCENARIO_<rank>.pt``; errors are left to propagate (non-zero exit, traceback on stderr).
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import lionk
from lionk.distributed import DistributedLion

TIMEOUT = timedelta(seconds=15)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    # odd sizes: FSDP2 shards dim 0 unevenly (7 rows -> 4 + 3)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))


def _groups(model: nn.Module, kernel: str) -> list[dict]:
    return [
        {"params": [p for p in model.parameters() if p.dim() == 2], "kernel": kernel},
        {"params": [p for p in model.parameters() if p.dim() < 2], "kernel": "sign", "weight_decay": 0.0},
    ]


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(step)
    return torch.randn(8, 5, generator=gen), torch.randn(8, 3, generator=gen)


def fsdp(out: dict, rank: int, world: int, tmp: Path) -> None:
    """FSDP2 Lion against single-process Lion on the global batch, per kernel; diagnostics; a DCP round trip."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.fsdp import fully_shard

    def make(kernel: str, cautious: bool, sharded: bool):
        model = _mlp(0)
        if sharded:
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
        return model, lionk.Lion(_groups(model, kernel), lr=0.02, weight_decay=5.0, cautious=cautious)

    def train(model, opt, steps, shard: bool, start: int = 0):
        for step in range(start, start + steps):
            x, y = _batch(step)
            if shard:
                x, y = x.chunk(world)[rank], y.chunk(world)[rank]
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()

    # the fused C path never receives DTensors: fused=True says so instead of computing garbage
    model, _ = make("sign", False, sharded=True)
    opt = lionk.Lion(model.parameters(), lr=0.02, fused=True)
    nn.functional.mse_loss(model(_batch(0)[0]), _batch(0)[1]).backward()
    try:
        opt.step()
    except RuntimeError as err:
        out["fused"] = str(err)

    cases = [("sign", False), ("sign", True), ("lp(p=1.5)", False), ("l2", False), ("linf", False), ("nuclear(method='svd')", False)]
    for kernel, cautious in cases:
        model, opt = make(kernel, cautious, sharded=True)
        ref, ref_opt = make(kernel, cautious, sharded=False)
        train(model, opt, 6, shard=True)
        train(ref, ref_opt, 6, shard=False)
        out[f"{kernel} cautious={cautious}"] = [(p.full_tensor(), q.detach().clone()) for p, q in zip(model.parameters(), ref.parameters())]
        if kernel == "sign" and not cautious:
            # gradients of one more batch, left in place for the stationarity score
            for m, shard in ((model, True), (ref, False)):
                x, y = _batch(99)
                if shard:
                    x, y = x.chunk(world)[rank], y.chunk(world)[rank]
                nn.functional.mse_loss(m(x), y).backward()
            out["diagnostics"] = (lionk.diagnostics(opt), lionk.diagnostics(ref_opt))
            opt.zero_grad()
            # distributed checkpoint round trip: save, train on, load into fresh objects, train on: same weights
            model_sd, optim_sd = get_state_dict(model, opt)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
            train(model, opt, 3, shard=True, start=6)
            fresh, fresh_opt = make(kernel, cautious, sharded=True)
            model_sd, optim_sd = get_state_dict(fresh, fresh_opt)
            state = {"model": model_sd, "optim": optim_sd}
            dcp.load(state, checkpoint_id=str(tmp / "dcp"))
            set_state_dict(fresh, fresh_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
            train(fresh, fresh_opt, 3, shard=True, start=6)
            out["dcp"] = [(p.full_tensor(), q.full_tensor()) for p, q in zip(model.parameters(), fresh.parameters())]


def vote(out: dict, rank: int, world: int, tmp: Path) -> None:
    """Hand-checkable votes, ties, zeros, traffic; many steps of training with bitwise replica checks."""
    grads = {0: [1.0, -1.0, 1.0, 0.0, 0.0, -1.0, 2.0, -3.0, 1.0], 1: [1.0, 1.0, -1.0, 0.0, 1.0, -1.0, 5.0, -1.0, 4.0]}
    for mode in ("majority", "mean"):
        p = torch.nn.Parameter(torch.zeros(9))
        opt = DistributedLion([p], lr=0.5, betas=(0.9, 0.99), vote=mode)
        p.grad = torch.tensor(grads[rank])
        opt.step()
        first = opt.traffic.bytes
        p.grad = torch.tensor([1.0] * 9)  # momentum is nonzero everywhere now: no zero votes, one bit per element
        before = p.detach().clone()
        opt.step()
        out[mode] = (before, p.detach().clone(), first, opt.traffic.bytes - first, opt.traffic.calls)

    # non-finite gradients: "propagate" raises on every rank and updates nothing; "skip" makes the entry vote 0
    for mode in ("propagate", "skip"):
        p = torch.nn.Parameter(torch.zeros(3))
        opt = DistributedLion([p], lr=0.5, nonfinite=mode)
        p.grad = torch.tensor([float("nan") if rank == 0 else 1.0, 1.0, -1.0])
        try:
            opt.step()
            error = None
        except RuntimeError as err:
            error = str(err)
        out[f"nonfinite {mode}"] = (error, p.detach().clone(), opt.state[p]["exp_avg"].clone())

    # ranks that step different parameters are caught on every rank, before anything moves: different sizes; equal
    # sizes but different parameters (rank 0 has a gradient for A only, rank 1 for B only); a rank with no gradient
    p = torch.nn.Parameter(torch.zeros(3 + rank))
    opt = DistributedLion([p], lr=0.5)
    p.grad = torch.ones_like(p)
    try:
        opt.step()
    except RuntimeError as err:
        out["mismatch"] = str(err)
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    opt = DistributedLion([a, b], lr=0.5)
    (a if rank == 0 else b).grad = torch.ones(4)
    try:
        opt.step()
        out["disjoint"] = None
    except RuntimeError as err:
        out["disjoint"] = (str(err), a.detach().clone(), b.detach().clone())
    a, b = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    opt = DistributedLion([a, b], lr=0.5)
    results = []
    for step in range(3):  # rank 1 has no gradients at step 1: it still joins the flag all-reduce, every rank raises
        a.grad = b.grad = None if (rank == 1 and step == 1) else torch.ones(4)
        try:
            opt.step()
            results.append(None)
        except RuntimeError as err:
            results.append(str(err))
    out["no gradients"] = (results, a.detach().clone())

    # many steps: each rank its own batches; replicas must stay bitwise equal, momenta differ
    # (bf16 weights: stochastic rounding draws the same bits on every rank)
    for kernel, mode, dtype in (
        ("sign", "majority", torch.float32),
        ("tanh(a=0.01)", "mean", torch.float32),
        ("huber(a=0.05)", "majority", torch.float32),
        ("sign", "majority", torch.bfloat16),
    ):
        model = _mlp(1).to(dtype)
        init = [p.detach().clone() for p in model.parameters()]
        opt = DistributedLion(_groups(model, kernel), lr=0.01, weight_decay=0.1, vote=mode, check_every=25)
        for step in range(100):
            x, y = _batch(1000 * rank + step)
            opt.zero_grad()
            nn.functional.mse_loss(model(x.to(dtype)).float(), y).backward()
            opt.step()
        out[f"train {kernel} {mode}" + (" bf16" if dtype == torch.bfloat16 else "")] = dict(
            params=[p.detach().clone() for p in model.parameters()],
            init=init,
            momenta=[opt.state[p]["exp_avg"].clone() for p in model.parameters()],
            checksum=opt.check_replicas(),
        )

    # a one-rank group: DistributedLion with sign is Lion exactly
    singles = [dist.new_group([r]) for r in range(world)]
    model, ref = _mlp(2), _mlp(2)
    opt = DistributedLion(_groups(model, "sign"), lr=0.01, weight_decay=0.1, process_group=singles[rank])
    ref_opt = lionk.Lion(_groups(ref, "sign"), lr=0.01, weight_decay=0.1)
    for step in range(20):
        for m, o in ((model, opt), (ref, ref_opt)):
            x, y = _batch(500 * rank + step)
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
            o.step()
    out["single"] = [(p.detach().clone(), q.detach().clone()) for p, q in zip(model.parameters(), ref.parameters())]

    # input errors
    errors = []
    for kwargs in ({"kernel": "quadratic"}, {"kernel": "l2"}, {"vote": "median"}, {"check_every": -1}, {"momentum_dtype": "int8"}):
        try:
            DistributedLion([nn.Parameter(torch.zeros(3))], **kwargs)
        except ValueError as err:
            errors.append(str(err))
    out["errors"] = errors


def fail(out: dict, rank: int, world: int, tmp: Path) -> None:
    """Rank 1 raises at step 3; the others must get a RuntimeError from DistributedLion, not hang."""
    model = _mlp(3)
    opt = DistributedLion(model.parameters(), lr=0.01)
    for step in range(10):
        if rank == 1 and step == 3:
            raise ValueError("rank 1 failed on purpose")
        x, y = _batch(step)
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        try:
            opt.step()
        except RuntimeError as err:
            out["error"] = (step, str(err))
            return


def main() -> None:
    scenario, tmp = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    out: dict = {}
    globals()[scenario](out, rank, world, tmp)
    torch.save(out, tmp / f"{scenario}_{rank}.pt")
    if scenario != "fail":
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
