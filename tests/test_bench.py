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
