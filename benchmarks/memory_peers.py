"""Training memory and loss of the peers' memory-saving optimizers, on the task of ``lionk compare``.

Trains the character GPT of ``lionk compare`` (same defaults, initial weights, batches, schedule and evaluation) with
each peer that installs and runs here, and measures its memory as ``lionk compare`` does (lionk.memory: weights,
gradients and state in bytes per parameter at their peak, and their largest sum at one moment). Lion peers take the
Lion settings of ``lionk compare`` (from_adamw), AdamW peers its AdamW settings. Under gradient release no peer
clips (none offers a per-tensor clip; global clipping needs the whole gradient).

    python benchmarks/memory_peers.py --data tinyshakespeare.txt --steps 2000 --threads 1 --out results/memory_peers

Peers: torch-optimi's Lion (bfloat16 weights with its Kahan-summation buffer, and float32; both with its gradient
release), flashoptim's FlashLion (on CPU only as plain float32 Lion: its quantised state and compressed weights
need CUDA; with its gradient release) and torchao's AdamW8bit (torchao has no Lion; bfloat16 weights with its
stochastic rounding). A peer that is not installed is reported and skipped.
"""

from __future__ import annotations

import argparse
import importlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lionk.cli.data import load_corpus
from lionk.cli.machine import machine
from lionk.cli.training import OptimSpec, Settings, initial_state, param_groups, train


def _optimi_lion(kahan: bool) -> Callable[[torch.nn.Module, dict[str, Any]], torch.optim.Optimizer]:
    def make(model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
        optimi = importlib.import_module("optimi")
        opt = optimi.Lion(
            param_groups(model, hp["weight_decay"]), lr=hp["lr"], betas=tuple(hp["betas"]), kahan_sum=kahan, gradient_release=True
        )
        optimi.prepare_for_gradient_release(model, opt, ignore_existing_hooks=True)  # the memory tracker's hooks
        return opt

    return make


def _flash_lion(model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
    flashoptim = importlib.import_module("flashoptim")
    groups = param_groups(model, hp["weight_decay"])
    opt = flashoptim.FlashLion(groups, lr=hp["lr"], betas=tuple(hp["betas"]), quantize=False, master_weight_bits=None, fused=False)
    flashoptim.enable_gradient_release(model, opt)
    return opt


def _torchao_adamw8bit(model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
    optim = importlib.import_module("torchao.optim")
    return optim.AdamW8bit(param_groups(model, hp["weight_decay"]), lr=hp["lr"], betas=tuple(hp["betas"]), bf16_stochastic_round=True)


#: label: (module, lionk compare entry whose settings it takes, factory)
PEERS = {
    "optimi Lion bf16 weights+Kahan, release": ("optimi", "lion:weights=bfloat16:release=1", _optimi_lion(True)),
    "optimi Lion fp32, release": ("optimi", "lion:release=1", _optimi_lion(False)),
    "flashoptim FlashLion fp32 (CPU), release": ("flashoptim", "lion:release=1", _flash_lion),
    "torchao AdamW8bit bf16 weights (SR)": ("torchao", "adamw:weights=bfloat16", _torchao_adamw8bit),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="the text to train on (e.g. tiny shakespeare)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-iters", type=int, default=20)
    parser.add_argument("--eval-interval", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/memory_peers")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(steps=args.steps, eval_iters=args.eval_iters, eval_interval=args.eval_interval)
    corpus = load_corpus(args.data)
    init = initial_state(settings, corpus.vocab_size)
    runs, skipped = [], {}
    for label, (module, entry, make) in PEERS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importlib.import_module(module)
        except ImportError as err:
            skipped[label] = f"{module} not installed ({err})"
            continue
        name, *pairs = entry.split(":")
        spec = OptimSpec(label, name, dict(pair.split("=") for pair in pairs))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the peers' one-time notes (step() is a no-op under gradient release, ...)
            result = train(spec, corpus, settings, init, make=make, log=print)
        m = result.memory
        print(
            f"{label}: val {result.final_val:.4f}; bytes/param weights {m['weights']:.2f} gradients {m['gradients']:.2f} "
            f"state {m['state']:.2f} together {m['together']:.2f}; peak RSS {result.peak_rss_mb:.0f} MB"
        )
        runs.append(result.to_json())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_json = settings.__dict__ | {"betas": list(settings.betas)}
    report = {"settings": settings_json, "machine": machine(), "runs": runs, "skipped": skipped}
    (out / "memory_peers.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'memory_peers.json'}")


if __name__ == "__main__":
    main()
