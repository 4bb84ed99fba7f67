"""A small but real experiment for the dashboard tests: RunEngine, ZeroMQ publishers, control.

- A bluesky RunEngine runs a mapping plan on a background thread. Each map row is one
  `checkpoint` + `sleep`, so `RE.request_pause()` really pauses between rows.
- Maps come from the simulator's particle model (`ParticleModel.truth()`, FORMATS.md names),
  revealed row by row as partial maps on a real PUB socket (display_live), final at the end.
- A simulated cell (`CellSimulator`, galvanostatic charge, accelerated clock) publishes
  potentiostat readings; the acquisition status (state straight from `RE.state`) goes out on a
  second PUB socket (display_acquisition), as docs/protocol.md describes.
- `streaming.control.ControlServer` answers steering requests with a token and acts through
  the RunEngine and the plan's steering soft signals (`SteeringRequests`) via `RunEngineSteering`.

The tests read the RunEngine's state from here (the acquisition side), never from the page.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import zmq
from bluesky import RunEngine
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp

from opmon.acquisition import AnyOf, PeriodicTrigger, SteeringRequests, VoltageThresholds
from opmon.acquisition.steering_requests import RequestChanges, RequestReader
from opmon.acquisition.cell_state import CellMode
from opmon.processors.maps import MapResult
from opmon.simulators.cell import CellConfig, CellSimulator
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup
from opmon.acquisition.steering import RunEngineSteering
from opmon.streaming.control import ControlServer
from opmon.streaming.map_messages import encode_map
from opmon.streaming.protocol import pack


def make_rule(thresholds: list[float] | None = None, period_s: float | None = None):
    """The acquisition's rule factory for `set_trigger`: thresholds and/or a period."""
    rules = ([VoltageThresholds(thresholds)] if thresholds else []) + ([PeriodicTrigger(period_s)] if period_s else [])
    return AnyOf(*rules)


def _merged(earlier: RequestChanges, later: RequestChanges) -> RequestChanges:
    """Two polls' changes as one: the later rule and region win."""
    out = RequestChanges(maps=earlier.maps + later.maps, notes=earlier.notes + later.notes,
                         finish=later.finish or earlier.finish)
    out.rule = later.rule if later.rule is not None else earlier.rule
    out.region = later.region if later.region != "unchanged" else earlier.region
    return out


def _pub(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    s = ctx.socket(zmq.PUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 20)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    return s, f"tcp://127.0.0.1:{port}"


class SimulatedExperiment:
    """Everything on the acquisition and live-processing side that the dashboard talks to."""

    def __init__(self, token: str, map_shape: tuple[int, int] = (24, 32), n_maps: int = 1000,
                 row_period_s: float = 0.08, seed: int = 3) -> None:
        self.ctx = zmq.Context()
        self.live_pub, self.live_endpoint = _pub(self.ctx)
        self.acq_pub, self.acq_endpoint = _pub(self.ctx)
        self.pub_lock = threading.Lock()
        self.RE = RunEngine({}, context_managers=[])
        self.requests = SteeringRequests(loop=self.RE.loop)
        self.steering = RunEngineSteering(self.RE, self.requests, make_rule)
        self.control = ControlServer("tcp://127.0.0.1:0", token, self.steering, self.ctx)
        self.map_shape, self.n_maps, self.row_period_s = map_shape, n_maps, row_period_s
        self.particle = ParticleModel(SxdmSetup(map_shape=map_shape), seed=seed)
        self.cell = CellSimulator(CellConfig(x0=0.98))
        self.cell.command(CellMode.GALVANOSTATIC, self.cell.config.c_rate_current(0.5), cutoff=4.9)
        self.rules: list[Any] = []
        self.regions: list[Any] = []
        self.stop_event = threading.Event()
        self.rows_published = 0
        self.maps_done = 0
        self.current_map = 0
        self.exit_status: str | None = None
        self.documents: list[tuple[str, dict[str, Any]]] = []   # what the RunEngine emitted (start, stop)
        self.RE.subscribe(lambda name, doc: self.documents.append((name, doc)))
        self.t_start = time.time()
        self._threads = [threading.Thread(target=self._run_plan, name="sim-RE", daemon=True),
                         threading.Thread(target=self._status_loop, name="sim-status", daemon=True)]

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> SimulatedExperiment:
        self.control.start()
        for t in self._threads:
            t.start()
        return self

    def close(self) -> None:
        self.stop_event.set()
        if self.RE.state == "running":
            self.RE.request_pause(defer=False)
        for t in self._threads:
            t.join(5.0)
        self.control.close()
        for s in (self.live_pub, self.acq_pub):
            s.close(0)
        self.ctx.term()

    # ---- the plan (runs inside the RunEngine) ---------------------------------------------------
    def _mapping_plan(self):
        truth_keys = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "mask", "q")
        ny, nx = self.map_shape
        region = (0, ny, 0, nx)
        reader = RequestReader(self.requests)
        during = RequestChanges()          # what was asked while the last map ran
        for m in range(self.n_maps):
            asked = _merged(during, (yield from reader.poll()))
            during = RequestChanges()
            if self.stop_event.is_set() or reader.finishing is not None:
                return
            self.current_map = m
            if asked.region != "unchanged":
                region = asked.region or (0, ny, 0, nx)
                self.regions.append(asked.region)
            if asked.rule is not None:
                self.rules.append(make_rule(asked.rule.get("thresholds"), asked.rule.get("period_s")))
            self.particle.set_charge_state(0.9 - 0.05 * (m % 16))
            truth = self.particle.truth()
            full = {k: np.asarray(truth[k], dtype=np.float64 if k != "mask" else np.uint8) for k in truth_keys}
            full["frames"] = np.full(self.map_shape, 30, dtype=np.int64)   # frames per map pixel (30 angles)
            mean_q = np.asarray(truth["mean_q"], dtype=np.float64)
            for k in ("d_spacing", "tilt_altitude", "tilt_azimuth", "peak_width"):
                full[k][full["mask"] == 0] = np.nan       # as the processors mask (SCIENCE.md §3)
            r0, r1, c0, c1 = region
            outside = np.ones(self.map_shape, dtype=bool)
            outside[r0:r1, c0:c1] = False
            for v in full.values():
                v[outside] = np.nan if v.dtype.kind == "f" else 0
            for r in range(r0 + 1, r1 + 1):
                yield from bps.checkpoint()
                yield from bps.sleep(self.row_period_s)
                during = _merged(during, (yield from reader.poll()))
                if during.maps:
                    break                                  # map now: start the next map at once
                part = {k: v.copy() for k, v in full.items()}
                for k, v in part.items():
                    if v.dtype.kind == "f":
                        v[r:] = np.nan
                    else:
                        v[r:] = 0
                self._publish_map(m, MapResult(**part, mean_q=mean_q), r - r0, r1 - r0)
            self.maps_done += 1

    def _publish_map(self, m: int, maps: MapResult, rows: int, ny: int) -> None:
        """One partial (or, with every row, final) map through the live processor's encoder."""
        self.rows_published += 1
        parts = encode_map(maps, run="sim", map_number=m, final=rows == ny, frames=rows, n_frames=ny, frames_lost=0)
        with self.pub_lock:
            self.live_pub.send_multipart(parts)

    def _run_plan(self) -> None:
        plan = bpp.run_wrapper(self._mapping_plan(), md={"plan_name": "dashboard_producer"})
        self.exit_status = self.steering.run(plan, stop=self.stop_event)

    # ---- status and readings ---------------------------------------------------------------------
    def _status_loop(self) -> None:
        last_rows, last_t = 0, time.monotonic()
        while not self.stop_event.is_set():
            time.sleep(0.1)
            self.cell.advance(30.0)            # 30 s of cell time per 0.1 s: hours in a minute
            c = self.cell.sample()
            now = time.time()
            reading = {"v": 1, "kind": "reading", "run": "sim", "t": self.t_start + c.time,
                       "voltage_v": c.voltage, "current_a": c.current, "charge_mah": c.charge / 3.6}
            dt = time.monotonic() - last_t
            fps = (self.rows_published - last_rows) * self.map_shape[1] * 30 / dt if dt > 0 else 0.0
            last_rows, last_t = self.rows_published, time.monotonic()
            state = self.RE.state if self.exit_status is None else ("aborted" if self.exit_status == "abort" else "done")
            acq = {"v": 1, "kind": "status", "source": "acquisition", "t": now, "run": "sim", "state": state,
                   "map": self.current_map, "archive": "/tmp/opmon-archive/sim/run.h5"}
            if state == "paused":            # why, as the acquisition service reports it (the dashboard's undo)
                acq.update(pause_reason=self.steering.pause_reason, paused_by=self.steering.paused_by,
                           paused_at=self.steering.paused_at)
            live = {"v": 1, "kind": "status", "source": "live", "t": now, "run": "sim", "state": "running",
                    "frames": self.rows_published * self.map_shape[1] * 30, "frames_per_s": fps, "frames_lost": 0,
                    "map": self.current_map, "maps_done": self.maps_done,
                    "map_progress": (self.rows_published % self.map_shape[0]) / self.map_shape[0]}
            with self.pub_lock:
                self.acq_pub.send_multipart([b"reading", pack(reading)])
                self.acq_pub.send_multipart([b"status", pack(acq)])
                self.live_pub.send_multipart([b"status", pack(live)])
