"""benchmarks/p_sweep.py: the p of every compare label, and the plot and table from a compare.json."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "p_sweep.py"


def _module():
    spec = importlib.util.spec_from_file_location("p_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_p_of_labels():
    p_of = _module().p_of
    assert p_of("lion") == (1.0, True)
    assert p_of("lion:kernel=lp(p=1.5,match_sign_rms=True)") == (1.5, True)
    assert p_of("lion:kernel=lp(p=2):lr=1e-3") == (2.0, False)
    assert p_of("lion:kernel=huber(a=1)") is None and p_of("adamw") is None


def _report(runs: list[tuple[str, float, float, int, float]]) -> dict:
    """A compare.json holding runs (label, lr, weight decay, seed, final validation loss)."""
    entries = [
        {"label": label, "seed": seed, "hyperparameters": {"lr": lr, "weight_decay": wd}, "val_loss": [[0, 4.0], [10, loss]]}
        for label, lr, wd, seed, loss in runs
    ]
    return {"corpus": {"source": "text.txt"}, "settings": {"steps": 10, "batch_size": 2}, "runs": entries}


def test_tuned_per_p_is_chosen_by_the_first_seed_and_averaged_over_all():
    module = _module()
    grid = module.collect(
        [
            _report([("lion", 1e-3, 0.3, 1, 2.0), ("lion:lr=2e-3", 2e-3, 0.3, 1, 2.1), ("adamw", 1e-3, 0.1, 1, 1.0)]),
            _report([("lion", 1e-3, 0.3, 1, 2.0), ("lion", 1e-3, 0.3, 2, 2.4), ("lion:lr=2e-3", 2e-3, 0.3, 2, 1.5)]),
        ]
    )
    assert set(grid) == {(1.0, True)}
    assert grid[(1.0, True)][(1e-3, 0.3)] == {1: 2.0, 2: 2.4}  # the run in both files counted once
    # lr 2e-3 is better on seed 2 alone, but the grid's choice is made on seed 1: lr 1e-3, then both seeds of it
    assert module.tuned(grid[(1.0, True)]) == ((1e-3, 0.3), [2.0, 2.4])


def test_plot_and_table_from_compare_jsons(tmp_path):
    pytest.importorskip("matplotlib")
    rescaled = "lion:kernel=lp(p=1.5,match_sign_rms=True)"
    first = _report([("lion", 1e-3, 0.3, 1, 2.0), (rescaled, 1e-3, 0.3, 1, 2.5), ("lion:kernel=lp(p=1.5)", 2e-2, 0.01, 1, 2.6)])
    second = _report([("lion", 1e-3, 0.3, 2, 2.2), ("lion:kernel=lp(p=1.5)", 4e-2, 0.01, 1, 2.7)])
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path, report in zip(paths, (first, second)):
        path.write_text(json.dumps(report))
    out = subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True, check=True).stdout
    rows = [" ".join(line.split()) for line in out.splitlines()]
    assert "True 1.00 0.001 0.3 2.1000 ± 0.1414 (2 seeds) <- best" in rows
    assert "False 1.50 0.02 0.01 2.6000 (1 seed) <- best" in rows and "False 1.50 0.04 0.01 2.7000 (1 seed)" in rows
    assert (tmp_path / "p_sweep.png").stat().st_size > 1000 and (tmp_path / "a.json").with_name("p_sweep.png").exists()
