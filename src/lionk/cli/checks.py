"""Checks of what a user passes on the command line, run before any long work starts.

Numbers: :func:`number` and :func:`integer` raise :class:`~lionk.cli.CLIError` naming the flag, the bad
value and the valid range. Output locations: :func:`output_dir` (``--out DIR``) and :func:`output_file`
(``--json PATH``) create the directory when it is missing and prove that the files can be written there,
so that a path under a file, a read-only directory or a directory where a file should go fails at once
instead of after the whole run.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from . import CLIError

__all__ = ["number", "integer", "output_dir", "output_file"]


def _range_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def number(
    name: str,
    value: float | str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    where: str = "",
) -> float:
    """``value`` as a float if it is a finite number within [low, high] (``low_open``/``high_open``: that end
    excluded); else CLIError ``invalid NAME VALUE{where}: must be ...`` (``where``, e.g. " in --optim entry 'x'")."""
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    ok = math.isfinite(x)
    if ok and low is not None:
        ok = x > low if low_open else x >= low
    if ok and high is not None:
        ok = x < high if high_open else x <= high
    if not ok:
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        raise CLIError(f"invalid {name} {shown}{where}: must be {_range_text(low, high, low_open, high_open)}")
    return x


def integer(flag: str, value: int, minimum: int, maximum: int | None = None) -> int:
    """``value`` if ``minimum <= value <= maximum``; else CLIError."""
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise CLIError(f"invalid {flag} {value}: must be an integer {bound}")
    return value


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


def _check_writable(directory: Path, flag: str, path: str) -> None:
    """Create and remove a temporary file in ``directory`` (permission bits do not tell root, nor read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot write into {directory} ({_reason(err)})") from None


def _check_target(target: Path, flag: str, path: str) -> None:
    if target.is_dir():
        raise CLIError(f"{flag} {path}: {target} is a directory, so the file {target.name} cannot be written there")
    if target.exists() and not os.access(target, os.W_OK):
        raise CLIError(f"{flag} {path}: {target} exists and is not writable")


def _make_dir(directory: Path, flag: str, path: str) -> None:
    if directory.exists() and not directory.is_dir():
        raise CLIError(f"{flag} {path}: {directory} exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CLIError(f"{flag} {path}: cannot create the directory {directory} ({_reason(err)})") from None


def output_dir(path: str, files: Iterable[str], flag: str = "--out") -> Path:
    """The directory ``path`` (created if missing), once ``files`` are known to be writable in it."""
    out = Path(path)
    _make_dir(out, flag, path)
    _check_writable(out, flag, path)
    for name in files:
        _check_target(out / name, flag, path)
    return out


def output_file(path: str, flag: str) -> Path:
    """The file ``path`` (its directory created if missing), once it is known to be writable."""
    target = Path(path)
    if target.is_dir():
        raise CLIError(f"{flag} {path}: is a directory (give a file name, e.g. {Path(path) / 'bench.json'})")
    _make_dir(target.parent, flag, path)
    _check_writable(target.parent, flag, path)
    _check_target(target, flag, path)
    return target
