"""Phase tracking in the plan: a survey for the next phase's reflection, then re-centring.

The detector sees one phase's reflection at a time (the paper's set-up). When the live maps say
the imaged reflection has faded (`opmon.phase_watch`), the plan is asked for a survey: at a few
bright map points it sets the detector arm (delta) to 2θ of each candidate d (the crystal's other
phases) and rocks eta coarsely around where that reflection should be, reading the counts of
each frame (`FrameTotal`, what a detector's statistics plugin gives) into a `survey` stream.
A locator injected by the wiring (`opmon.processors.phase.locate_reflection`: acquisition may
not import processors) finds the reflection in that table; the plan then re-centres the rocking
scan and delta for the next maps (`mode="auto"`), or records a proposal the user accepts from
the dashboard with one click (`mode="propose"`: the "proposal" decision carries an awaited
`accept_proposal` action, the decisions panel's button; the "re-centre" decision that applies it
`answers` it, as does a newer proposal that replaces it while it is still open). Every step is
a decision with its reason in the run's `steering` stream.
"""
from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
from bluesky.utils import MsgGenerator
from ophyd_async.core import AsyncStatus, StandardReadable, soft_signal_r_and_setter

from opmon.acquisition.decisions import SteeringLog, answers, awaited, record
from opmon.acquisition.detector import SxdmDetector
from opmon.acquisition.mapping import MapGrid
from opmon.acquisition.motion import Diffractometer, PiezoStage
from opmon.errors import ConfigError, ControlCommandError

MODES = ("auto", "propose")
SURVEY_STREAM = "survey"
HC_EV_ANGSTROM = 12398.419843320026  # h c (CODATA 2018), eV Å


def two_theta_deg(d_angstrom: float, energy_ev: float) -> float:
    """Bragg angle 2θ (deg) of spacing d (Å) at a photon energy (eV)."""
    s = HC_EV_ANGSTROM / energy_ev / (2.0 * d_angstrom)
    if not 0.0 < s < 1.0:
        raise ConfigError(f"d = {d_angstrom} Å is not reachable at {energy_ev} eV")
    return math.degrees(2.0 * math.asin(s))


class FrameTotal(StandardReadable):
    """Counts in one frame of the detector at the present positions, unmasked pixels only.

    A survey needs the counts, not the frames: like a detector's statistics plugin, this reads
    out the detector's frame source and keeps only the sum; nothing goes to the map stream.
    """

    def __init__(self, detector: SxdmDetector, name: str = "survey_counts") -> None:
        self._detector = detector
        with self.add_children_as_readables():
            self.total, self._set_total = soft_signal_r_and_setter(float, 0.0, units="counts")
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        recorder = self._detector.recorder
        names = list(recorder.positioners)
        values = await asyncio.gather(*(recorder.positioners[k].get_value() for k in names))
        index = await self._detector.map_index.get_value()
        frame, _ = recorder.source.frame(int(index), {k: float(v) for k, v in zip(names, values)})
        mask = recorder.source.detector_mask()
        counts = np.asarray(frame, dtype=np.float64)
        self._set_total(float(counts[mask == 0].sum() if mask is not None else counts.sum()))


class PhaseRequests:
    """Thread-safe mailbox from the phase watcher and the control channel to the plan."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._survey: tuple[str, list[int]] | None = None
        self._accepted: list[tuple[int, str]] = []
        self.proposals: dict[int, dict[str, Any]] = {}    # open proposals (number -> eta, delta, d)

    def survey(self, reason: str, points: Sequence[int]) -> None:
        """Ask for one survey at these map points (row-major indices) as soon as the plan can."""
        with self._lock:
            self._survey = (reason, [int(p) for p in points])

    def accept(self, proposal: int, reason: str = "accepted in the dashboard") -> dict[str, Any]:
        """Accept an open re-centring proposal; the plan applies it before its next map."""
        with self._lock:
            if int(proposal) not in self.proposals:
                raise ControlCommandError(f"accept_proposal: no open proposal {proposal!r} "
                                          f"(open: {sorted(self.proposals) or 'none'})")
            self._accepted.append((int(proposal), reason))
            return dict(self.proposals[int(proposal)])

    def propose(self, number: int, where: dict[str, Any]) -> list[int]:
        """The plan's side: a re-centring (eta, delta, d) waiting for `accept`. It replaces the
        proposals still open and not yet accepted (the newest survey knows best: the reflection
        kept fading while the user looked away); returns their numbers."""
        with self._lock:
            accepted = {n for n, _ in self._accepted}
            replaced = sorted(n for n in self.proposals if n not in accepted)
            for n in replaced:
                del self.proposals[n]
            self.proposals[int(number)] = dict(where)
            return replaced

    def take_survey(self) -> tuple[str, list[int]] | None:
        with self._lock:
            asked, self._survey = self._survey, None
            return asked

    def take_accepted(self) -> list[tuple[int, dict[str, Any], str]]:
        with self._lock:
            taken = [(n, self.proposals.pop(n), why) for n, why in self._accepted if n in self.proposals]
            self._accepted = []
            return taken


@dataclass
class PhaseTracking:
    """What the plan needs to track the imaged phase.

    candidates_d : d (Å) of the crystal's phases (config); those whose 2θ lies within
        `same_deg` of the present delta are the imaged phase and are not surveyed.
    locate : survey rows (d, delta, eta, total) -> a found reflection (``.d_angstrom``,
        ``.delta``, ``.eta``, ``.as_dict()``) or None.
    eta_span_deg, eta_step_deg : the coarse rocking scan, ± span around the expected eta.
    """

    candidates_d: Sequence[float]
    locate: Callable[[list[dict[str, float]]], Any]
    mode: str = "auto"
    eta_span_deg: float = 0.3
    eta_step_deg: float = 0.05
    same_deg: float = 0.1
    requests: PhaseRequests = field(default_factory=PhaseRequests)
    surveys: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"phase tracking mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not self.candidates_d or any(not float(d) > 0 for d in self.candidates_d):
            raise ConfigError(f"phase tracking candidates_d {list(self.candidates_d)!r}: need positive d values (Å)")
        if not (self.eta_span_deg > 0 and 0 < self.eta_step_deg <= self.eta_span_deg):
            raise ConfigError(f"phase tracking eta span {self.eta_span_deg} / step {self.eta_step_deg}: "
                              "need 0 < step <= span")


def survey(counter: FrameTotal, detector: SxdmDetector, stage: PiezoStage, diffractometer: Diffractometer,
           grid: MapGrid, points: Sequence[int], targets: Sequence[tuple[float, float, float]],
           tracking: PhaseTracking) -> MsgGenerator[list[dict[str, float]]]:
    """Rock eta around each target (d, delta, expected eta) at the map points; Σ counts per step."""
    where = {index: (x, y) for index, x, y in grid.points()}
    rows: list[dict[str, float]] = []
    steps = np.arange(-tracking.eta_span_deg, tracking.eta_span_deg + 1e-9, tracking.eta_step_deg)
    for d, delta, eta0 in targets:
        diffractometer.check(delta=delta, eta=eta0 + steps[0])
        diffractometer.check(eta=eta0 + steps[-1])
        yield from bps.mv(diffractometer.delta, delta)
        for eta in eta0 + steps:
            yield from bps.mv(diffractometer.eta, float(eta))
            total = 0.0
            for p in points:
                x, y = where[p]
                yield from bps.mv(stage.x, x, stage.y, y, detector.map_index, p)
                reading = yield from bps.trigger_and_read([counter, diffractometer], name=SURVEY_STREAM)
                total += float(reading[counter.total.name]["value"])
                yield from bps.checkpoint()
            rows.append({"d": float(d), "delta": float(delta), "eta": float(eta), "total": total})
    return rows


def track_phase(tracking: PhaseTracking, steering: SteeringLog, counter: FrameTotal, detector: SxdmDetector,
                stage: PiezoStage, diffractometer: Diffractometer, grid: MapGrid,
                etas: list[float]) -> MsgGenerator[list[float]]:
    """Between maps: run an asked-for survey, then re-centre (auto) or propose; apply accepted
    proposals. Returns the rocking angles of the next maps (re-centred or as they were)."""
    for number, where, why in tracking.requests.take_accepted():
        etas = yield from _recentre(steering, diffractometer, etas, where, f"proposal {number} {why}", proposal=number,
                                    answers=answers("accept_proposal", proposal=number))
    asked = tracking.requests.take_survey()
    if asked is None:
        return etas
    reason, points = asked
    energy = float((yield from bps.rd(detector.energy_ev)))
    delta_now = float((yield from bps.rd(diffractometer.delta)))
    centre = float(np.mean(etas))
    offset = centre - delta_now / 2.0           # the crystal's orientation: eta - θ at Bragg
    targets = []
    for d in tracking.candidates_d:
        delta = two_theta_deg(float(d), energy)
        if abs(delta - delta_now) > tracking.same_deg:
            targets.append((float(d), delta, delta / 2.0 + offset))
    tracking.surveys += 1
    yield from record(steering, "survey", reason, points=points, candidates_d=[t[0] for t in targets],
                      eta_span_deg=tracking.eta_span_deg, eta_step_deg=tracking.eta_step_deg)
    rows = yield from survey(counter, detector, stage, diffractometer, grid, points, targets, tracking)
    found = tracking.locate(rows)
    yield from bps.mv(diffractometer.delta, delta_now, diffractometer.eta, etas[0])   # as before until re-centred
    if found is None:
        yield from record(steering, "survey result", "no reflection above noise at the candidate d values",
                          rows=len(rows))
        return etas
    where = {"eta": float(found.eta), "delta": float(found.delta), "d_angstrom": float(found.d_angstrom)}
    yield from record(steering, "survey result", f"reflection of d = {found.d_angstrom:.4f} Å found at "
                      f"eta {found.eta:.3f}°, delta {found.delta:.3f}°", **found.as_dict())
    if tracking.mode == "auto":
        return (yield from _recentre(steering, diffractometer, etas, where, "automatic (phase tracking auto)"))
    number = tracking.surveys
    replaced = tracking.requests.propose(number, where)
    accept = awaited(f"Accept: re-centre on d = {found.d_angstrom:.4f} Å", "accept_proposal", proposal=number)
    settles = {"answers": [answers("accept_proposal", proposal=n) for n in replaced]} if replaced else {}
    yield from record(steering, "proposal", f"re-centre on d = {found.d_angstrom:.4f} Å: accept in the dashboard"
                      + (f" (replaces proposal {', '.join(map(str, replaced))})" if replaced else ""),
                      actions=[accept], proposal=number, **where, **settles)
    return etas


def _recentre(steering: SteeringLog, diffractometer: Diffractometer, etas: list[float], where: dict[str, Any],
              why: str, **detail: Any) -> MsgGenerator[list[float]]:
    shift = float(where["eta"]) - float(np.mean(etas))
    moved = [float(e) + shift for e in etas]
    for eta in (moved[0], moved[-1]):
        diffractometer.check(eta=eta, delta=float(where["delta"]))
    yield from bps.mv(diffractometer.delta, float(where["delta"]), diffractometer.eta, moved[0])
    yield from record(steering, "re-centre", why, eta_center=float(np.mean(moved)), delta=float(where["delta"]),
                      d_angstrom=where.get("d_angstrom"), eta_shift=shift, **detail)
    return moved
