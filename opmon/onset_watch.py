"""Map now when the live processor flags the onset of a transformation (`opmon demo --on-onset map-now`).

The live processor compares each final map with the ones before (`opmon.processors.onset`) and
puts a flagged onset in the final map's message on the display channel. This watcher, on the
acquisition's side of the wiring, reads only the headers of final maps there and asks the plan
for a map at once through the same steering object the dashboard uses, so the plan records the
decision and its reason in the run's `steering` stream. A cooldown keeps one onset (or a flapping
detector) from filling the run with maps.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from opmon.errors import OpmonError
from opmon.streaming.map_messages import TOPIC
from opmon.topic_watch import TopicWatch

log = logging.getLogger(__name__)

ACTIONS = ("none", "map-now")


class OnsetWatch(TopicWatch):
    """A SUB socket on the live maps and a daemon thread that asks for a map on a flagged onset.

    Parameters
    ----------
    endpoint
        the live processor's display PUB (`display_live`).
    steering
        anything with ``start_map(reason) -> dict`` acting through the plan (`RunEngineSteering`).
    cooldown_s
        wall seconds after an extra map during which further onsets only log.
    """

    topic = TOPIC
    thread_name = "opmon-onset-watch"

    def __init__(self, endpoint: str, steering: Any, cooldown_s: float = 60.0,
                 context: zmq.Context | None = None) -> None:
        super().__init__(endpoint, context)
        self.steering, self.cooldown_s = steering, float(cooldown_s)
        self._last_action = -float("inf")
        self.maps_asked = 0
        self.seen: set[tuple[str, int]] = set()

    def on_header(self, header: Any) -> None:
        self.on_map_header(header)

    def on_map_header(self, header: Any) -> None:
        """Act on one map message header: a final map with an onset asks for one map (cooldown)."""
        if not isinstance(header, dict) or not header.get("final") or not isinstance(header.get("onset"), dict):
            return
        key = (str(header.get("run")), int(header.get("map", -1)))
        if key in self.seen:                    # a final map re-sent (after a restart) is one onset
            return
        self.seen.add(key)
        reason = f"onset flagged on map {key[1]}: {header['onset'].get('reason', '')}"
        now = time.monotonic()
        if now - self._last_action < self.cooldown_s:
            log.info("%s (no extra map: within the %.0f s cooldown)", reason, self.cooldown_s)
            return
        try:
            self.steering.start_map(reason)
        except OpmonError as exc:             # the plan takes no requests now (between runs)
            log.error("%s; no extra map: %s", reason, exc)
            return
        self._last_action = now
        self.maps_asked += 1
        log.warning("%s: a map was asked for now", reason)
