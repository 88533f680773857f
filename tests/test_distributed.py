"""Lion under FSDP2 and DistributedLion, in spawned gloo processes (tests/_distributed_worker.py), each bounded in time.

Truth is independent of the code under test: single-process Lion on the combined batch, votes computed by hand,
bitwise equality of replicas. A launch that does not finish within its timeout fails (the processes are killed).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lionk.distributed import DistributedLion, pack_bits, unpack_bits

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo")

WORKER = Path(__file__).with_name("_distributed_worker.py")
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "distributed_gpt.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], world: int, timeout: float) -> list[subprocess.CompletedProcess]:
    """Run ``python *argv`` as ``world`` ranks of a gloo job; kill them all and fail the test after ``timeout`` s."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]))
        procs.append(subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 0.1))
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv} with {world} ranks did not finish within {timeout} s (rank {len(results)} still running)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def run_scenario(name: str, tmp_path: Path, world: int = 2, timeout: float = 120) -> list[dict]:
    results = launch([str(WORKER), name, str(tmp_path)], world, timeout)
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} failed:\n{r.stderr[-3000:]}"
    return [torch.load(tmp_path / f"{name}_{rank}.pt", weights_only=False) for rank in range(world)]


# ----------------------------------------------------------------------------------------------
# Bit packing (no processes)
# ----------------------------------------------------------------------------------------------


def test_pack_bits_order_and_round_trip():
    bits = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    packed = pack_bits(bits)
    assert packed.tolist() == [1 + 128, 1 + 2]  # bit k of byte j is element 8j + k; padding is 0
    for n in (0, 1, 7, 8, 9, 1000):
        b = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
        assert pack_bits(b).numel() == (n + 7) // 8
        assert torch.equal(unpack_bits(pack_bits(b), n), b)
    with pytest.raises(ValueError, match="1-D bool"):
        pack_bits(torch.ones(3))
    with pytest.raises(ValueError, match="n=20"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 20)


def test_distributed_lion_needs_an_initialised_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedLion([torch.nn.Parameter(torch.zeros(2))])


# ----------------------------------------------------------------------------------------------
# FSDP2
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    return run_scenario("fsdp", tmp_path_factory.mktemp("fsdp"))


@pytest.mark.parametrize(
    "case",
    [
        "sign cautious=False",
        "sign cautious=True",
        "lp(p=1.5) cautious=False",
        "l2 cautious=False",
        "linf cautious=False",
        "nuclear(method='svd') cautious=False",
    ],
)
def test_fsdp2_lion_equals_single_process_lion_on_the_global_batch(fsdp_results, case):
    # 6 steps, lr 0.02: a wrong sign or a shard-local norm moves a weight by ~lr; fp32 reduction order moves it by ~1e-7
    for out in fsdp_results:
        for sharded, single in out[case]:
            torch.testing.assert_close(sharded, single, rtol=1e-5, atol=1e-6)


def test_fsdp2_fused_true_raises_instead_of_running_on_dtensors(fsdp_results):
    for out in fsdp_results:
        assert "a DTensor (FSDP2 shard) runs the torch paths" in out["fused"]


def _close_or_both_none(a, b, rel):
    """A figure a kernel has no box or score for is None on both sides; otherwise the two agree to ``rel``."""
    return a is None and b is None if b is None else a == pytest.approx(b, rel=rel)


def test_fsdp2_diagnostics_reduce_over_the_whole_tensor(fsdp_results):
    for out in fsdp_results:
        sharded, single = out["diagnostics"]
        for gs, g1 in zip(sharded, single):
            assert gs.boundary_fraction == g1.boundary_fraction
            assert _close_or_both_none(gs.max_scaled, g1.max_scaled, rel=1e-6)
            assert _close_or_both_none(gs.stationarity, g1.stationarity, rel=1e-4)
            for ts, t1 in zip(gs.tensors, g1.tensors):
                assert ts.shape == t1.shape and ts.numel == t1.numel
    assert any(g.boundary_fraction for g in fsdp_results[0]["diagnostics"][1])  # the box binds somewhere: a real check


def test_fsdp2_state_dict_round_trip_with_distributed_checkpoint(fsdp_results):
    for out in fsdp_results:
        for continued, reloaded in out["dcp"]:
            assert torch.equal(continued, reloaded)


# ----------------------------------------------------------------------------------------------
# DistributedLion
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vote_results(tmp_path_factory):
    return run_scenario("vote", tmp_path_factory.mktemp("vote"))


def test_vote_equals_hand_computation_ties_and_zeros_give_zero(vote_results):
    # rank 0 grads [1,-1, 1,0,0,-1,2,-3,1], rank 1 [1,1,-1,0,1,-1,5,-1,4]; zero momentum: votes are their signs
    # sums [2,0,0,0,1,-2,2,-2,2]: entries 1, 2 tie (0), entry 3 is 0 on both, entry 4 is 0 on one rank
    expected = {"majority": [1, 0, 0, 0, 1, -1, 1, -1, 1], "mean": [1, 0, 0, 0, 0.5, -1, 1, -1, 1]}
    for out in vote_results:
        for mode, agg in expected.items():
            after_first, after_second, first_bytes, second_bytes, calls = out[mode]
            assert torch.equal(after_first, -0.5 * torch.tensor(agg))  # lr 0.5, no decay
            assert torch.equal(after_second, after_first - 0.5)  # every vote +1
            # flags (6 x int64) + sign mask, plus the nonzero mask only on the step that had zeros
            assert first_bytes == 48 + 2 + 2 and second_bytes == 48 + 2 and calls == 4


def test_nonfinite_propagate_raises_everywhere_and_skip_votes_zero(vote_results):
    for rank, out in enumerate(vote_results):
        error, p, m = out["nonfinite propagate"]
        assert "non-finite" in error and torch.equal(p, torch.zeros(3)) and torch.equal(m, torch.zeros(3))
        error, p, m = out["nonfinite skip"]
        # votes: rank 0 [0, 1, -1], rank 1 [1, 1, -1]; majority [1, 1, -1]; rank 0 keeps its momentum at the NaN entry
        assert error is None and torch.equal(p, torch.tensor([-0.5, -0.5, 0.5]))
        assert m[0].item() == (0.0 if rank == 0 else torch.tensor(1 - 0.99).item()) and torch.isfinite(m).all()


def test_ranks_stepping_different_parameters_raise(vote_results):
    for out in vote_results:
        assert "the ranks step different parameters (from 3 to 4 elements)" in out["mismatch"]
        error, a, b = out["disjoint"]  # equal sizes, other parameters: caught by the fingerprint of the set
        assert "the ranks step different parameters" in error and torch.equal(a, torch.zeros(4)) and torch.equal(b, torch.zeros(4))


def test_a_rank_without_gradients_takes_part_and_every_rank_raises(vote_results):
    for out in vote_results:
        results, a = out["no gradients"]
        assert results[0] is None and "the ranks step different parameters" in results[1] and results[2] is None
        assert torch.equal(a, torch.full((4,), -1.0))  # steps 0 and 2 applied on both ranks, step 1 on neither


@pytest.mark.parametrize(
    "case", ["train sign majority", "train tanh(a=0.01) mean", "train huber(a=0.05) majority", "train sign majority bf16"]
)
def test_replicas_bitwise_identical_after_many_steps(vote_results, case):
    r0, r1 = (out[case] for out in vote_results)
    assert r0["checksum"] == r1["checksum"]
    for a, b, init in zip(r0["params"], r1["params"], r0["init"]):
        assert torch.equal(a, b) and not torch.equal(a, init)
    assert not all(torch.equal(a, b) for a, b in zip(r0["momenta"], r1["momenta"]))  # each rank kept its own momentum


def test_one_rank_distributed_lion_is_lion(vote_results):
    for out in vote_results:
        for a, b in out["single"]:
            assert torch.equal(a, b)


def test_invalid_arguments_name_the_value(vote_results):
    errors = vote_results[0]["errors"]
    assert len(errors) == 5
    assert "'quadratic'" in errors[0] and "'lp(p=2.0" in errors[1] and "'median'" in errors[2] and "-1" in errors[3]
    assert "not int8" in errors[4]


def test_a_failing_rank_makes_the_others_raise_instead_of_hanging(tmp_path):
    start = time.monotonic()
    results = launch([str(WORKER), "fail", str(tmp_path)], 2, timeout=90)
    assert results[1].returncode != 0 and "rank 1 failed on purpose" in results[1].stderr
    assert results[0].returncode == 0, results[0].stderr[-3000:]
    step, message = torch.load(tmp_path / "fail_0.pt")["error"]
    assert step == 3 and "DistributedLion:" in message and "rank 0 of 2" in message
    assert time.monotonic() - start < 90


def test_distributed_gpt_example_runs_distlion_on_two_ranks(tmp_path):
    argv = [str(EXAMPLE), "--mode", "distlion", "--steps", "3", "--warmup", "1", "--n-layer", "1", "--n-embd", "16"]
    argv += ["--batch-size", "2", "--block-size", "16", "--eval-iters", "1", "--check-every", "1", "--out", str(tmp_path / "s.json")]
    results = launch(argv, 2, timeout=120)
    for rank, r in enumerate(results):
        assert r.returncode == 0, f"rank {rank} failed:\n{r.stderr[-3000:]}"
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["mode"] == "distlion" and summary["ranks"] == 2 and math.isfinite(summary["val_loss"])
    # one flag all-reduce (32 bytes) and one all-gather of >= 1 bit per parameter per step; one replica check per step
    assert summary["bytes_per_step_per_rank"] >= 32 + summary["parameters"] / 8 + 8
