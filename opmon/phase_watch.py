"""Phase tracking's watcher: ask the plan for a survey when the imaged reflection fades.

The live processor's final map messages (display channel) carry each map's intensity. This
watcher, on the acquisition's side of the wiring, feeds them to `processors.phase.FadingRule`;
once the reflection has faded it picks the brightest points of the brightest map seen (where
the crystal is thick, so the next phase's reflection is strong there too) and asks the plan
for a survey through its phase-tracking mailbox (`acquisition.survey.PhaseRequests`). The plan
records the survey, what it found and the re-centring in the run's `steering` stream.
"""
from __future__ import annotations

import logging
from typing import Any

import zmq

from opmon.acquisition.survey import PhaseRequests
from opmon.processors.phase import FadingRule, bright_points
from opmon.streaming.map_messages import TOPIC, decode_map
from opmon.topic_watch import TopicWatch

log = logging.getLogger(__name__)


class PhaseWatch(TopicWatch):
    """A SUB socket on the live maps; a survey request each time the imaged reflection fades.

    Parameters
    ----------
    endpoint
        the live processor's display PUB (`display_live`).
    requests
        the plan's phase-tracking mailbox.
    rule
        when a reflection counts as faded (fraction of its maximum, for how many maps).
    points
        how many bright map points the survey visits.
    """

    topic = TOPIC
    thread_name = "opmon-phase-watch"

    def __init__(self, endpoint: str, requests: PhaseRequests, rule: FadingRule | None = None, points: int = 4,
                 context: zmq.Context | None = None) -> None:
        super().__init__(endpoint, context)
        self.requests, self.rule, self.points = requests, rule or FadingRule(), int(points)
        self.seen: set[tuple[str, int]] = set()
        self.surveys_asked = 0
        self._run: str | None = None

    def on_message(self, header: Any, buffers: list[bytes]) -> None:
        if not isinstance(header, dict) or not header.get("final"):
            return
        run, number = str(header.get("run")), int(header.get("map", -1))
        if (run, number) in self.seen:            # a final map re-sent (after a restart) counts once
            return
        try:
            intensity = decode_map(header, buffers)["intensity"]
        except Exception as exc:                  # a garbled map is skipped, never fatal
            log.warning("phase watch: map %d of run %s unreadable: %s", number, run, exc)
            return
        self.seen.add((run, number))
        if run != self._run:                      # a new run: its reflection has its own maximum
            self._run = run
            self.rule.reset()
        self.on_map(number, intensity)

    def on_map(self, number: int, intensity: Any) -> None:
        """Feed one final map's intensity to the rule; ask for a survey when it says faded."""
        reason = self.rule.update(number, intensity)
        if reason is None:
            return
        assert self.rule.brightest is not None
        points = bright_points(self.rule.brightest, self.points)
        self.requests.survey(reason, points)
        self.surveys_asked += 1
        self.rule.reset()
        log.warning("%s: survey asked at map points %s", reason, points)
