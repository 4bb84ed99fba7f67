"""Pause the acquisition when the archiver cannot write (disk full).

Frames the archiver cannot store must not be taken: when its status (docs/protocol.md,
`display_archive`, lossy) says ``state: disk_full``, this watcher asks the RunEngine for a
deferred pause through the same steering object the dashboard uses, and logs why and what to
do. It never resumes by itself: a person frees the space and resumes from the dashboard.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

import zmq

from opmon.errors import OpmonError
from opmon.streaming.protocol import unpack

log = logging.getLogger(__name__)


class ArchiverWatch:
    """A SUB socket on the archiver's status and a daemon thread that pauses on disk full.

    Parameters
    ----------
    endpoint
        the archiver's status PUB (the `display_archive` endpoint).
    steering
        anything with ``pause() -> dict`` acting through the RunEngine (`RunEngineSteering`).
    """

    def __init__(self, endpoint: str, steering: Any, context: zmq.Context | None = None) -> None:
        self.endpoint, self.steering = endpoint, steering
        self._ctx = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opmon-archiver-watch", daemon=True)
        self.reason: str | None = None      # the archiver's error while it reports disk full
        self.pauses = 0

    def start(self) -> ArchiverWatch:
        self._thread.start()
        return self

    def on_status(self, status: Any) -> None:
        """Act on one archiver status message: pause once per disk-full episode."""
        if not isinstance(status, dict) or status.get("source") != "archiver":
            return
        if status.get("state") != "disk_full":
            if self.reason is not None:
                log.warning("archiver can write again; resume the acquisition from the dashboard")
            self.reason = None
            return
        if self.reason is not None:
            return
        self.reason = str(status.get("error") or "disk full")
        try:
            self.steering.pause()
        except OpmonError as exc:           # not running (already paused, or between runs)
            log.error("archiver reports %s; no pause requested: %s", self.reason, exc)
            return
        self.pauses += 1
        log.error("acquisition paused: archiver reports %s. Free space on the archive disk, then resume "
                  "from the dashboard.", self.reason)

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"status")
        sock.connect(self.endpoint)
        try:
            while not self._stop.is_set():
                if not sock.poll(100):
                    continue
                parts = sock.recv_multipart()
                try:
                    status = unpack(parts[1]) if len(parts) == 2 else None
                except Exception:           # a garbled status is skipped, never fatal
                    continue
                self.on_status(status)
        finally:
            sock.close(0)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
