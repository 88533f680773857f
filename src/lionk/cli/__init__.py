"""The ``lionk`` command: ``lionk toy | compare | sweep | bench``.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds its parser and
sets ``func`` (called with the parsed arguments, returning an exit code). Modules are imported only
when needed so that a missing optional dependency (matplotlib, tqdm) affects only the commands
that use it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "toy": "lionk.cli.toy",
    "compare": "lionk.cli.compare",
    "sweep": "lionk.cli.sweep",
    "bench": "lionk.cli.bench",
}


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lionk", description="Lion-K optimizers: toy problems, comparisons, sweeps, benchmarks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for module_name in SUBCOMMANDS.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, ImportError, FileNotFoundError) as err:
        print(f"lionk {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lionk {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
