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


def test_plot_and_table_from_a_compare_json(tmp_path):
    pytest.importorskip("matplotlib")
    runs = [
        {"label": label, "hyperparameters": {"lr": 1e-3}, "val_loss": [[0, 4.0], [10, loss]]}
        for label, loss in [("lion", 2.0), ("lion", 2.2), ("lion:kernel=lp(p=1.5,match_sign_rms=True)", 2.5), ("adamw", 1.0)]
    ]
    report = {"corpus": {"source": "text.txt"}, "settings": {"steps": 10, "batch_size": 2}, "runs": runs}
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(report))
    out = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True, check=True).stdout
    assert "1.00       2.1000 ± 0.1414 (2 seeds)" in out and "1.50       2.5000 (1 seed)" in out
    assert (tmp_path / "p_sweep.png").stat().st_size > 1000
