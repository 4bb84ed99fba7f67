"""Pause the acquisition when the archiver cannot write (disk full).

Frames the archiver cannot store must not be taken: when its status (docs/protocol.md,
`display_archive`, lossy) says ``state: disk_full``, this watcher asks the RunEngine for a
deferred pause through the same steering object the dashboard uses, and logs why and what to
do. It never resumes by itself: a person frees the space and resumes from the dashboard.
"""
from __future__ import annotations

import logging
from typing import Any

import zmq

from opmon.errors import OpmonError
from opmon.topic_watch import TopicWatch

log = logging.getLogger(__name__)


class ArchiverWatch(TopicWatch):
    """A SUB socket on the archiver's status and a daemon thread that pauses on disk full.

    Parameters
    ----------
    endpoint
        the archiver's status PUB (the `display_archive` endpoint).
    steering
        anything with ``pause() -> dict`` acting through the RunEngine (`RunEngineSteering`).
    """

    topic = b"status"
    thread_name = "opmon-archiver-watch"

    def __init__(self, endpoint: str, steering: Any, context: zmq.Context | None = None) -> None:
        super().__init__(endpoint, context)
        self.steering = steering
        self.reason: str | None = None      # the archiver's error while it reports disk full
        self.pauses = 0

    def on_header(self, header: Any) -> None:
        self.on_status(header)

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
