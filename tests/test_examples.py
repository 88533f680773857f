"""Smoke tests of examples/: each runs a few steps with lionk.Lion (skipped when its library is missing)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

import lionk

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"lionk_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_param_groups_no_decay_on_norms_biases_and_listed_names():
    example = _load("param_groups")
    optimizer = example.main(["--steps", "3"])
    assert isinstance(optimizer, lionk.Lion)
    model_names = {n for n, _ in example.SmallConvNet().named_parameters()}
    no_decay, decay = optimizer.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1.0
    assert len(no_decay["params"]) + len(decay["params"]) == len(model_names)
    # decayed: the conv kernel and the head's weight only (norm scales/shifts, biases and pos_embed are not)
    assert [tuple(p.shape) for p in decay["params"]] == [(8, 3, 3, 3), (4, 8)]
    assert all("exp_avg" in optimizer.state[p] for p in no_decay["params"] + decay["params"])


def test_hf_trainer_example_runs():
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # Trainer needs it
    losses = _load("hf_trainer").main(["--max-steps", "5"])
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_lightning_example_runs():
    pytest.importorskip("lightning")
    loss = _load("lightning_module").main(["--max-steps", "5"])
    assert math.isfinite(loss)
