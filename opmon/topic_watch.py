"""A daemon thread that follows one topic of a lossy display channel and hands each header on.

The acquisition's wiring watches what the services downstream say (the archiver's status, the
live processor's final maps) and steers the run through the same object the dashboard uses;
each watcher is this loop plus what it does with one header.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import zmq

from opmon.streaming.protocol import unpack


class TopicWatch:
    """SUB on `endpoint`, topic `topic`; `handle(header)` for every message whose second part
    unpacks (a garbled message is skipped, never fatal). `start()` / `close()`."""

    def __init__(self, endpoint: str, topic: bytes, handle: Callable[[Any], None], name: str,
                 context: zmq.Context | None = None) -> None:
        self.endpoint, self.topic, self.handle = endpoint, topic, handle
        self._ctx = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, self.topic)
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                parts = sock.recv_multipart(copy=False)
                try:
                    header = unpack(parts[1].bytes) if len(parts) >= 2 else None
                except Exception:           # a garbled message is skipped, never fatal
                    continue
                self.handle(header)
        finally:
            sock.close(0)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
