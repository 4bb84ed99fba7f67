"""`opmon live --source bluesky:tcp://HOST:PORT`: the live processor fed by a bluesky beamline.

The bridge (`opmon.streaming.bluesky_bridge`) takes the acquisition's place: it binds the
`frames_live` port (with ``--archive`` also `frames_archive` + `frames_archive_ack` and `docs`,
so a running `opmon archive` keeps the frames and the documents), and the live processor
connects to it as it always does. Bridge and processor share this process; when either ends,
both do.
"""
from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Callable
from typing import Any

from opmon.config import Config
from opmon.errors import ConfigError, OpmonError
from opmon.ports import BOUND_BY, binding, config_ports
from opmon.supervisor import stop_on_signals

log = logging.getLogger(__name__)

ARCHIVE_PORTS = ("frames_archive", "frames_archive_ack", "docs")


def follow_options(args: argparse.Namespace) -> Any:
    """The `FollowOptions` of the command line, every value checked before anything connects."""
    from opmon.streaming.bluesky_options import FollowOptions, parse_angle_options
    from opmon.streaming.geometry_file import load_geometry_file
    geometry = load_geometry_file(args.geometry) if args.geometry else {}
    if args.map_shape is not None and min(args.map_shape) < 1:
        raise ConfigError(f"--map-shape {args.map_shape[0]} {args.map_shape[1]}: both sides must be >= 1")
    return FollowOptions(detector=args.detector, angles=parse_angle_options(args.angle), geometry=geometry,
                         geometry_source=f"--geometry {args.geometry}",
                         map_shape=tuple(args.map_shape) if args.map_shape else None)


def serve_with_bluesky_source(args: argparse.Namespace, config: Config, roi: Any,
                              build_processor: Callable[..., Any]) -> int:
    """Run the bridge and the live processor until a signal (or a failed bridge) stops them."""
    from opmon.streaming.bluesky_bridge import BlueskyBridge, bluesky_address
    from opmon.streaming.documents import DocumentPublisher
    from opmon.streaming.publisher import ZmqFrameSink
    try:
        address = bluesky_address(args.source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    options = follow_options(args)
    names = BOUND_BY["live"] + ("frames_live",) + (ARCHIVE_PORTS if args.archive else ())
    with binding(config.host, config_ports(config, names)):
        if args.archive:
            sink = ZmqFrameSink([config.endpoint("frames_archive"), config.endpoint("frames_live")],
                                sndhwm=config.stream.sndhwm, stall_timeout_s=config.stream.stall_timeout_s,
                                ack_endpoint=config.endpoint("frames_archive_ack"),
                                spool_bytes=config.stream.archive_spool_bytes)
            documents = DocumentPublisher(config.endpoint("docs"), None, stall_timeout_s=config.stream.stall_timeout_s)
        else:
            sink = ZmqFrameSink([config.endpoint("frames_live")], sndhwm=config.stream.sndhwm,
                                stall_timeout_s=config.stream.stall_timeout_s)
            documents = None
        processor = build_processor(config, workers=args.workers, roi=roi, recover=not args.no_recover)
    bridge = BlueskyBridge(address, sink, options, prefix=args.bluesky_prefix.encode(), on_document=documents)
    failure: list[BaseException] = []

    def follow() -> None:
        try:
            bridge.serve(lambda: processor.stopped)
        except BaseException as exc:   # the bridge is this service's input: without it, stop
            failure.append(exc)
            log.error("bluesky source stopped: %s", exc)
            processor.stopped = True

    exit_status = stop_on_signals(processor)
    thread = threading.Thread(target=follow, name="bluesky-bridge", daemon=True)
    thread.start()
    log.info("following bluesky documents from %s into %s", address, config.endpoint("frames_live"))
    try:
        processor.serve()
    finally:
        processor.stopped = True
        thread.join(config.stream.stall_timeout_s + 5)
        if documents is not None:
            documents.close()
    if failure:
        exc = failure[0]
        raise exc if isinstance(exc, OpmonError) else OpmonError(f"bluesky source stopped: {exc!r:.200}")
    return exit_status()
