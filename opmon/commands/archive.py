"""`opmon archive`: run the archiver service (frames, readings, documents, final maps -> HDF5)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from opmon.config import Config, load_config
from opmon.ports import BOUND_BY, binding, config_ports
from opmon.supervisor import stop_on_signals

if TYPE_CHECKING:     # imported when the service starts, not for `opmon --help`
    from opmon.streaming.archive.archiver import Archiver

log = logging.getLogger(__name__)


def build_archiver(config: Config, directory: str | Path | None = None) -> Archiver:
    """The archiver wired to the configured endpoints (it writes final maps itself)."""
    from opmon.streaming.archive.archiver import Archiver
    return Archiver(directory or config.archive.dir, config.endpoint("frames_archive"), config.endpoint("docs"),
                    config.endpoint("maps_archive"), config.endpoint("display_archive"),
                    flush_interval_s=config.archive.flush_interval_s, rcvhwm=config.stream.rcvhwm,
                    ack_endpoint=config.endpoint("frames_archive_ack"))


def serve(config: Config, directory: str | Path | None = None) -> int:
    """Run until SIGTERM/SIGINT/SIGHUP, then flush and close every file; returns 128 + that signal.

    Its ports are checked first: a taken one is one line naming it and its holder (exit 2).
    """
    with binding(config.host, config_ports(config, BOUND_BY["archive"])):
        archiver = build_archiver(config, directory)
    exit_status = stop_on_signals(archiver)
    archiver.run()
    log.info("archiver stopped; every file flushed and closed")
    return exit_status()


def _main(args: argparse.Namespace) -> int:
    return serve(load_config(args.config), args.dir)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("archive", help="archive live runs (frames, potentiostat log, documents, maps)",
                              description=__doc__)
    p.add_argument("--config", help="TOML configuration (defaults: opmon/default_config.toml)")
    p.add_argument("--dir", help="archive directory (overrides [archive] dir)")
    p.set_defaults(func=_main)
