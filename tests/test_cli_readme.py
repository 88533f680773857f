"""What a newcomer runs first: the README's commands (their lionk part, on a tiny setting), --version, and --help
texts that read as plain text and describe every option."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import lionk
from lionk.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--batch-size", "2", "--block-size", "8", "--n-layer", "1", "--n-head", "2", "--n-embd", "16"]
TINY += ["--eval-iters", "1", "--warmup", "1", "--threads", "1"]
#: reStructuredText and LaTeX that --help must not show raw
MARKUP = re.compile(r":math:|:func:|:class:|:data:|:mod:|\.\. math::|``|\\frac|\\tfrac|\\mathcal|\\lambda|\\le\b")


def readme_commands() -> list[str]:
    """The lines of the ```bash blocks under '## The two commands' (as .ci/run reads them)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines() if line.strip()]


def lionk_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """python -m lionk ARGS with this checkout's source first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lionk", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_readme_gives_the_cpu_route_first_then_the_two_commands():
    commands = readme_commands()
    assert commands[0] == "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    assert commands[1] == 'pip install -e ".[cli]" && lionk compare'
    assert commands[2] == 'pip install -e ".[test]" && python -m pytest -q'


def test_readme_main_job_runs_on_a_tiny_setting(tmp_path):
    """The lionk part of the README's first command, as written plus tiny-task flags, writes its files in the cwd."""
    lionk_part = readme_commands()[1].split("&&")[1].split()
    assert lionk_part[0] == "lionk"
    proc = lionk_process([*lionk_part[1:], *TINY], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "optimizer" in proc.stdout and "lion" in proc.stdout and "adamw" in proc.stdout
    assert (tmp_path / "compare.png").stat().st_size > 1000 and (tmp_path / "compare.json").is_file()


def test_version_and_module_entry_point(tmp_path):
    proc = lionk_process(["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"lionk {lionk.__version__}"
    assert lionk_process(["--help"], tmp_path).returncode == 0


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", ["toy", "compare", "sweep", "bench"])
def test_help_is_plain_text_and_describes_every_option(command):
    sub = _subparsers()[command]
    text = sub.format_help()
    assert not MARKUP.search(text), MARKUP.search(text)
    undocumented = [a.option_strings for a in sub._actions if a.option_strings and a.help in (None, "")]
    assert undocumented == []


def test_compare_help_lists_every_optim_key():
    text = _subparsers()["compare"].format_help()
    for key in ("kernel", "lr", "wd", "beta1", "beta2", "factor", "cautious", "mode", "schedule", "momentum", "sr", "weights"):
        assert re.search(rf"^\s+{key}\s", text, re.M), key


def test_ci_runs_the_readme_commands_in_a_fresh_environment():
    ci = (REPO / ".ci" / "run").read_text()
    assert '"## The two commands"' in ci and '-m venv "$VENV/venv"' in ci
    assert shlex.split(readme_commands()[2])[-3:] == ["-m", "pytest", "-q"]
