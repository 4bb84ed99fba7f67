"""The `opmon` command line: one subcommand per module of `opmon.commands`.

Subcommands are discovered, so adding a command never means editing this file.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence
from importlib import metadata

from opmon import commands
from opmon.errors import OpmonError
from opmon.supervisor import become_supervised

DISTRIBUTION = "operando-monitor"


def version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """Collect every `register(subparsers)` in `opmon.commands` into one parser."""
    parser = argparse.ArgumentParser(prog="opmon", description="operando-monitor: live SXDM for operando battery experiments")
    parser.add_argument("--version", action="version", version=f"opmon {version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"opmon.commands.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand, turn OpmonError into a one-line message and exit code 2."""
    become_supervised()   # started by `opmon demo`: die with it
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except OpmonError as exc:
        print(f"opmon {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"opmon {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:     # `opmon inspect FILE | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())     # so the interpreter's final flush does not fail again
        return 141


if __name__ == "__main__":
    sys.exit(main())
