"""The ``lionk`` command: ``lionk toy | compare | sweep | bench``.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returning an exit code). Modules are imported only
when needed so that a missing optional dependency (matplotlib, tqdm) affects only the commands
that use it.

Every user error ends the command with one line on stderr, ``lionk COMMAND: error: ...``, and exit
status 2: argparse's own errors (an unknown flag, a value that is not a number) included.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = {
    "toy": "lionk.cli.toy",
    "compare": "lionk.cli.compare",
    "sweep": "lionk.cli.sweep",
    "bench": "lionk.cli.bench",
}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), pointing to ``--help``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = OneLineParser(prog="lionk", description="Lion-K optimizers: toy problems, comparisons, sweeps, benchmarks")
    parser.add_argument("--version", action="version", version=f"lionk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version, or a parse error already printed
        return stop.code if isinstance(stop.code, int) else 0
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (lionk ... | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CLIError, ValueError, ImportError, OSError) as err:
        print(f"lionk {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lionk {args.command}: interrupted", file=sys.stderr)
        return 130
