"""Drift re-centring end to end: the simulated sample stage creeps by up to 1 µm between maps; the
live processor's final maps, registered map to map by `RecentreWatch`, move the scan region
through the control channel and RunEngineSteering, so the particle stays within 2 map pixels of
its first map's position. Real RunEngine, simulated beamline, ZeroMQ frame stream, inline live
processor, control channel; no archiver (the acquisition's stream goes to the live processor only)."""
from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
import zmq
from bluesky import RunEngine
from bluesky.preprocessors import SupplementalData

from opmon.acquisition import PublisherSink, SteeringRequests, operando_series
from opmon.acquisition.steering import RunEngineSteering
from opmon.processors.live import LiveProcessor
from opmon.processors.registration import register
from opmon.recentre_watch import RecentreWatch, RecentringGate
from opmon.simulators.beamline import BeamlineConfig, SimulatedBeamline
from opmon.simulators.instrument import SxdmSetup
from opmon.streaming.control import ControlServer
from opmon.streaming.map_messages import TOPIC, decode_map
from opmon.streaming.publisher import ZmqFrameSink
from opmon.topic_watch import TopicWatch
from tests.waiting import until

STEP_UM = 0.5                     # 8 x 8 map of 0.5 µm: a 1 µm creep is 2 map pixels
SETUP = dict(map_shape=(8, 8), n_angles=3, roi=(320, 400, 208, 296), eta_step=0.1, map_step_um=STEP_UM)
MAPS = 5
TOKEN = "recentre-test"


class FinalMaps(TopicWatch):
    """The live processor's final Σ I maps, as the test sees them."""

    topic = TOPIC

    def __init__(self, endpoint: str, context: zmq.Context) -> None:
        super().__init__(endpoint, context)
        self.intensity: dict[int, np.ndarray] = {}

    def on_message(self, header: Any, buffers: list[Any]) -> None:
        if isinstance(header, dict) and header.get("final"):
            self.intensity[int(header["map"])] = np.array(decode_map(header, buffers)["intensity"])


class AfterEachMap:
    """Trigger rule: the next map once the previous one has been handled (`done()` counts them),
    so a slow machine changes the timing, not what is tested."""

    def __init__(self, done) -> None:
        self.done, self.asked = done, 0

    def update(self, reading) -> str | None:
        if self.done() < self.asked:
            return None
        self.asked += 1
        return "test: next map"


class BackToBack:
    """Trigger rule: a map at every poll (maps back to back, as a short period or dense mapping)."""

    def update(self, reading) -> str:
        return "test: back-to-back map"


def run_drifting_series(recentre: bool) -> dict[str, Any]:
    """Five maps with the stage creeping 1 µm per map; returns the truth, the offsets, the final maps."""
    ctx = zmq.Context()
    RE = RunEngine({}, call_returns_result=True, context_managers=[])
    docs: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    publisher = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60.0)
    sink = PublisherSink(publisher)
    RE.subscribe(sink)
    beamline = SimulatedBeamline(BeamlineConfig(setup=SxdmSetup(**SETUP), acceleration=300.0, seed=3,
                                                stage_drift_um=1.0), sink=sink)
    RE.preprocessors.append(SupplementalData(monitors=[beamline.drift_truth.offset_um]))   # truth in the documents
    live = LiveProcessor(publisher.endpoints[0], "tcp://127.0.0.1:*", None, roi=None, publish_interval_s=0.2,
                         context=ctx)
    display = live.display.getsockopt_string(zmq.LAST_ENDPOINT)
    live_thread = threading.Thread(target=live.serve, daemon=True)
    live_thread.start()
    requests = SteeringRequests(loop=RE.loop)
    steering = RunEngineSteering(RE, requests)
    control = ControlServer("tcp://127.0.0.1:0", TOKEN, steering, context=ctx).start()
    finals = FinalMaps(display, ctx).start()
    watch = None
    if recentre:
        watch = RecentreWatch(display, control.endpoint, TOKEN, max_step_um=1.5, context=ctx)
        RE.subscribe(watch.on_document)
        watch.start()
    done = (lambda: watch.maps_handled if watch is not None else len(finals.intensity))
    try:
        assert until(lambda: live.display is not None, 5)
        # re-centring: maps back to back, each held by the plan's gate until the last one's shift is decided
        rule = BackToBack() if watch is not None else AfterEachMap(done)
        gate = RecentringGate(watch.waiting_for, hold_s=60.0) if watch is not None else None
        plan = operando_series(*beamline.devices, **beamline.map_args(), triggers=rule, map_gate=gate,
                               requests=requests, max_maps=MAPS, poll_s=0.02)
        assert steering.run(plan) == "success"
        assert until(lambda: len(finals.intensity) == MAPS and done() >= MAPS, 60), sorted(finals.intensity)
    finally:
        if watch is not None:
            watch.close()
        finals.close()
        control.close()
        live.stopped = True
        live_thread.join(30)
        beamline.close()
        publisher.close()
        ctx.destroy(0)
    decisions = [json.loads(d["data"]["steering-detail"]) | {"decision": d["data"]["steering-decision"],
                                                             "reason": d["data"]["steering-reason"]}
                 for n, d in docs if n == "event" and "steering-decision" in d["data"]]
    offsets = {d["map"]: d["offset_um"] for d in decisions if d["decision"] == "map"}
    truth = [d["data"]["stage_drift-offset_um"] for n, d in docs
             if n == "event" and "stage_drift-offset_um" in d.get("data", {})]
    return {"offsets": offsets, "decisions": decisions, "finals": finals.intensity,
            "drift": beamline.stage_drift.path(MAPS), "truth_docs": truth}


def particle_px(run: dict[str, Any]) -> np.ndarray:
    """Where the particle is in each map's pixels against the first map (truth: creep − region shift)."""
    drift = run["drift"]
    shifts = np.array([run["offsets"][k] for k in range(MAPS)])
    return np.hypot(*((drift - shifts) - (drift[0] - shifts[0])).T) / STEP_UM


@pytest.mark.timeout(180)
def test_stage_drift_is_compensated_so_the_particle_stays_within_two_map_pixels():
    run = run_drifting_series(recentre=True)
    steps = np.hypot(*np.diff(run["drift"], axis=0).T)
    assert steps.max() <= 1.0 and steps.min() >= 0.8            # the stage creeps by up to 1 µm per map
    assert np.hypot(*(run["drift"][-1] - run["drift"][0])) > 3.0   # 3+ µm = 6+ map pixels over the run
    moved = particle_px(run)
    assert moved.max() <= 2.0, moved                              # truth: within 2 map pixels of map 0
    seen = register([run["finals"][k] for k in range(1, MAPS)], run["finals"][0], pad=True)
    assert np.isfinite(seen).all() and np.hypot(*seen.T).max() <= 2.0, seen   # and so the live maps say
    shifts = [d for d in run["decisions"] if d["decision"] == "map offset"]
    assert len(shifts) >= MAPS - 2 and all("drift re-centring" in d["reason"] for d in shifts)
    assert all(np.hypot(*np.subtract(b["offset_um"], b["previous_um"])) <= 1.5 + 1e-3 for b in shifts), shifts  # step limit (µm rounded to 0.1 nm)
    assert np.allclose(run["truth_docs"], run["drift"])   # the creep's truth, one event per map in the documents
    held = [d["reason"] for d in run["decisions"] if d["decision"] == "map"]
    assert all(set(r.split("; ")) == {"test: back-to-back map"} for r in held), held   # none let go by the timeout


@pytest.mark.timeout(180)
def test_without_recentring_the_drifting_particle_leaves_its_place():
    run = run_drifting_series(recentre=False)
    moved = particle_px(run)
    assert moved[-1] > 5.0, moved            # 3 µm and more: far off the 8 x 8 map's middle
    assert not any(d["decision"] == "map offset" for d in run["decisions"])


def test_demo_options_choose_recentring_and_refuse_bad_values():
    from opmon.cli import build_parser
    from opmon.demo import plan_from_args
    from opmon.errors import ConfigError

    parse = build_parser().parse_args
    plan = plan_from_args(parse(["demo", "--recentre", "auto", "--recentre-max-step-um", "0.8", "--stage-drift-um", "1",
                                 "--map-step-um", "0.5"]))
    assert (plan.recentre, plan.recentre_max_step_um, plan.stage_drift_um, plan.setup().map_step_um) == ("auto", 0.8, 1.0, 0.5)
    assert plan_from_args(parse(["demo"])).recentre == "off"
    for bad, option in [(["--recentre-max-step-um", "0"], "--recentre-max-step-um"), (["--stage-drift-um", "-1"], "--stage-drift-um"),
                        (["--map-step-um", "nan"], "--map-step-um")]:
        with pytest.raises(ConfigError, match=option):
            plan_from_args(parse(["demo", *bad]))


def test_gate_holds_a_map_until_the_last_map_is_recentred_then_one_poll_more():
    """The plan asks the gate at each poll while a map waits: held while the last map is not
    registered, let go one poll after the watcher has handled it (never at the first ask), or
    after `hold_s` with a note for the map's reason."""
    now = [0.0]
    waiting: list[int | None] = [3]
    gate = RecentringGate(lambda: waiting[0], hold_s=10.0, clock=lambda: now[0])
    assert gate.ready() is None                       # map 3 is not registered
    now[0] = 5.0
    assert gate.ready() is None
    waiting[0] = None                                 # map 3 handled: its shift is sent
    assert gate.ready() is None                       # the plan reads the steering signals first
    assert gate.ready() == ""                         # the next map starts, nothing to add to its reason
    assert gate.ready() is None                       # a new wait: never at the first ask
    assert gate.ready() == ""
    waiting[0] = 7
    now[0] = 20.0
    assert gate.ready() is None
    now[0] = 31.0
    assert gate.ready() == " (re-centring of map 7 not decided after 11 s)"
