"""Phase tracking's proposal in Debian's chromium: a survey on the simulated beamline (crystal all
Li0.5, detector arm on Li0.9) proposes re-centring on Li0.5; the decisions panel shows the
proposal with its own button (the decision's awaited `accept_proposal` action), one click sends it
through the token-checked control channel, and the plan re-centres (its "re-centre" decision shows
and, answering the proposal, takes the button away). Real RunEngine, documents over
ZeroMQ, control server, dashboard server and browser."""
from __future__ import annotations

import threading
import time

import bluesky.plan_stubs as bps
import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from ophyd_async.plan_stubs import ensure_connected

from opmon.acquisition.decisions import SteeringLog
from opmon.acquisition.steering import RunEngineSteering
from opmon.acquisition.survey import FrameTotal, PhaseTracking, track_phase, two_theta_deg
from opmon.benchmarks.browser import Browser, browser_available
from opmon.dashboard.server import DashboardConfig, DashboardServer
from opmon.processors.phase import locate_reflection
from opmon.simulators.beamline import BeamlineConfig, SimulatedBeamline
from opmon.simulators.cell import CellConfig
from opmon.simulators.instrument import SxdmSetup
from opmon.streaming.control import ControlServer
from opmon.streaming.documents import DocumentPublisher
from opmon.acquisition.sinks import FrameSink

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not browser_available(),
                                 reason="Debian chromium/chromium-driver missing: run scripts/install-browser.sh")]


class _NoFrames(FrameSink):
    """The survey reads counts only; no map is taken here."""

    def open(self, run_uid, map_id, meta):          # pragma: no cover - never called by a survey
        raise AssertionError("no map frames in this test")

    def write(self, frame, header):                  # pragma: no cover
        raise AssertionError("no map frames in this test")

    def close(self) -> None:
        pass


def test_a_proposal_shows_in_the_decisions_panel_and_one_click_recentres(token):
    RE = RunEngine({}, context_managers=[])
    ctx = zmq.Context()
    documents = DocumentPublisher(None, "tcp://127.0.0.1:*", context=ctx)
    RE.subscribe(documents)
    display = documents.display.getsockopt_string(zmq.LAST_ENDPOINT)
    setup = SxdmSetup(map_shape=(4, 4), n_angles=5, eta_step=0.04, roi=(224, 288, 224, 288),
                      delta=two_theta_deg(2.0332, 10000.0))
    bl = SimulatedBeamline(BeamlineConfig(setup=setup, cell=CellConfig(x0=0.5), window="all"), sink=_NoFrames())
    tracking = PhaseTracking((2.0332, 2.0184, 2.0000), locate_reflection, mode="propose")
    steering = RunEngineSteering(RE, None, None, phase=tracking.requests)
    control = ControlServer("tcp://127.0.0.1:0", token, steering, ctx).start()
    dashboard = DashboardServer(DashboardConfig(display_endpoints=[display], control_endpoint=control.endpoint,
                                                port=0, token=token)).start()
    log, counter = SteeringLog(), FrameTotal(bl.detector)
    done = threading.Event()

    def plan():
        yield from ensure_connected(log, counter)
        yield from bps.open_run({"plan_name": "phase_proposal_test"})
        tracking.requests.survey("test: the imaged reflection faded", [5, 6, 9, 10])
        etas = yield from track_phase(tracking, log, counter, bl.detector, bl.stage, bl.diffractometer, bl.grid(),
                                      bl.etas())
        for _ in range(1200):                  # until the click is applied (bounded: 120 s)
            if not tracking.requests.proposals or done.is_set():
                break
            yield from bps.sleep(0.1)
            etas = yield from track_phase(tracking, log, counter, bl.detector, bl.stage, bl.diffractometer,
                                          bl.grid(), etas)
        yield from bps.close_run()

    runner = threading.Thread(target=lambda: RE(plan()), daemon=True)
    b = Browser(1600, 1000)
    try:
        b.get(dashboard.steering_url)
        b.wait_for("the page to load", lambda: b.model_text("decisions") is not None)
        time.sleep(1.0)                        # the dashboard's SUB joins before the run's first document
        runner.start()
        assert not b.buttons_starting("Accept:")               # no proposal yet: no button
        b.wait_for("the proposal's button in the decisions panel",
                   lambda: b.buttons_starting("Accept: re-centre on d = 2.0184 Å (proposal, "), timeout=90)
        assert 'data-decision="proposal"' in (b.model_text("decisions") or "")
        assert 'data-decision="re-centre"' not in (b.model_text("decisions") or "")    # nothing moves unasked
        b.wait_for("one click on the button", lambda: b.click_starting("Accept: re-centre on d = 2.0184"))
        b.wait_for("the re-centre decision in the panel",
                   lambda: 'data-decision="re-centre"' in (b.model_text("decisions") or ""), timeout=60)
        assert "accepted in the dashboard" in b.model_text("decisions")
        b.wait_for("the button to go", lambda: not b.buttons_starting("Accept:"))
        runner.join(30)
        assert not tracking.requests.proposals
    finally:
        done.set()
        b.quit()
        runner.join(30)
        dashboard.stop()
        control.close()
        bl.close()
        documents.close()
        ctx.destroy(0)
    kinds = [d.decision for d in dashboard.model.decisions()[1]]
    assert kinds == ["survey", "survey result", "proposal", "re-centre"], kinds
    assert np.isclose(dashboard.model.decisions()[1][-1].detail["delta"], two_theta_deg(2.0184, 10000.0))
