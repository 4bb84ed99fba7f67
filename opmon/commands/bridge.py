"""`opmon bridge`: a detector's own stream as an opmon frame source (DECTRIS stream V2).

It takes the acquisition's place on the frame endpoints (frames_archive with its
acknowledgements, frames_live), so `opmon archive` and `opmon live` run unchanged.
`opmon live --source dectris:tcp://HOST:31001` starts it for you.
"""
from __future__ import annotations

import argparse
import json
import logging

from opmon.config import Config, load_config
from opmon.errors import ConfigError
from opmon.ports import binding, config_ports
from opmon.supervisor import stop_on_signals

log = logging.getLogger(__name__)
#: The frame ports a bridge binds (the acquisition's, which a beamline with its own detector does not run).
BRIDGE_PORTS = ("frames_archive", "frames_live", "frames_archive_ack")


def serve(config: Config, source: str, channel: str | None = None, archive_chunks: bool = True) -> int:
    """Bridge `source` until SIGTERM/SIGINT/SIGHUP; print the loss summary as the last line."""
    from opmon.streaming.dectris.bridge import DetectorReceiver, StreamV2Bridge, detector_endpoint
    from opmon.streaming.publisher import ZmqFrameSink
    try:
        endpoint = detector_endpoint(source)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    with binding(config.host, config_ports(config, BRIDGE_PORTS)):
        sink = ZmqFrameSink([config.endpoint("frames_archive"), config.endpoint("frames_live")],
                            sndhwm=config.stream.sndhwm, stall_timeout_s=config.stream.stall_timeout_s,
                            ack_endpoint=config.endpoint("frames_archive_ack"),
                            spool_bytes=config.stream.archive_spool_bytes,
                            archive_chunk_only=archive_chunks)   # the archiver gets the detector's chunk alone
    bridge = StreamV2Bridge(sink, channel=channel, archive_chunks=archive_chunks)
    receiver = DetectorReceiver(endpoint, bridge, rcvhwm=config.stream.rcvhwm)
    exit_status = stop_on_signals(receiver)
    log.info("bridging DECTRIS stream V2 from %s to %s", endpoint, ", ".join(sink.endpoints))
    try:
        receiver.run()
    finally:
        receiver.close()
        print("dectris bridge: " + json.dumps(bridge.summary()), flush=True)
        sink.close()       # waits (stall_timeout_s at most) until the archiver acknowledged every frame
    return exit_status()


def _main(args: argparse.Namespace) -> int:
    return serve(load_config(args.config), args.source, args.channel, not args.recompress)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bridge", help="a DECTRIS detector's stream V2 as the frame source", description=__doc__)
    p.add_argument("--source", required=True, metavar="dectris:tcp://HOST:PORT",
                   help="the detector's stream V2 endpoint (a DECTRIS DCU serves it on port 31001)")
    p.add_argument("--channel", help="threshold channel to monitor (default: the first of each series)")
    p.add_argument("--config", help="TOML configuration (defaults: opmon/default_config.toml)")
    p.add_argument("--recompress", action="store_true",
                   help="send the archiver raw frames, not the detector's bslz4 chunks (it compresses again)")
    p.set_defaults(func=_main)
