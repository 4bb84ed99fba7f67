"""The loop that makes a bluesky beamline a live source: proxy documents in, opmon's stream out.

`opmon live --source bluesky:tcp://HOST:PORT` runs one `BlueskyBridge` beside the live
processor: a `DocumentSubscriber` on the beamline's 0MQ proxy feeds a `BlueskyFollower`, which
sends each run through a `ZmqFrameSink` bound where the acquisition's would be (`frames_live`,
and with the archiver `frames_archive` + acknowledgements), so the live processor and the
archiver take the run as if opmon's own acquisition had sent it. Documents can be passed on as
they are (to the archiver's `docs` channel through `DocumentPublisher`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import zmq

from opmon.streaming.bluesky_options import FollowOptions
from opmon.streaming.bluesky_source import BlueskyFollower
from opmon.streaming.bluesky_wire import DocumentSubscriber
from opmon.streaming.publisher import ZmqFrameSink

log = logging.getLogger(__name__)

SCHEME = "bluesky:"


def bluesky_address(source: str) -> str:
    """``tcp://HOST:PORT`` of a ``bluesky:tcp://HOST:PORT`` source.

    Raises
    ------
    ValueError
        when `source` does not have that form.
    """
    address = source[len(SCHEME):] if source.startswith(SCHEME) else ""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    if not address.startswith("tcp://") or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--source {source!r}: expected bluesky:tcp://HOST:PORT (the 0MQ proxy's outbound port)")
    return address


class BlueskyBridge:
    """Documents from `address` -> follower -> `sink`, until `serve`'s `stop_when` says so.

    Parameters
    ----------
    address
        the bluesky 0MQ proxy's outbound address.
    sink
        where the runs go (closed by `serve` when it ends).
    on_document
        called with every valid document before it is followed (e.g. a `DocumentPublisher`).
    """

    def __init__(self, address: str, sink: ZmqFrameSink, options: FollowOptions | None = None, *,
                 prefix: bytes = b"", on_document: Callable[[str, dict[str, Any]], None] | None = None,
                 context: zmq.Context | None = None) -> None:
        self.subscriber = DocumentSubscriber(address, prefix=prefix, context=context)
        self.follower = BlueskyFollower(sink, options, source=f"{SCHEME}{address}")
        self.sink = sink
        self.on_document = on_document

    def serve(self, stop_when: Callable[[], bool]) -> None:
        """Follow documents until `stop_when()`; then end an open run as aborted and close the sink."""
        try:
            while not stop_when():
                received = self.subscriber.receive(100)
                if received is None:
                    continue
                name, doc = received
                if self.on_document is not None:
                    self.on_document(name, doc)
                self.follower(name, doc)
        finally:
            try:
                self.follower.close()
            finally:
                self.subscriber.close()
                self.sink.close()

    def status(self) -> dict[str, Any]:
        """Counters for the user: documents received and rejected, runs followed or failed, frames sent."""
        return {"documents": self.subscriber.received, "rejected": dict(self.subscriber.rejected),
                "ignored": dict(self.follower.ignored), "runs": len(self.follower.finished),
                "failed": dict(self.follower.failed), "frames": self.follower.frames_sent}
