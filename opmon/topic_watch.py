"""A SUB socket on one topic of a display channel, read by a daemon thread: the shared loop of
the acquisition's watchers (`ArchiverWatch`: disk full, `DoseWatch`: the dose limit, `RecentreWatch`:
drift re-centring, which reads the map's arrays too)."""
from __future__ import annotations

import threading
from typing import Any

import zmq

from opmon.streaming.protocol import unpack


class TopicWatch:
    """Subclasses say what to do with each header (`on_header`); garbled messages are skipped."""

    topic: bytes = b""
    thread_name = "opmon-watch"

    def __init__(self, endpoint: str, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)

    def start(self) -> TopicWatch:
        self._thread.start()
        return self

    def on_header(self, header: Any) -> None:
        raise NotImplementedError

    def on_message(self, header: Any, buffers: list[bytes]) -> None:
        """The whole message (header and array buffers); by default only the header is used."""
        self.on_header(header)

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                parts = sock.recv_multipart()
                try:
                    header = unpack(parts[1]) if len(parts) >= 2 and parts[0] == self.topic else None
                except Exception:           # a garbled message is skipped, never fatal
                    continue
                self.on_message(header, parts[2:])
        finally:
            sock.close(0)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
