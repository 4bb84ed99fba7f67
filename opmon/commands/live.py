"""`opmon live`: run the live processor (frames -> partial and final maps, --workers N).

By default it takes opmon's own frame stream. `--source bluesky:tcp://HOST:PORT` follows a
bluesky beamline instead: another process's RunEngine publishing its documents through
bluesky's 0MQ proxy (msgpack or JSON, never pickle), its detector writing HDF5 that opmon reads
as it grows; map shape from the grid scan's start document, geometry the documents lack from
--geometry FILE.toml, angles from the data keys eta/phi/nu/delta (or --angle NAME=KEY|DEGREES).
`--source dectris:tcp://HOST:31001` also starts `opmon bridge` (a child process that dies with
this one), which takes a DECTRIS detector's stream V2 and sends it on as opmon's frame stream.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from opmon.config import Config, load_config
from opmon.errors import ConfigError
from opmon.ports import BOUND_BY, binding, config_ports
from opmon.processing_options import parse_background, parse_roi
from opmon.supervisor import SUPERVISOR_ENV, stop_on_signals


def build_processor(config: Config, *, workers: int | None = None, roi: Any = "auto",
                    recover: bool = True) -> Any:
    """The live processor wired to the configured endpoints (recovering from the archive)."""
    from opmon.processors.live import open_live_processor     # numba and friends: not for `opmon --help`
    return open_live_processor(config.endpoint("frames_live"), config.endpoint("display_live"), config.endpoint("maps_archive"),
                         workers=workers or config.live.workers, publish_interval_s=config.live.publish_interval_s,
                         roi=roi, threshold=config.live.threshold, background=parse_background(config.live.background),
                         register=config.live.register, powder_spots=config.live.powder_spots, peak_fit=config.live.peak_fit, archive_dir=config.archive.dir if recover else None, rcvhwm=config.stream.rcvhwm)


def start_bridge(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """`opmon bridge --source ...` as a child that dies with this process (PR_SET_PDEATHSIG)."""
    argv = ["bridge", "--source", args.source] + (["--config", args.config] if args.config else []) \
        + (["--channel", args.channel] if args.channel else [])
    return subprocess.Popen([sys.executable, "-m", "opmon.cli", *argv], stdin=subprocess.DEVNULL,
                            env={**os.environ, SUPERVISOR_ENV: str(os.getpid())}, start_new_session=True)


def _main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.archive_dir:
        config.archive.dir = args.archive_dir
    roi = parse_roi(args.roi)
    if args.source.startswith("bluesky:"):
        from opmon.bluesky_live import serve_with_bluesky_source
        return serve_with_bluesky_source(args, config, roi, build_processor)
    if args.source != "opmon" and not args.source.startswith("dectris:tcp://"):
        raise ConfigError(f"--source {args.source!r}: expected opmon, bluesky:tcp://HOST:PORT (a bluesky 0MQ proxy) "
                          "or dectris:tcp://HOST:PORT (a DECTRIS detector's stream V2)")
    with binding(config.host, config_ports(config, BOUND_BY["live"])):
        processor = build_processor(config, workers=args.workers, roi=roi, recover=not args.no_recover)
    bridge = start_bridge(args) if args.source.startswith("dectris:") else None
    exit_status = stop_on_signals(processor)
    try:
        processor.serve()
    finally:
        if bridge is not None:
            bridge.terminate()     # it closes the open series and prints its loss summary
            try:
                bridge.wait(timeout=config.stream.stall_timeout_s + 5)
            except subprocess.TimeoutExpired:
                bridge.kill()
    return exit_status()   # 128 + the signal that stopped it: the supervisor does not restart it


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("live", help="live processor: maps while the scan runs", description=__doc__)
    p.add_argument("--config", help="TOML configuration (defaults: opmon/default_config.toml)")
    p.add_argument("--workers", type=int, help="worker processes whose sums merge (overrides [live] workers)")
    p.add_argument("--roi", nargs="+", metavar="R", help="'auto' (first frames of each run), 'full' or r0 r1 c0 c1")
    p.add_argument("--archive-dir", help="archive to recover missed frames from after a restart")
    p.add_argument("--no-recover", action="store_true", help="do not read the archive after a restart")
    p.add_argument("--source", default="opmon", metavar="SOURCE",
                   help="'opmon' (opmon's own frame stream, default), bluesky:tcp://HOST:PORT (a bluesky 0MQ "
                        "proxy's outbound port: its RunEngine's documents and detector files) or "
                        "dectris:tcp://HOST:PORT (a DECTRIS detector's stream V2; starts `opmon bridge`)")
    b = p.add_argument_group("bluesky source (--source bluesky:tcp://HOST:PORT)")
    b.add_argument("--geometry", metavar="FILE.toml",
                   help="detector geometry the documents lack (FORMATS.md keys); overrides the start document")
    b.add_argument("--angle", action="append", metavar="NAME=KEY|DEG",
                   help="data key (event, baseline or configuration) or fixed degrees of eta, phi, nu or delta "
                        "(default: the data key of the same name); repeat per angle")
    b.add_argument("--detector", metavar="KEY", help="data key of the frames (default: the only image key)")
    b.add_argument("--map-shape", type=int, nargs=2, metavar=("NY", "NX"),
                   help="map every run as NY x NX (default: a grid scan's 'shape'; other runs are not followed)")
    b.add_argument("--bluesky-prefix", default="", metavar="PREFIX", help="only documents of the Publisher with this prefix")
    b.add_argument("--archive", action="store_true",
                   help="also send frames and documents to `opmon archive` (binds frames_archive, its ack port and docs)")
    d = p.add_argument_group("DECTRIS source (--source dectris:tcp://HOST:PORT)")
    d.add_argument("--channel", help="threshold channel (default: the first of each series)")
    p.set_defaults(func=_main)
