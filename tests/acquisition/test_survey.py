"""The survey plan on the simulated beamline: with the crystal all Li0.5 and the detector arm on
Li0.9, a survey finds the Li0.5 reflection at its own Bragg angles; in "propose" mode the plan
only re-centres once the proposal is accepted (through RunEngineSteering, as the control channel
does); each step is a decision with its reason in the `steering` stream."""
from __future__ import annotations

import json

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from ophyd_async.plan_stubs import ensure_connected

from opmon.acquisition.decisions import SteeringLog
from opmon.acquisition.steering import RunEngineSteering
from opmon.acquisition.survey import FrameTotal, PhaseRequests, PhaseTracking, track_phase, two_theta_deg
from opmon.errors import ConfigError, ControlCommandError
from opmon.processors.phase import locate_reflection
from opmon.simulators.cell import CellConfig
from tests.acquisition.conftest import stream

ENERGY = 10000.0
CANDIDATES = (2.0332, 2.0184, 2.0000)


def _decisions(docs):
    return [(e["data"]["steering-decision"], e["data"]["steering-reason"], json.loads(e["data"]["steering-detail"]))
            for e in stream(docs, "steering")]


def test_a_proposed_recentring_waits_for_its_acceptance_then_moves_eta_and_delta(RE, docs, make_beamline):
    bl = make_beamline(setup=dict(map_shape=(4, 4), n_angles=5, eta_step=0.04, delta=two_theta_deg(2.0332, ENERGY)),
                       cell=CellConfig(x0=0.5), window="all")
    tracking = PhaseTracking(CANDIDATES, locate_reflection, mode="propose", eta_span_deg=0.3, eta_step_deg=0.05)
    steering = RunEngineSteering(RE, None, None, phase=tracking.requests)
    true_eta = float(bl.particle.bragg_eta(bl.particle.q_ref * 2 * np.pi / 2.0184))
    with pytest.raises(ControlCommandError, match="no open proposal"):
        steering.accept_proposal(7)
    with pytest.raises(ControlCommandError, match="no phase tracking"):
        RunEngineSteering(RE, None).accept_proposal(1)
    log, counter = SteeringLog(), FrameTotal(bl.detector)
    etas0 = bl.etas()
    seen: dict[str, list[float]] = {}

    def plan():
        yield from ensure_connected(log, counter)
        yield from bps.open_run({})
        tracking.requests.survey("test: the imaged reflection faded", [5, 6, 9, 10])
        seen["proposed"] = yield from track_phase(tracking, log, counter, bl.detector, bl.stage, bl.diffractometer,
                                                  bl.grid(), etas0)
        seen["delta_before"] = [float((yield from bps.rd(bl.diffractometer.delta)))]
        steering.accept_proposal(next(iter(tracking.requests.proposals)))
        seen["accepted"] = yield from track_phase(tracking, log, counter, bl.detector, bl.stage, bl.diffractometer,
                                                  bl.grid(), seen["proposed"])
        seen["delta_after"] = [float((yield from bps.rd(bl.diffractometer.delta)))]
        yield from bps.close_run()

    RE(plan())
    kinds = [k for k, _, _ in _decisions(docs)]
    assert kinds == ["survey", "survey result", "proposal", "re-centre"], kinds
    decided = {k: (why, detail) for k, why, detail in _decisions(docs)}
    assert decided["survey"][1]["candidates_d"] == [2.0184, 2.0]         # not the imaged Li0.9
    assert decided["survey result"][1]["d_angstrom"] == 2.0184
    assert seen["proposed"] == etas0                                      # nothing moved before acceptance
    assert seen["delta_before"][0] == pytest.approx(two_theta_deg(2.0332, ENERGY))
    assert "accepted in the dashboard" in decided["re-centre"][0]
    # the proposal offers its accept as an awaited action (the decisions panel's button); the
    # re-centring says it answered that action (the panel drops the button in every session)
    (proposal,) = [e for e in stream(docs, "steering") if e["data"]["steering-decision"] == "proposal"]
    assert json.loads(proposal["data"]["steering-actions"]) == [
        {"label": "Accept: re-centre on d = 2.0184 Å", "command": "accept_proposal", "args": {"proposal": 1},
         "awaited": True}]
    assert decided["re-centre"][1]["answers"] == {"command": "accept_proposal", "args": {"proposal": 1}}
    assert seen["delta_after"][0] == pytest.approx(two_theta_deg(2.0184, ENERGY))
    assert abs(np.mean(seen["accepted"]) - true_eta) < 0.05, (np.mean(seen["accepted"]), true_eta)
    assert np.allclose(np.diff(seen["accepted"]), np.diff(etas0))       # the same scan, moved
    assert len(stream(docs, "survey")) == 2 * 13 * 4                    # 2 candidates x 13 etas x 4 points
    assert not tracking.requests.proposals                                # applied: none open


def test_a_newer_proposal_replaces_the_open_one_but_not_an_accepted_one():
    """The reflection kept fading while nobody accepted: the newest survey's proposal replaces the
    open one (its Accept would re-centre on stale angles); an accepted one is still applied."""
    requests = PhaseRequests()
    assert requests.propose(1, {"eta": 1.0}) == []
    assert requests.propose(2, {"eta": 2.0}) == [1]
    with pytest.raises(ControlCommandError, match="no open proposal 1"):
        requests.accept(1)
    requests.accept(2)
    assert requests.propose(3, {"eta": 3.0}) == []            # 2 was accepted: applied, not replaced
    assert [(n, where) for n, where, _ in requests.take_accepted()] == [(2, {"eta": 2.0})]
    assert list(requests.proposals) == [3]


def test_phase_tracking_refuses_bad_settings():
    with pytest.raises(ConfigError, match="mode"):
        PhaseTracking(CANDIDATES, locate_reflection, mode="sometimes")
    with pytest.raises(ConfigError, match="candidates_d"):
        PhaseTracking((), locate_reflection)
    with pytest.raises(ConfigError, match="reachable"):
        two_theta_deg(0.5, ENERGY)


def test_frame_total_counts_the_unmasked_pixels_only(RE, make_beamline):
    """Off Bragg, a frame holds the diffuse background (~1e-3 counts per pixel) and the masked hot
    pixels (~5e3 counts each): the survey's counts must not be the hot pixels'."""
    bl = make_beamline(setup=dict(roi=None, n_hot=6))
    counter = FrameTotal(bl.detector)

    def plan():
        yield from ensure_connected(counter)
        yield from bps.mv(bl.diffractometer.eta, 10.0)
        yield from bps.trigger(counter, wait=True)
        return (yield from bps.rd(counter.total))

    total = RE(plan()).plan_result
    assert 0 <= total < 1000, total
