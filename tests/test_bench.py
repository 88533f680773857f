"""`lionk bench`: runs end to end on a small set with progress on stderr, measures its own noise, and gives only
the verdicts that noise allows (bad input is in test_cli_errors.py)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from lionk.cli import main
from lionk.cli.bench import (
    ADAMW_NAME,
    DEFAULT_NAME,
    TRITON_NAME,
    Contender,
    _comparisons,
    _contenders,
    format_report,
    gpt_shapes,
    median_interval,
    parse_size,
    verdict,
)

SMALL = ["--size", "200k", "--layers", "1", "--warmup", "0", "--roof-size", "1M"]


def test_gpt_shapes_hit_the_target_in_12_layers_plus_4_tensors():
    shapes = gpt_shapes(50_000_000, layers=8)
    total = sum(math.prod(s) for s in shapes)
    assert len(shapes) == 100
    assert abs(total - 50_000_000) / 50_000_000 < 0.03


def test_parse_size():
    assert parse_size("50M") == 50_000_000 and parse_size("1.5k") == 1500 and parse_size("2000") == 2000 and parse_size("1e6") == 10**6


def test_bench_runs_shows_progress_and_writes_json(tmp_path, capsys):
    out = tmp_path / "new" / "bench.json"
    assert main(["bench", *SMALL, "--rounds", "2", "--max-rounds", "2", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "lionk (default)" in captured.out and "torch AdamW fused" in captured.out and "% roof" in captured.out
    progress = captured.err.strip().splitlines()
    assert progress and all(line.startswith("lionk bench: ") for line in progress)  # nothing from third parties
    assert "setting up lionk (default)" in progress[0]
    report = json.loads(out.read_text())
    names = {r["name"] for r in report["results"]}
    assert {"lionk (default)", "lionk foreach", "lionk for-loop", "torch AdamW fused"} <= names
    ours = next(r for r in report["results"] if r["name"] == "lionk (default)")
    assert ours["error"] is None and len(ours["samples_ms"]) == 2 and ours["gbs"] > 0 and ours["ideal_bytes_per_param"] == 20
    assert report["roof_gbs"] > 0 and report["tensors"] == 16 and report["rounds"] == 2
    assert report["comparisons"][0]["label"] == "lionk default vs torch AdamW(fused=True)"


def test_rounds_stop_between_the_minimum_and_the_maximum(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", *SMALL, "--rounds", "3", "--max-rounds", "5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert 3 <= report["rounds"] <= 5 and len(report["roof_ms"]) == report["rounds"]
    assert report["rounds"] == 5 or all(v["stable"] for v in report["comparisons"])


def test_small_tensors_flag_a_low_bit_storage_that_does_not_apply(tmp_path, capsys):
    """Tensors below lionk's int8 minimum keep float32 momentum: the int8 row says so instead of passing for int8."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--size", "20k", "--small-tensors", "1k", "--rounds", "1", "--max-rounds", "1", "--warmup", "0"]
    assert main([*argv, "--roof-size", "1M", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["tensors"] == 20 and report["params"] == 20_000 and "in 20 tensors" in text
    int8 = next(r for r in report["results"] if r["name"] == "lionk int8 momentum")
    assert "int8 momentum covers only 0% of the parameters" in int8["note"]
    assert int8["ideal_bytes_per_param"] == 20  # measured from its state: float32 momentum
    assert "lionk int8 momentum!" in text and "! lionk int8 momentum: int8 momentum covers only 0%" in text


def test_median_interval_uses_order_statistics():
    values = [float(v) for v in range(1, 16)]  # n = 15: ranks 3 and 13
    assert median_interval(values) == (8.0, 3.0, 13.0)
    assert median_interval([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)  # too few rounds: the whole range


def _paired(ours: float, ratios: list[float]) -> tuple[list[float], list[float]]:
    return [ours] * len(ratios), [ours * r for r in ratios]


@pytest.mark.parametrize(
    "ratios, stable, words",
    [
        ([1.30 + 0.002 * i for i in range(-7, 8)], True, "1.30x faster (95% interval 1.29-1.31x over 15 rounds)"),
        ([0.80 + 0.002 * i for i in range(-7, 8)], True, "1.25x slower"),
        ([1.00 + 0.002 * i for i in range(-7, 8)], True, "no measurable difference (1.00x"),
        ([1.5 + 0.2 * i for i in range(15)], False, "faster by an uncertain factor"),
        ([0.5 + 0.1 * i for i in range(15)], False, "not determined: the ratio's 95% interval"),
    ],
)
def test_verdicts_follow_the_noise(ratios, stable, words):
    v = verdict(*_paired(10.0, ratios), tolerance=0.05)
    assert v["stable"] is stable and words in v["text"], v["text"]
    if not stable:
        assert "x faster" not in v["text"] and "x slower" not in v["text"]  # no factor it cannot support


def test_cuda_contenders_include_the_triton_path_and_the_report_compares_it():
    names = [c.name for c in _contenders(torch.device("cuda"), torch.float32)[0]]  # builds factories only: no GPU needed
    assert TRITON_NAME in names and "lionk foreach" in names
    timed = {TRITON_NAME: 1.0, ADAMW_NAME: 1.5, "lion-pytorch triton": 2.0}
    contenders = [Contender(name, "adamw" if name == ADAMW_NAME else "lion", None, samples_ms=[ms] * 15) for name, ms in timed.items()]
    texts = {v["label"]: v["text"] for v in _comparisons(contenders, 0.05)}
    assert texts[f"{TRITON_NAME} vs torch AdamW(fused=True)"].startswith("1.50x faster")
    assert texts[f"{TRITON_NAME} vs lion-pytorch use_triton=True"].startswith("2.00x faster")


def test_report_marks_noisy_rows_and_a_busy_machine():
    row = {"family": "lion", "first_step_ms": 1.0, "state_bytes": 100, "error": None, "ms_min": 1.0, "gbs": 1.0, "spread_pct": 50.0}
    rows = [
        row | {"name": DEFAULT_NAME, "ms": 1.0, "roof_pct": 90.0, "noisy": True, "note": None},
        row | {"name": ADAMW_NAME, "family": "adamw", "ms": 2.0, "roof_pct": 130.0, "noisy": False, "note": None},
    ]
    report = dict(params=1e6, dtype="float32", tensors=10, device="CPU", roof="in-place a += s*b", roof_gbs=10.0, rounds=30,
                  results=rows, not_installed=[],
                  threads=os.cpu_count(),
                  ideal_bytes_per_param={"lion": 20, "adamw": 28}, tolerance=0.05, other_load=0.4,
                  comparisons=[{"label": "lionk default vs torch AdamW(fused=True)", "text": "not determined: ..."}])  # fmt: skip
    text = format_report(report)
    assert f"{DEFAULT_NAME}*" in text and f"{ADAMW_NAME}*" not in text
    assert "* its median's 95% interval is wider than +-5%" in text
    assert "% roof above 100" in text
    assert "other work took 40% of this machine's CPU time" in text
    assert "lionk default vs torch AdamW(fused=True): not determined" in text
