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

from opmon import commands
from opmon.errors import OpmonError
from opmon.supervisor import become_supervised

DISTRIBUTION = "operando-monitor"


def version() -> str:
    """The installed distribution's version (pyproject.toml is the one place it is written)."""
    from importlib import metadata   # here: its import (email parsing...) is start-up every other run would pay

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """`--version`: the distribution's version, looked up only when asked (a metadata scan per run otherwise)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, default: str = argparse.SUPPRESS,
                 help: str = "show program's version number and exit") -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(f"opmon {version()}")   # on stdout, as argparse's own version action
        parser.exit()


def requested_command(argv: Sequence[str] | None) -> str | None:
    """The command `argv` names when it is one of `opmon.commands` (None: none named, or a typo)."""
    args = list(sys.argv[1:] if argv is None else argv)
    name = next((a for a in args if not a.startswith("-")), None)
    names = {info.name for info in pkgutil.iter_modules(commands.__path__)}
    return name if name in names else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Collect every `register(subparsers)` in `opmon.commands` into one parser; `only`: just that
    command's (what running it needs: the other command modules' imports are start-up for nothing)."""
    parser = argparse.ArgumentParser(prog="opmon", description="operando-monitor: live SXDM for operando battery experiments")
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if only is None or info.name == only:
            module = importlib.import_module(f"opmon.commands.{info.name}")
            module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand, turn OpmonError into a one-line message and exit code 2."""
    become_supervised()   # started by `opmon demo`: die with it
    parser = build_parser(requested_command(argv))
    args = parser.parse_args(argv)
    args.whole_process = argv is None   # the program's own command line (not a caller's list): it exits after
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
