"""Pause the acquisition when a sample position has taken more dose than the user allows.

The live processor's map messages (display channel, lossy) carry the run's dose map so far
(header ``dose``: grid and ``max`` photons at one position). When ``max`` reaches the limit,
this watcher sends ``pause`` with the reason through the control channel (the token-checked
path the dashboard uses), once per run: the user decides what next (move the region, resume,
abort). A missed map message only delays the check to the next partial map, a fraction of a
second later.
"""
from __future__ import annotations

import logging
from typing import Any

import zmq

from opmon.dashboard.control_client import ControlClient
from opmon.errors import ConfigError, OpmonError
from opmon.streaming.map_messages import TOPIC
from opmon.topic_watch import TopicWatch

log = logging.getLogger(__name__)


def limit_reason(limit: float, header: dict[str, Any]) -> str | None:
    """Why the run must pause (the dose of one position reached `limit`), or None."""
    dose = header.get("dose")
    peak = dose.get("max") if isinstance(dose, dict) else None
    if not isinstance(peak, (int, float)) or isinstance(peak, bool) or peak < limit:
        return None
    return (f"dose limit: a sample position took {peak:.3g} photons (limit {limit:.3g}) "
            f"by map {header.get('map')} of run {header.get('run')}")


class DoseWatch(TopicWatch):
    """A SUB socket on the live processor's maps and a daemon thread that pauses at the dose limit.

    Parameters
    ----------
    maps_endpoint : the live processor's display PUB (`display_live`).
    control_endpoint, token : the acquisition's control channel and its steering token.
    limit : photons at one sample position (> 0).
    """

    topic = TOPIC
    thread_name = "opmon-dose-watch"

    def __init__(self, maps_endpoint: str, control_endpoint: str, token: str, limit: float,
                 context: zmq.Context | None = None) -> None:
        if not limit > 0:
            raise ConfigError(f"dose limit {limit!r}: must be a positive number of photons")
        super().__init__(maps_endpoint, context)
        self.limit, self.token = float(limit), token
        self.control = ControlClient(control_endpoint, context=self._ctx)
        self.paused_runs: set[str] = set()
        self.reasons: list[str] = []

    def on_header(self, header: Any) -> None:
        self.on_map(header)

    def on_map(self, header: Any) -> None:
        """Act on one map header: pause once per run whose dose reached the limit."""
        if not isinstance(header, dict) or header.get("run") in self.paused_runs:
            return
        reason = limit_reason(self.limit, header)
        if reason is None:
            return
        self.paused_runs.add(str(header.get("run")))
        try:
            reply = self.control.request("pause", self.token, reason=reason)
        except OpmonError as exc:
            log.error("%s; pause not sent: %s", reason, exc)
            return
        if reply.get("ok"):
            self.reasons.append(reason)
            log.error("acquisition paused: %s. Move the map region or resume from the dashboard.", reason)
        else:
            log.error("%s; pause refused: %s", reason, reply.get("error"))

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        self.control.close()
