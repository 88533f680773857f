"""`lionk bench`: runs end to end on a small set, reports every contender, and rejects bad input in one line."""

from __future__ import annotations

import json
import math

import pytest

from lionk.cli import main
from lionk.cli.bench import gpt_shapes, parse_size


def test_gpt_shapes_hit_the_target_in_12_layers_plus_4_tensors():
    shapes = gpt_shapes(50_000_000, layers=8)
    total = sum(math.prod(s) for s in shapes)
    assert len(shapes) == 100
    assert abs(total - 50_000_000) / 50_000_000 < 0.03


def test_parse_size():
    assert parse_size("50M") == 50_000_000 and parse_size("1.5k") == 1500 and parse_size("2000") == 2000


def test_bench_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "--size", "200k", "--layers", "1", "--rounds", "2", "--warmup", "0", "--roof-size", "1M", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "lionk (default)" in text and "torch AdamW fused" in text and "% roof" in text
    report = json.loads(out.read_text())
    names = {r["name"] for r in report["results"]}
    assert {"lionk (default)", "lionk foreach", "lionk for-loop", "torch AdamW fused"} <= names
    ours = next(r for r in report["results"] if r["name"] == "lionk (default)")
    assert ours["error"] is None and len(ours["samples_ms"]) == 2 and ours["gbs"] > 0
    assert report["roof_gbs"] > 0 and report["tensors"] == 16


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--size", "abc"], "invalid size 'abc'"),
        (["bench", "--size", "10"], "at least 1k"),
        (["bench", "--rounds", "0"], "--rounds must be >= 1"),
        (["bench", "--layers", "0"], "--layers must be >= 1"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_small_tensors_option_splits_the_size_into_equal_tensors(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--size", "20k", "--small-tensors", "4k", "--rounds", "1", "--warmup", "0", "--roof-size", "1M", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["tensors"] == 5 and report["params"] == 20_000
    assert "in 5 tensors" in capsys.readouterr().out


def test_cuda_contenders_include_the_triton_path_and_the_report_compares_it():
    import torch

    from lionk.cli.bench import TRITON_NAME, _contenders, format_report

    names = [c.name for c in _contenders(torch.device("cuda"), torch.float32)[0]]  # builds factories only: no GPU needed
    assert TRITON_NAME in names and "lionk foreach" in names
    rows = [
        {"name": TRITON_NAME, "family": "lion", "ms": 1.0, "ms_min": 1.0, "gbs": 1.0, "roof_pct": 90.0, "first_step_ms": 1.0},
        {"name": "torch AdamW fused", "family": "adamw", "ms": 1.5, "ms_min": 1.5, "gbs": 1.0, "roof_pct": 80.0, "first_step_ms": 1.0},
        {"name": "lion-pytorch triton", "family": "lion", "ms": 2.0, "ms_min": 2.0, "gbs": 1.0, "roof_pct": 45.0, "first_step_ms": 1.0},
    ]
    report = dict(params=1e8, dtype="float32", tensors=100, device="GPU", roof_gbs=3000.0, rounds=3, results=rows, not_installed=[],
                  ideal_bytes_per_param={"lion": 20, "adamw": 28})  # fmt: skip
    text = format_report(report)
    assert f"{TRITON_NAME} vs torch AdamW(fused=True): 1.50x faster" in text
    assert f"{TRITON_NAME} vs lion-pytorch use_triton=True: 2.00x faster" in text
