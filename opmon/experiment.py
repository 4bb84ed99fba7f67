"""The acquisition service of the simulated experiment: RunEngine, beamline, publishers, control.

Wiring only: the devices and plans come from `opmon.acquisition` and `opmon.simulators`, the
sockets from `opmon.streaming`. Frames go out zero-copy to the archiver and the live processor
(lossless PUSH, back-pressure), documents and potentiostat readings to the archiver (lossless)
and the dashboard (lossy), and the control channel steers the run through the RunEngine.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq
from bluesky import RunEngine
from bluesky.preprocessors import SupplementalData
from bluesky.utils import RequestAbort

from opmon.acquisition import CellCommand, PublisherSink, SteeringRequests, operando_series, rule_from_values
from opmon.archive_watch import ArchiverWatch
from opmon.onset_watch import OnsetWatch
from opmon.dose_region import ScanGrid
from opmon.dose_watch import DoseWatch
from opmon.phase_watch import PhaseWatch
from opmon.processors.phase import locate_reflection
from opmon.acquisition.survey import PhaseTracking
from opmon.recentre_watch import RecentreWatch, RecentringGate
from opmon.config import Config
from opmon.simulators.beamline import BeamlineConfig, SimulatedBeamline
from opmon.acquisition.cell_state import CellMode
from opmon.acquisition.mapping import FlyScan
from opmon.acquisition.steering import RunEngineSteering
from opmon.simulators.instrument import SxdmSetup
from opmon.streaming.archive.chunks import source_compressor
from opmon.streaming.control import ControlServer, resolve_token
from opmon.streaming.documents import DocumentPublisher
from opmon.streaming.publisher import ZmqFrameSink

log = logging.getLogger(__name__)


class _QuietAbort(logging.Filter):
    """An abort the user asked for is not an error with a traceback: keep bluesky's "Run aborted"
    line, drop the RequestAbort traceback (a real failure keeps its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], RequestAbort):
            record.exc_info, record.exc_text, record.levelno, record.levelname = None, None, logging.INFO, "INFO"
        return True


_QUIET_ABORT = _QuietAbort()


@dataclass
class ExperimentPlan:
    """What the simulated operando experiment does (defaults: a fast C/15 charge of LMNO).

    The map is kept small and the frames cropped to the detector window holding the peak,
    so a whole charge with several maps runs on a laptop in about a minute.
    """

    thresholds_v: list[float] = field(default_factory=lambda: [4.5, 4.7, 4.75, 4.8])
    period_s: float | None = None  # simulated seconds between periodic maps
    plateau: bool = False
    c_rate: float = 1.0 / 15.0
    cutoff_v: float = 4.9
    acceleration: float = 900.0  # simulated s per wall s: the 15 h charge in a minute
    map_shape: tuple[int, int] = (12, 12)
    n_angles: int = 30
    roi: tuple[int, int, int, int] | None = (96, 416, 160, 352)
    order: str = "point-outer"  # each map pixel completes at once, so partial maps fill in live
    fly: bool = False           # fly each map row (eta-outer order), the detector triggered by the trajectory
    point_time_s: float = 0.0005  # fly scan: exposure per point
    exposure_s: float = 0.01      # step scan: exposure per frame (SCIENCE.md: <= 10 ms per point)
    flux_ph_s: float = 1e9        # incident flux of the focused beam (SCIENCE.md: ~1e9 photons/s)
    dose_limit: float | None = None  # photons at one sample position that pause the run (None: no limit)
    dose_action: str = "pause"    # at the dose limit: pause, stop (finish cleanly) or move (the scan region)
    max_maps: int | None = None
    seed: int = 0
    on_onset: str = "none"        # map-now, shorter-period:S or finer-map when the live processor flags an onset
    map_step_um: float = 0.1      # the map grid's step (piezo)
    stage_drift_um: float = 0.0   # simulated sample creep between maps, at most this many µm (0: none)
    recentre: str = "off"         # "auto": shift the scan region after each map to keep the particle centred
    recentre_max_step_um: float = 2.0  # largest region move per map (µm)
    onset_cooldown_s: float = 30.0  # wall seconds between such extra maps
    # the paper's detector window: only the phase consumed on the current plateau is seen, so
    # transformed regions vanish and the integrated intensity per map fades (Supp. Fig. 10)
    window: str = "one-phase"
    # phase tracking ("auto" / "propose"): the detector window is the physical one (every phase at
    # its own Bragg angles, `phase_setup`) and the plan surveys for the next phase when one fades
    phase_tracking: str = "off"

    def setup(self) -> SxdmSetup:
        if self.phase_tracking != "off":
            setup = phase_setup(self.map_shape, self.n_angles)
            setup.map_step_um = self.map_step_um
            return setup
        return SxdmSetup(map_shape=self.map_shape, n_angles=self.n_angles, roi=self.roi, map_step_um=self.map_step_um)

    def dose_metadata(self) -> dict[str, Any]:
        """What each frame delivers, for the live dose map (start metadata ``dose``)."""
        return {"dose": {"exposure_s": self.point_time_s if self.fly else self.exposure_s,
                         "flux_ph_s": self.flux_ph_s, "step_um": self.setup().map_step_um}}


PHASE_TRACKING = ("off", "auto", "propose")
PHASE_START_D = 2.0370        # Å: delta and the rocking scan start on the middle of the Li1 solid solution
PAPER_ETA_RANGE = 0.48        # deg: seed 000's rocking scan (30 steps of 0.016°)


def phase_candidates() -> list[float]:
    """d (Å) of the crystal model's phases: Li0.9 (end of the Li1 solid solution), Li0.5, Li0."""
    from opmon.simulators.crystal import D_POINTS
    return sorted((float(d) for d in D_POINTS[:3]), reverse=True)


def phase_setup(map_shape: tuple[int, int], n_angles: int) -> SxdmSetup:
    """The simulated set-up for phase tracking: delta on 2θ of the imaged phase, the paper's
    0.48° rocking range, a detector window of ±64 rows: the next phase's reflection (0.27-0.34°
    away in 2θ, 170 rows) lies outside it until delta moves."""
    from opmon.acquisition.survey import two_theta_deg
    energy = 10000.0
    return SxdmSetup(map_shape=map_shape, n_angles=n_angles, roi=(192, 320, 160, 352), energy_ev=energy,
                     delta=two_theta_deg(PHASE_START_D, energy), eta_step=PAPER_ETA_RANGE / max(n_angles, 1))


#: A trigger rule from plain values (thresholds, period_s, plateau): the form the control channel
#: and the CLI speak (`opmon.acquisition.triggers.rule_from_values`).
make_rule = rule_from_values


class AcquisitionService:
    """One run of the simulated experiment, published on the configured endpoints."""

    def __init__(self, config: Config, plan: ExperimentPlan, token: str | None = None) -> None:
        self.config, self.plan = config, plan
        self.token: str = resolve_token(token, config.control.token)  # type: ignore[assignment]
        # no SigintHandler: `opmon demo` decides what Ctrl-C means (opmon.demo_signals)
        self.RE = RunEngine({}, call_returns_result=True, context_managers=[])
        bluesky_log = logging.getLogger("bluesky")
        if _QUIET_ABORT not in bluesky_log.filters:
            bluesky_log.addFilter(_QUIET_ABORT)
        self.publisher = ZmqFrameSink([config.endpoint("frames_archive"), config.endpoint("frames_live")],
                                      sndhwm=config.stream.sndhwm, stall_timeout_s=config.stream.stall_timeout_s,
                                      ack_endpoint=config.endpoint("frames_archive_ack"),
                                      spool_bytes=config.stream.archive_spool_bytes,
                                      archive_chunk_only=config.detector.compression == "bslz4")
        self.documents = DocumentPublisher(config.endpoint("docs"), config.endpoint("display_acquisition"),
                                           stall_timeout_s=config.stream.stall_timeout_s)
        self.sink = PublisherSink(self.publisher, metadata=plan.dose_metadata(),
                                  compress=source_compressor(config.detector.compression))
        self.RE.subscribe(self.documents)
        self.RE.subscribe(self.sink)
        tracking = plan.phase_tracking != "off"
        self.beamline = SimulatedBeamline(BeamlineConfig(setup=plan.setup(), acceleration=plan.acceleration,
                                                         seed=plan.seed, window="all" if tracking else plan.window,
                                                         stage_drift_um=plan.stage_drift_um), sink=self.sink)
        if plan.stage_drift_um > 0:   # the simulated creep's truth, as a monitored stream of the run
            self.RE.preprocessors.append(SupplementalData(monitors=[self.beamline.drift_truth.offset_um]))
        self.requests = SteeringRequests(loop=self.RE.loop)
        self.tracking = (PhaseTracking(phase_candidates(), locate_reflection, plan.phase_tracking)
                         if tracking else None)
        self.steering = RunEngineSteering(self.RE, self.requests, make_rule,
                                          phase=self.tracking.requests if self.tracking is not None else None)
        self.control = ControlServer(config.endpoint("control"), self.token, self.steering)
        self.archive_watch = ArchiverWatch(config.endpoint("display_archive"), self.steering)  # pauses on disk full
        grid = self.beamline.map_args()["grid"]
        self.onset_watch = (OnsetWatch(config.endpoint("display_live"), self.steering, plan.onset_cooldown_s,
                                       action=plan.on_onset, grid=ScanGrid(grid.origin_um, grid.step_um, grid.shape))
                            if plan.on_onset != "none" else None)
        self.dose_watch = (DoseWatch(config.endpoint("display_live"), self.control.endpoint, self.token, plan.dose_limit,
                                     action=plan.dose_action, grid=ScanGrid(grid.origin_um, grid.step_um, grid.shape),
                                     allowed=self.steering.allows)
                           if plan.dose_limit is not None else None)       # acts at the dose limit
        self.phase_watch = (PhaseWatch(config.endpoint("display_live"), self.tracking.requests)
                            if self.tracking is not None else None)      # a survey when the reflection fades
        self.recentre_watch = (RecentreWatch(config.endpoint("display_live"), self.control.endpoint, self.token,
                                             plan.recentre_max_step_um) if plan.recentre == "auto" else None)
        if self.recentre_watch is not None:         # reads the grid and each map's region shift from the documents
            self.RE.subscribe(self.recentre_watch.on_document)
        self._stop = threading.Event()
        self._status_thread = threading.Thread(target=self._publish_status, name="opmon-acq-status", daemon=True)

    @property
    def watches(self) -> list[Any]:
        """The watchers of the live and archive messages this run has (archive always; onset, dose,
        phase and re-centring when asked for), started with the run and closed with it."""
        return [w for w in (self.archive_watch, self.onset_watch, self.dose_watch, self.phase_watch,
                            self.recentre_watch) if w is not None]

    def _publish_status(self) -> None:
        while not self._stop.wait(0.5):
            pub = self.publisher
            state = str(self.RE.state)
            status = {"run": self.documents.run, "state": state, "frames": pub.seq, "map": pub.map_number,
                      "maps_done": pub.n_maps, "dose_limit": self.plan.dose_limit}
            if state == "paused":        # why, and which automatic action paused (the dashboard's undo)
                status.update(pause_reason=self.steering.pause_reason, paused_by=self.steering.paused_by,
                              paused_at=self.steering.paused_at)
            self.documents.publish_status(status)

    def run(self) -> str:
        """Run the operando series to the end of the charge; returns the exit status."""
        bl, p = self.beamline, self.plan
        charge = CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(p.c_rate), cutoff=p.cutoff_v)
        rule = make_rule(p.thresholds_v, p.period_s, p.plateau)
        # maps asked for back to back wait (bounded) until the last map's re-centring is decided
        gate = RecentringGate(self.recentre_watch.waiting_for) if self.recentre_watch is not None else None
        series = operando_series(*bl.devices, **bl.map_args(), triggers=rule, charge=charge, order=p.order,
                                 requests=self.requests, max_maps=p.max_maps,
                                 fly=FlyScan(p.point_time_s) if p.fly else None, phase=self.tracking, map_gate=gate,
                                 md={"sample": "LiNi0.5Mn1.5O4 single crystal (simulated)", "opmon_demo": True})
        self.control.start()
        for watch in self.watches:
            watch.start()
        self._status_thread.start()
        started = time.monotonic()
        try:
            return self.steering.run(series, self._stop)
        finally:
            log.info("acquisition finished in %.1f s", time.monotonic() - started)

    def close(self, linger_s: float | None = None) -> None:
        """Release sockets and the beamline; safe to call more than once.

        Frames already sent leave before the sockets close (up to the stall timeout, or
        `linger_s` when stopping must end in bounded time: then a receiver that is gone
        cannot hold the process; the run's closing message waits as long at most).
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self.control.close()
        for watch in self.watches:
            watch.close()
        if linger_s is not None:     # the plan is over: nobody else uses these sockets now
            for sock in [*self.publisher.sockets, *([self.documents.docs] if self.documents.docs is not None else [])]:
                sock.setsockopt(zmq.LINGER, int(linger_s * 1000))
                sock.setsockopt(zmq.SNDTIMEO, int(linger_s * 1000))
            acked = getattr(self.publisher, "archive", None)     # an acknowledged archive stream
            if acked is not None and hasattr(acked, "stall_timeout_s"):  # waits for the archiver as briefly
                acked.stall_timeout_s = min(acked.stall_timeout_s, linger_s)
        self.beamline.close()
        self.publisher.close()
        self.documents.close()
