"""Phase tracking end to end, in one process: a simulated accelerated charge where the imaged
(Li1) reflection fades over the first plateau; the live processor's maps (real ZeroMQ stream,
real live processor) tell the phase watcher, which asks the plan for a survey; the survey finds
the Li0.5 reflection at its own Bragg angles and the plan re-centres eta and delta on it; later
maps are bright again with d of Li0.5. Every step is in the run's `steering` stream."""
from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
import zmq
from bluesky import RunEngine

from opmon.acquisition import CellCommand, PeriodicTrigger, PublisherSink, SteeringRequests, operando_series
from opmon.acquisition.cell_state import CellMode
from opmon.acquisition.survey import PhaseTracking, two_theta_deg
from opmon.phase_watch import PhaseWatch
from opmon.processors.live import open_live_processor
from opmon.processors.phase import FadingRule, locate_reflection
from opmon.simulators.beamline import BeamlineConfig, SimulatedBeamline
from opmon.simulators.cell import CellConfig
from opmon.simulators.instrument import SxdmSetup
from opmon.streaming.protocol import unpack
from opmon.streaming.publisher import ZmqFrameSink
from tests.acquisition.conftest import stream
from tests.waiting import until

ENERGY = 10000.0
D_START, D_LI05 = 2.0332, 2.0184          # Li1 (Li0.9) on the first plateau; the Li0.5 phase
CANDIDATES = (2.0332, 2.0184, 2.0000)     # the crystal model's phases (simulators.crystal D_POINTS)


class FinalMaps:
    """Headers of the live processor's final maps, collected by a SUB socket on a thread."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.headers: dict[int, dict[str, Any]] = {}
        self._sock = ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"map")
        self._sock.connect(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._sock.poll(100):
                header = unpack(self._sock.recv_multipart()[1])
                if header.get("final"):
                    self.headers[int(header["map"])] = header

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close(0)


def _decisions(docs: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e["data"]["steering-decision"], e["data"]["steering-reason"], json.loads(e["data"]["steering-detail"]))
            for e in stream(docs, "steering")]


@pytest.mark.timeout(240)
def test_a_fading_reflection_is_surveyed_and_maps_continue_on_the_next_phase():
    RE = RunEngine({}, call_returns_result=True)
    docs: list[tuple[str, dict[str, Any]]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    ctx = zmq.Context()
    publisher = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    sink = PublisherSink(publisher)
    RE.subscribe(sink)
    processor = open_live_processor(publisher.endpoints[0], "tcp://127.0.0.1:*", None, roi=None,
                                    publish_interval_s=0.5, context=ctx)
    display = processor.display.getsockopt_string(zmq.LAST_ENDPOINT)
    serving = threading.Thread(target=processor.serve, daemon=True)
    serving.start()
    # the detector arm on the imaged Li1 reflection, a 64 x 64 window, a short rocking scan:
    # Li0.5's reflection is 0.27° away in 2θ and 0.13° in eta, outside both
    setup = SxdmSetup(map_shape=(6, 6), n_angles=7, eta_step=0.04, roi=(224, 288, 224, 288),
                      delta=two_theta_deg(D_START, ENERGY), n_hot=0)
    bl = SimulatedBeamline(BeamlineConfig(setup=setup, cell=CellConfig(x0=0.78), acceleration=2500.0,
                                          window="all"), sink=sink)
    tracking = PhaseTracking(candidates_d=CANDIDATES, locate=locate_reflection, mode="auto",
                             eta_span_deg=0.3, eta_step_deg=0.05)
    watch = PhaseWatch(display, tracking.requests, FadingRule(fraction=0.3, maps=2), points=4, context=ctx).start()
    finals = FinalMaps(ctx, display)
    true_eta = float(bl.particle.bragg_eta(bl.particle.q_ref * 2 * np.pi / D_LI05))
    requests = SteeringRequests(loop=RE.loop)
    pacer = threading.Thread(target=_pace_the_charge, args=(docs, finals, bl), daemon=True)
    ender = threading.Thread(target=_finish_after_recentre, args=(docs, finals, requests, 2), daemon=True)
    try:
        charge = CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15), cutoff=4.9)
        # maps back to back, the clock paced to X_PER_MAP per map; the run ends two maps after
        # the re-centring, or at x = 0.1 (then the asserts say what failed)
        plan = operando_series(*bl.devices, grid=bl.grid(), etas=bl.etas(), triggers=PeriodicTrigger(1.0),
                               charge=charge, order="eta-outer", requests=requests, max_maps=40,
                               max_cell_time_s=0.7 * 54000, phase=tracking)
        pacer.start()
        ender.start()
        RE(plan)
        decided = _decisions(docs)
        kinds = [k for k, _, _ in decided]
        assert "survey" in kinds and "re-centre" in kinds, decided
        survey = kinds.index("survey")
        assert "faded" in decided[survey][1]
        found = next(detail for kind, _, detail in decided if kind == "survey result")
        assert found["d_angstrom"] == D_LI05, found
        recentre = kinds.index("re-centre")
        where = decided[recentre][2]
        assert abs(where["delta"] - two_theta_deg(D_LI05, ENERGY)) < 0.05, where
        assert abs(where["eta_center"] - true_eta) < 0.05, (where, true_eta)   # within a survey step
        before = [d["map"] for k, _, d in decided[:survey] if k == "map"]
        after = [d["map"] for k, _, d in decided[recentre:] if k == "map"]
        assert len(before) >= 3 and len(after) >= 2, decided
        assert until(lambda: all(m in finals.headers for m in before + after), 30)
        sums = {m: finals.headers[m]["intensity_sum"] for m in before + after}
        peak = max(sums[m] for m in before)
        assert sums[before[-1]] < 0.3 * peak, sums                      # faded before the survey
        assert max(sums[m] for m in after) > 0.6 * peak, sums           # bright again on Li0.5
        d_after = finals.headers[after[0]]["d_mean"]
        assert abs(d_after - D_LI05) < 1e-3, (d_after, sums)
    finally:
        watch.close()
        finals.close()
        processor.stopped = True
        serving.join(30)
        bl.close()
        publisher.close()
        ctx.destroy(0)


X_PER_MAP = 0.065     # lithium content the cell loses over one map (the plateau is 0.4)


def _pace_the_charge(docs, finals: FinalMaps, bl: SimulatedBeamline) -> None:
    """Set the simulated clock from the first map's wall time, so a map spans X_PER_MAP of
    charge whatever the machine's load (maps are taken back to back)."""

    def first_map_done() -> bool:
        return 0 in finals.headers and any(k == "map" for k, _, _ in _decisions(list(docs)))
    if not until(first_map_done, 120):
        return
    started = next(e["time"] for e in stream(list(docs), "steering"))
    wall = max(finals.headers[0]["t"] - started, 0.1)
    seconds = X_PER_MAP * bl.cell.capacity_c / bl.c_rate(1 / 15)
    bl.clock.acceleration = seconds / wall


def _finish_after_recentre(docs, finals: FinalMaps, requests: SteeringRequests, maps: int) -> None:
    """Ask the plan to finish once `maps` maps after the re-centring are final (bounded)."""

    def enough() -> bool:
        decided = _decisions(list(docs))
        kinds = [k for k, _, _ in decided]
        if "end" in kinds:
            return True
        if "re-centre" not in kinds:
            return False
        after = [d["map"] for k, _, d in decided[kinds.index("re-centre"):] if k == "map"]
        return len(after) >= maps and all(m in finals.headers for m in after[:maps])
    until(enough, 200)
    requests.finish()
