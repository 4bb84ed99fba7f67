"""The fan-out live processor: N worker processes take frames straight from the detector stream.

`FanOutProcessor` is the coordinator: it starts the workers (`worker`), which connect to
the detector's frame stream themselves, so ZeroMQ deals frames among them and every frame
crosses one socket, as in the inline processor. The coordinator never touches a frame. It
rebuilds the run from the control messages the workers pass on, tells every worker the
geometry, ROI and map shapes, counts the frames the workers report (loss = frames sent in a
map minus frames accumulated, or filled from the archive), and merges the workers' additive
sums into partial and final maps: it runs the same engine (`engine.LiveRun`, `roi.RoiDecider`)
and the same outputs (`service.LiveService`) as the inline processor, fed with sums, not frames.
The ROI follows the peak as inline: each map's own ROI comes from the workers' picks (`roi.MapPicks`,
handed in with their final sums); the next map's ROI is told to the workers before they take its
frames (they hold them till then); a map taken with a provisional ROI is re-made from the archive,
else by the workers from the frames they held. Control messages reach the coordinator through different workers, so
nothing here depends on their order: a map is final when every frame sent in it has been
accumulated (or after a grace period), a run ends when its maps are final.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.errors import ArchiveError, CorruptFrameError, OpmonError
from opmon.processors.accumulate import Roi
from opmon.processors.live import worker as W
from opmon.processors.live.engine import LiveMap, LiveRun, frame_count, make_accumulator, spot_options
from opmon.processors.live.roi import MapPicks
from opmon.processors.live.service import LiveService
from opmon.processors.live.recovery import recover_missed_maps
from opmon.streaming import protocol as P
from opmon.streaming.archive.reader import RunArchive
from opmon.streaming.receiver import Counters, FinishedRuns

log = logging.getLogger(__name__)

#: longest wait for the workers' next ROI sums once a map is closed and the ROI is still undecided
ROI_SHARE_WAIT_S = 15.0
#: longest wait for the workers' re-made sums of a map (from the frames they held); then it keeps its live sums
REMAKE_WAIT_S = 30.0

State = dict[str, np.ndarray]


@dataclass
class HandedIn:
    """What the workers handed in for one map, until its final maps are made."""

    seqs: set[int] = field(default_factory=set)       # sequence numbers a worker accumulated
    rois: dict[int, list[int]] = field(default_factory=dict)        # worker -> the ROI its final sums were taken with
    held: dict[int, bool] = field(default_factory=dict)             # worker -> it holds every frame of its share
    remake: Any = None                                               # the MapPlan the workers re-make the map with
    remade: dict[int, State | None] = field(default_factory=dict)   # worker -> its re-made sums
    kept: Any = None                                                 # the live sums, if the re-made ones never come
    remake_t: float = 0.0                                            # when the workers were asked to re-make it
    picks: dict[int, tuple[int, int]] = field(default_factory=dict)  # worker -> picks summed, looked at by its finder
    partials: dict[int, State] = field(default_factory=dict)        # worker -> latest partial sums
    finals: dict[int, State | None] = field(default_factory=dict)   # worker -> final sums
    last_activity: float = field(default_factory=time.monotonic)


@dataclass
class Gathering:
    """The coordinator's side of one run: what reached it through which worker."""

    maps: dict[int, HandedIn] = field(default_factory=dict)
    roi_from: set[int] = field(default_factory=set)   # workers whose ROI sums came since the last try
    last_share: float = field(default_factory=time.monotonic)   # when the latest ROI sum came (or the run began)
    stop: dict[str, Any] | None = None
    stop_t: float = 0.0
    roi_pending: set[int] = field(default_factory=set)   # maps whose ROI waits for the previous map's end


class FanOutProcessor(LiveService):
    """Coordinator of N live workers (same outputs and status as `LiveProcessor`).

    Parameters are those of `LiveProcessor`; `grace_s` is how long a map whose frames did not
    all arrive waits before it is made final with the missing ones counted as lost. `rcvhwm` is
    the whole processor's receive queue, split among the workers, so as many frames wait (and
    as much latency builds up when the stream outruns the processor) whatever their number.
    """

    def __init__(self, frames_endpoint: str, display_endpoint: str | None = None, maps_endpoint: str | None = None, *,
                 workers: int = 2, publish_interval_s: float = 0.25, roi: Roi | str | None = "auto",
                 roi_frames: int = 64, roi_wait_s: float = 0.25, threshold: int = 0, background: Any = "auto",
                 register: str = "tilt", peak_fit: str = "off", archive_dir: str | Path | None = None, rcvhwm: int = 200, context: zmq.Context | None = None,
                 grace_s: float = 2.0, ask_wait_s: float = 0.5, powder_spots: str = "auto") -> None:
        if workers < 2:
            raise OpmonError(f"fan-out needs workers >= 2, got {workers} (1 worker runs inline)")
        self._init_service(context, display_endpoint, maps_endpoint, publish_interval_s=publish_interval_s, roi=roi,
                           roi_frames=roi_frames, roi_wait_s=roi_wait_s, threshold=threshold, background=background,
                           archive_dir=archive_dir, workers=workers, register=register, powder_spots=powder_spots,
                           peak_fit=peak_fit)
        self.grace_s, self.ask_wait_s = grace_s, ask_wait_s
        self.counters = Counters()
        self.runs: dict[str, LiveRun] = {}
        self.gathering: dict[str, Gathering] = {}
        self.finished = FinishedRuns()
        self.asks: dict[str, tuple[float, int]] = {}      # unknown run -> (asked at, first map seen)
        self.held_controls: dict[str, list[list[Any]]] = {}  # control messages of a run not known yet
        self.recovered = 0
        self._last_check = 0.0
        self._dir = tempfile.mkdtemp(prefix="opmon-fanout-")
        self.reports = self.context.socket(zmq.PULL)
        self.reports.setsockopt(zmq.LINGER, 0)
        self.reports.bind(f"ipc://{self._dir}/reports")
        self.inboxes: list[zmq.Socket] = []
        self.processes: list[Any] = []
        self.worker_rcvhwm: dict[int, int] = {}     # as each worker's frame socket has it
        spawn = multiprocessing.get_context("spawn")
        options = {"publish_interval_s": publish_interval_s, "roi_frames": roi_frames, "roi_wait_s": roi_wait_s,
                   "rcvhwm": max(1, -(-rcvhwm // workers)), "parent_pid": os.getpid()}
        for i in range(workers):
            inbox = self.context.socket(zmq.PUSH)
            inbox.setsockopt(zmq.LINGER, 0)
            inbox.bind(f"ipc://{self._dir}/worker{i}")
            self.inboxes.append(inbox)
            proc = spawn.Process(target=W.worker_main, name=f"opmon-live-worker-{i}", daemon=True,
                                 args=(i, workers, frames_endpoint, f"ipc://{self._dir}/worker{i}",
                                       f"ipc://{self._dir}/reports", options))
            proc.start()
            self.processes.append(proc)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until every worker has loaded its kernels and joined the stream (bounded)."""
        ready: set[int] = set()
        deadline = time.monotonic() + timeout_s
        try:
            while len(ready) < self.n_workers and time.monotonic() < deadline:
                if self.reports.poll(100):
                    parts = self.reports.recv_multipart()
                    if parts[0] == W.READY:
                        info = P.unpack(parts[1])
                        ready.add(int(info["worker"]))
                        self.worker_rcvhwm[int(info["worker"])] = info["rcvhwm"]
                self._check_workers()
            if len(ready) < self.n_workers:
                raise OpmonError(f"only {len(ready)} of {self.n_workers} live workers started within {timeout_s:.0f} s")
        except OpmonError:
            self.close()
            raise
        self._tell(W.GO, {})

    def _check_workers(self) -> None:
        dead = [p.name for p in self.processes if p.exitcode is not None]
        if dead:      # its sums are gone: let the supervisor restart the service, which recovers from the archive
            raise OpmonError(f"live worker process(es) {', '.join(dead)} exited")

    # -- orders to the workers -------------------------------------------------------------------
    def _tell(self, kind: bytes, header: dict[str, Any], *buffers: Any, worker: int | None = None) -> None:
        parts = [kind, P.pack(header), *buffers]
        for i, inbox in enumerate(self.inboxes):
            if worker is None or worker == i:
                inbox.send_multipart(parts)

    def _setup(self, run: LiveRun, worker: int | None = None) -> None:
        pending = self.gathering[run.uid].roi_pending
        header = dict(run.start, options=run.options, follows=run.follows,
                      map_shapes={str(m): list(lm.map_shape) for m, lm in run.maps.items()},
                      maps={str(m): {"n_frames": lm.n_expected, "roi": list(lm.roi) if lm.roi is not None else None,
                                     "provisional": lm.provisional, "roi_pending": m in pending}
                            for m, lm in run.maps.items()})
        buffers = [np.ascontiguousarray(run.mask)] if run.mask is not None else []
        self._tell(W.SETUP, header, *buffers, worker=worker)

    # -- runs and maps ---------------------------------------------------------------------------
    def _begin_run(self, start: dict[str, Any], mask: npt.NDArray[np.uint8] | None, *, adopted: bool,
                   roi: Roi | None = None, first_map: int | None = None) -> LiveRun:
        run = self.runs[start["run"]] = self._new_run(start, mask, adopted=adopted, roi=roi)
        self.gathering[run.uid] = Gathering()
        if first_map is not None:      # joined mid-map: its map_start went to the processor before us
            run.map(first_map)
            self._handed_in(run, first_map)
        self.asks.pop(run.uid, None)
        self._setup(run)
        for parts in self.held_controls.pop(run.uid, []):
            self._on_control(parts)
        return run

    def _handed_in(self, run: LiveRun, number: int) -> HandedIn:
        maps = self.gathering[run.uid].maps
        if number not in maps:
            maps[number] = HandedIn()
        return maps[number]

    def _decide_roi(self, run: LiveRun, settle: bool = True) -> None:
        """Fix the run's ROI from the workers' sums of their first frames; unless `settle`,
        ask for more while they show no Bragg peak (see `RoiDecider`)."""
        if run.roi is not None or run.roi_decider is None:
            return
        frames, sources = run.roi_decider.frames, run.roi_decider.sources
        self.gathering[run.uid].roi_from = set()
        mask = run.mask
        if run.decide_roi(settle=settle) is None:
            self._tell(W.ROI, {"run": run.uid, "roi": None})
            return
        self.roi_decided_at = time.time()
        log.info("run %s: ROI %s from its first %d frames (%d workers)", run.uid, run.roi, frames, sources)
        found = [np.ascontiguousarray(run.mask)] if run.mask is not mask and run.mask is not None else []
        self._tell(W.ROI, {"run": run.uid, "roi": run.options["roi"], "provisional": run.provisional},
                   *found)   # with hot/dead pixels found: the new mask; provisional: the map's end decides again

    def _fill_from_archive(self, run: LiveRun, lm: LiveMap) -> None:
        """Frames of a map the workers never accumulated (processor restarted mid-map, a
        worker's queue lost): read them from the archive, which holds every frame."""
        if self.archive_dir is None or lm.n_sent is None or lm.received >= lm.n_sent or run.roi is None:
            return
        archive = RunArchive(self.archive_dir, run.uid)
        if not archive.has_frames(lm.number):
            return
        seqs = self._handed_in(run, lm.number).seqs
        before = lm.received
        try:
            for header, frame in archive.frames(lm.number, wait_s=10.0):
                if header["seq"] in seqs:
                    continue
                self._feed_here(run, header, frame)
        except (ArchiveError, CorruptFrameError, OSError, KeyError) as exc:
            log.error("run %s map %d: missing frames not recovered: %s", run.uid, lm.number, exc)
        log.warning("run %s map %d: %d frames recovered from the archive", run.uid, lm.number, lm.received - before)

    def _feed_here(self, run: LiveRun, header: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        run.count_dose(header)
        run.accumulate(header, frame)
        self.recovered += 1

    def _request_final(self, run: LiveRun, lm: LiveMap) -> None:
        if lm.ended:
            return
        if run.roi is None:
            self._decide_roi(run)
        self._fill_from_archive(run, lm)
        lm.ended = True
        # with the map's frame count: a worker that never learnt it (a map_start without one: the bluesky path)
        # re-sums its picks as `opmon process` samples them, and gives up eta scans its frames are not
        self._tell(W.FINAL, {"run": run.uid, "map": lm.number, "n_frames": frame_count(lm) or lm.received})

    def _finish_map(self, run: LiveRun, lm: LiveMap) -> None:
        handed = self.gathering[run.uid].maps.pop(lm.number, HandedIn())
        finals = self._take_picks(run, lm, handed)
        acc = run.merged(lm, finals)
        expected = lm.n_sent if lm.n_sent is not None else lm.n_expected
        lost = max(0, expected - lm.received)
        self.counters.lost += lost
        if acc.frames_seen != lm.received:
            log.error("run %s map %d: sums hold %d frames, %d were reported", run.uid, lm.number, acc.frames_seen,
                      lm.received)
        plan = run.map_plan(lm)
        if self.archive_dir is None and run.remake_wanted(lm, plan) and len(handed.held) == self.n_workers \
                and all(handed.held.values()):      # every worker holds its share: they re-make it (no archive)
            handed.remake, handed.finals, handed.kept, handed.remake_t = plan, {}, acc, time.monotonic()
            self.gathering[run.uid].maps[lm.number] = handed
            found = [np.ascontiguousarray(plan.mask)] if plan.mask is not None else []  # type: ignore[union-attr]
            spots = plan.spots.arrays() if plan.spots is not None and plan.spots.n_spots else []  # type: ignore[union-attr]
            self._tell(W.REMAKE, {"run": run.uid, "map": lm.number, "roi": list(plan.roi), "mask": bool(found),  # type: ignore[union-attr]
                                  "spots": [str(a.dtype) for a in spots], "n_frames": frame_count(lm) or lm.received},
                       *found, *(np.ascontiguousarray(a) for a in spots))
            run.conclude_map(lm, plan)            # the next map's ROI need not wait for the re-made sums
            self._release_pending(run)
            return
        if handed.held:
            self._tell(W.REMAKE, {"run": run.uid, "map": lm.number, "roi": None})    # drop the held frames
        self._final_own_roi(run, lm, acc, n_frames=lm.n_expected, frames_lost=lost)
        self._release_pending(run)

    def _remakes_overdue(self, run: LiveRun, now: float) -> None:
        """A map whose re-made sums did not all come within REMAKE_WAIT_S keeps its live sums (logged)."""
        for number, handed in list(self.gathering[run.uid].maps.items()):
            if handed.remake is None or now - handed.remake_t < REMAKE_WAIT_S:
                continue
            self.gathering[run.uid].maps.pop(number)
            lm = run.map(number)
            log.error("run %s map %d: %d of %d workers re-made it within %.0f s; kept with ROI %s", run.uid, number,
                      len(handed.remade), self.n_workers, REMAKE_WAIT_S, lm.roi)
            expected = lm.n_sent if lm.n_sent is not None else lm.n_expected
            self._final(run, lm, handed.kept, n_frames=lm.n_expected, frames_lost=max(0, expected - lm.received))
            self._release_pending(run)

    def _finish_remade(self, run: LiveRun, lm: LiveMap) -> None:
        """Every worker re-made its share of `lm` with the map's own ROI: its final maps, then the maps to come."""
        handed = self.gathering[run.uid].maps.pop(lm.number)
        plan = handed.remake
        options = dict(run.options, roi=list(plan.roi), **spot_options(plan))
        acc = make_accumulator(run.geometry, lm.map_shape, plan.mask, options, n_frames=frame_count(lm) or lm.received)
        for state in handed.remade.values():
            if state:
                acc.load_state(state)
        log.info("run %s map %d: re-made by the workers with its own ROI %s (was %s)", run.uid, lm.number, plan.roi,
                 lm.roi)
        expected = lm.n_sent if lm.n_sent is not None else lm.n_expected
        self._final(run, lm, acc, n_frames=lm.n_expected, frames_lost=max(0, expected - lm.received), options=options)
        self._release_pending(run)      # maps that waited for this one's end get their ROI now

    def _take_picks(self, run: LiveRun, lm: LiveMap, handed: HandedIn) -> list[State | None]:
        """The workers' final sums of `lm` without their picks, which add up into `lm.picks` (its own
        ROI); `lm` takes the ROI the sums were taken with (a worker that waited too long for it took the run's)."""
        finals: list[State | None] = []
        used = {tuple(roi) for roi in handed.rois.values()}
        if len(used) > 1:
            log.error("run %s map %d: workers took different ROIs %s; merged with %s", run.uid, lm.number,
                      sorted(used), lm.roi)
        elif used and lm.roi is None:
            lm.roi, lm.provisional = used.pop(), run.provisional      # type: ignore[assignment]
        elif used and used != {tuple(lm.roi or ())}:
            log.warning("run %s map %d: workers took ROI %s, not %s", run.uid, lm.number, used, lm.roi)
            lm.roi = used.pop()                                          # type: ignore[assignment]
        for worker, state in handed.finals.items():
            if state and W.PICKS_TOTAL in state:
                frames, looked_at = handed.picks.get(worker, (0, 0))
                if lm.picks is None:
                    lm.picks = MapPicks(lm.n_expected, per_scan=run.finds_spots)
                scans = (state.pop(W.PICKS_SCAN_ETA), state.pop(W.PICKS_SCANS), True) if W.PICKS_SCANS in state else None
                lm.picks.merge(state.pop(W.PICKS_TOTAL), frames, state.pop(W.PICKS_STANDOUT, None), looked_at, scans,
                               state.pop(W.PICKS_ETA_VALUES, ()))
            finals.append(state)
        return finals

    def _map_roi(self, run: LiveRun, lm: LiveMap) -> None:
        """At `lm`'s map_start: its ROI is the run's now, or (the ROI following the peak) waits for the
        previous map's end while that map is not final; the workers hold its frames till then."""
        before = run.maps.get(lm.number - 1)
        if run.follows and before is not None and not before.done:
            self.gathering[run.uid].roi_pending.add(lm.number)
        elif run.roi is not None and lm.roi is None:
            lm.roi, lm.provisional = run.roi, run.provisional

    def _release_pending(self, run: LiveRun) -> None:
        """Tell the workers the ROI of the maps that waited for a previous map's end (now final)."""
        pending = self.gathering[run.uid].roi_pending
        for number in sorted(pending):
            before = run.maps.get(number - 1)
            if before is not None and not before.done:
                continue
            pending.discard(number)
            lm = run.map(number)
            self._handed_in(run, number).last_activity = time.monotonic()   # its grace period counts from now
            lm.roi, lm.provisional = run.roi, run.provisional
            self._tell(W.ROI, {"run": run.uid, "roi": list(run.roi) if run.roi is not None else None, "map": number,
                               "provisional": run.provisional})

    def _end_run(self, run: LiveRun) -> None:
        stop = self.gathering.pop(run.uid).stop
        status = stop["exit_status"] if stop else "abort"
        self.runs.pop(run.uid, None)
        self.finished.add(run.uid, status)
        self._tell(W.END, {"run": run.uid})
        log.info("run %s ended (%s): %d maps", run.uid, status, len(run.maps))

    def _advance(self) -> None:
        """Make final every map whose frames are all in (or whose wait is over); end finished runs."""
        now = time.monotonic()
        for run in list(self.runs.values()):
            gathering = self.gathering[run.uid]
            decider = run.roi_decider
            if run.roi is None and decider is not None and gathering.roi_from and (
                    len(gathering.roi_from) >= self.n_workers or decider.due(now)):
                self._decide_roi(run, settle=False)
            self._remakes_overdue(run, now)
            for lm in list(run.maps.values()):
                if lm.done or lm.ended or lm.number in gathering.roi_pending:   # pending: its frames wait for the ROI
                    continue
                closed = lm.n_sent is not None or gathering.stop is not None
                if lm.n_sent is not None and lm.received >= lm.n_sent:
                    self._request_final(run, lm)
                elif closed and now - self._handed_in(run, lm.number).last_activity >= self.grace_s \
                        and not self._roi_shares_pending(run, gathering, now):
                    if lm.n_sent is None:
                        lm.n_sent = lm.received
                    self._request_final(run, lm)
            stop = gathering.stop
            if stop is not None and all(lm.done for lm in run.maps.values()) and (
                    len(run.maps) >= int(stop.get("n_maps", 0)) or now - gathering.stop_t >= self.grace_s):
                self._end_run(run)

    def _roi_shares_pending(self, run: LiveRun, gathering: Gathering, now: float) -> bool:
        """The auto ROI is undecided and the workers hold frames their sums did not count yet:
        settling now would fix the ROI from part of the frames (a worker starved of CPU reports
        late), so wait for their next sums, up to ROI_SHARE_WAIT_S after the latest one."""
        decider = run.roi_decider
        if run.roi is not None or decider is None:
            return False
        sent = sum(lm.n_sent or 0 for lm in run.maps.values())
        return decider.frames < sent and now - gathering.last_share < ROI_SHARE_WAIT_S

    def _abort_open_runs(self, reason: str, keep: str | None = None) -> None:
        """Every open run but `keep` with no stop yet ends as aborted (a newer run began)."""
        for uid, gathering in self.gathering.items():
            if uid != keep and gathering.stop is None:
                log.warning("run %s %s while %s had no stop: counted as aborted", keep, reason, uid)
                gathering.stop, gathering.stop_t = {"exit_status": "abort", "n_maps": 0}, time.monotonic()

    # -- reports from the workers ------------------------------------------------------------------
    def _on_control(self, parts: list[Any]) -> None:
        try:
            msg = P.parse(parts)
        except P.RejectedMessage as exc:      # the worker checked it already; never trust blindly
            self.counters.rejected[exc.reason] += 1
            return
        h = msg.header
        uid = h["run"]
        if uid in self.finished:
            self.counters.rejected["stale"] += 1
            return
        if msg.kind == "start":
            self.counters.control += 1
            self._abort_open_runs("started", keep=uid)
            if uid not in self.runs:
                self._begin_run(h, None if msg.array is None else np.array(msg.array), adopted=False)
            return
        run = self.runs.get(uid)
        if run is None:     # its start may still be on its way through another worker: hold it
            self.held_controls.setdefault(uid, []).append(parts)
            self._note_ask(uid, h.get("map"))
            return
        self.counters.control += 1
        if msg.kind == "map_start":
            lm = run.map_started(h["map"], h["map_shape"], h["n_frames"])
            self._handed_in(run, lm.number)          # its grace period counts from here
            self._map_roi(run, lm)
            self._tell(W.MAP, {"run": uid, "map": lm.number, "map_shape": list(lm.map_shape), "n_frames": lm.n_expected,
                               "roi": list(lm.roi) if lm.roi is not None else None, "provisional": lm.provisional,
                               "roi_pending": lm.number in self.gathering[uid].roi_pending})
        elif msg.kind == "map_end":
            lm = run.map(h["map"])
            lm.n_sent = h["n_frames"]
            self._handed_in(run, lm.number).last_activity = time.monotonic()
        elif msg.kind == "stop":
            gathering = self.gathering[uid]
            gathering.stop, gathering.stop_t = h, time.monotonic()

    def _adopt(self, uid: str, first_map: int) -> LiveRun | None:
        """A run whose start we never saw (restarted mid-run): recover it from the archive."""
        if self.archive_dir is None:
            return None
        archive = RunArchive(self.archive_dir, uid)
        try:
            found = archive.start()
            roi = archive.roi() if found is not None else None
        except (ArchiveError, OSError, KeyError) as exc:
            log.error("cannot recover the start of run %s: %s", uid, exc)
            return None
        if found is None:
            return None
        self._abort_open_runs("joined mid-stream", keep=uid)
        log.warning("joined run %s mid-stream (start recovered)", uid)
        run = self._begin_run(found[0], found[1], adopted=True, roi=roi, first_map=first_map)
        if run.roi is not None:
            self.recovered += recover_missed_maps(archive, first_map, lambda h, f: self._feed_here(run, h, f),
                                                  lambda number: self._adopted_map_end(run, number))
        return run

    def _adopted_map_end(self, run: LiveRun, number: int) -> None:
        lm = run.map(number)
        lm.n_sent = lm.received

    def _on_ask(self, header: dict[str, Any]) -> None:
        uid = header["run"]
        if uid in self.runs:
            self._setup(self.runs[uid], worker=header["worker"])
        elif uid in self.finished:
            self._tell(W.END, {"run": uid}, worker=header["worker"])
        else:      # its start may still be on its way through another worker
            self._note_ask(uid, header.get("map"))

    def _note_ask(self, uid: str, number: int | None) -> None:
        """Remember an unknown run and the earliest map seen of it: maps before that one ran
        while nobody was listening and are made from the archive if the run is adopted."""
        asked, first = self.asks.get(uid, (time.monotonic(), 1 << 62))
        self.asks[uid] = (asked, min(first, int(number)) if number is not None else first)

    def _resolve_asks(self) -> None:
        now = time.monotonic()
        for uid, (asked, first_map) in list(self.asks.items()):
            if uid in self.runs or now - asked < self.ask_wait_s:
                continue
            del self.asks[uid]
            if self._adopt(uid, first_map if first_map < 1 << 62 else 0) is None:
                held = self.held_controls.pop(uid, [])
                self.counters.rejected["unknown_run"] += len(held)
                log.error("run %s has no start (and none in the archive): its frames and %d control messages are "
                          "rejected", uid, len(held))
                self._tell(W.UNKNOWN, {"run": uid})

    def _on_seen(self, header: dict[str, Any], rows: npt.NDArray[np.float64]) -> None:
        for reason, n in header["rejected"].items():
            self.counters.rejected[reason] += n
        if not len(rows):
            return
        run = self.runs.get(header["run"])
        if run is None:
            self.errors += 1
            log.error("worker %d accumulated %d frames of run %s, which is not open", header["worker"], len(rows),
                      header["run"])
            return
        seqs = rows[:, 0].astype(np.int64)
        now = time.monotonic()
        for number in np.unique(rows[:, 1]).astype(int):
            sel = rows[:, 1] == number
            lm = run.map(int(number))
            handed = self._handed_in(run, lm.number)
            before = len(handed.seqs)
            handed.seqs.update(seqs[sel].tolist())
            added = len(handed.seqs) - before
            if added != int(sel.sum()):
                self.counters.duplicate += int(sel.sum()) - added
                log.error("run %s map %d: a frame was accumulated twice", run.uid, lm.number)
            lm.received += added
            handed.last_activity, lm.dirty = now, True
            lm.unpublished_t.extend(rows[sel, 3].tolist())
        self.counters.accepted += len(rows)
        if run.dose is not None:
            for number, index, x, y, monitor in rows[:, [1, 5, 6, 7, 8]].tolist():
                run.count_dose({"map": int(number), "index": int(index), "x": None if math.isnan(x) else x,
                                "y": None if math.isnan(y) else y, "monitor": None if math.isnan(monitor) else monitor})
        for seq, t_sent, t_done in zip(seqs.tolist(), rows[:, 3].tolist(), rows[:, 4].tolist()):
            self._accumulated(t_done - t_sent, seq, t_done)

    def _on_roi_sum(self, header: dict[str, Any], buf: Any, counts: Any = None) -> None:
        run = self.runs.get(header["run"])
        if run is None or run.roi_decider is None:
            return
        image = np.frombuffer(buf, dtype=np.uint64).reshape(header["shape"]) if header["frames"] else np.zeros(0)
        standout = (np.frombuffer(counts, dtype=np.uint32).reshape(header["shape"]).copy()
                    if counts is not None and header["frames"] else None)
        run.roi_decider.share(header["worker"], image.copy(), header["frames"], standout)   # running sums: the latest wins
        self.gathering[run.uid].roi_from.add(header["worker"])
        self.gathering[run.uid].last_share = time.monotonic()

    def _on_state(self, parts: list[Any]) -> None:
        header, state = W.decode_state(parts)
        run = self.runs.get(header["run"])
        if run is None:
            return
        lm = run.maps.get(header["map"])
        if lm is None or lm.done:
            return
        handed = self._handed_in(run, lm.number)
        if header.get("remade"):
            handed.remade[header["worker"]] = state or None
            if handed.remake is not None and len(handed.remade) == self.n_workers:
                self._finish_remade(run, lm)
            return
        if header["final"]:
            handed.finals[header["worker"]] = state or None
            if "held" in header:
                handed.held[header["worker"]] = bool(header["held"])
            if header.get("roi") is not None:
                handed.rois[header["worker"]] = header["roi"]
            if header.get("picks_frames"):
                handed.picks[header["worker"]] = (int(header["picks_frames"]), int(header["picks_looked_at"]))
            if len(handed.finals) == self.n_workers:
                self._finish_map(run, lm)
        else:
            handed.partials[header["worker"]] = state
            lm.dirty = True

    def _take_reports(self, timeout_ms: int) -> None:
        if not self.reports.poll(timeout_ms):
            return
        deadline = time.monotonic() + self.publish_interval_s
        while time.monotonic() < deadline:
            try:
                parts = self.reports.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            kind = parts[0].bytes
            try:
                if kind == W.CTRL:
                    self._on_control(parts[1:])
                elif kind == W.SEEN:
                    self._on_seen(P.unpack(parts[1].bytes), np.frombuffer(parts[2].buffer).reshape(-1, len(W.SEEN_COLUMNS)))
                elif kind == W.STATE:
                    self._on_state(parts)
                elif kind == W.ROISUM:
                    self._on_roi_sum(P.unpack(parts[1].bytes), parts[2].buffer,
                                     parts[3].buffer if len(parts) > 3 else None)
                elif kind == W.ASK:
                    self._on_ask(P.unpack(parts[1].bytes))
            except OpmonError as exc:        # one bad map must not stop the others
                self.errors += 1
                log.error("report %s from a live worker not processed: %s", kind, exc)

    def _open_runs(self) -> set[str]:
        return set(self.runs)

    def _live_runs(self) -> list[LiveRun]:
        return list(self.runs.values())

    # -- publication and status --------------------------------------------------------------------
    def publish_partials(self) -> None:
        """Merged partial maps of every map in progress with new frames (lossy display channel)."""
        for run in self.runs.values():
            if run.roi is None:
                continue
            for lm in run.maps.values():
                handed = self.gathering[run.uid].maps.get(lm.number)
                partials = list(handed.partials.values()) if handed is not None else []
                if lm.done or not lm.dirty or not (partials or lm.acc):
                    continue
                lm.dirty = False
                self._partial(run, lm, run.merged_partial(lm, partials), n_frames=lm.n_expected, frames_lost=0)

    def status(self) -> dict[str, Any]:
        """Lossy status message of docs/protocol.md (same fields as the inline processor)."""
        run = max(self.runs.values(), key=lambda r: self.gathering[r.uid].stop is None, default=None)
        current = run.current_map() if run else None
        return self._status_message(
            run=run.uid if run else None, lost=self.counters.lost, rejected=dict(self.counters.rejected),
            map_number=current.number if current else None,
            map_progress=current.received / current.n_expected if current and current.n_expected else None,
            maps_done=sum(lm.done for lm in run.maps.values()) if run else len(self.summaries),
            recovered=self.recovered)

    # -- loop --------------------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 50) -> None:
        """Take the workers' reports for up to `timeout_ms`; finalize, publish and check on time."""
        self._take_reports(min(timeout_ms, 20))
        self._resolve_asks()
        self._advance()
        self.outputs.send_unarchived()
        now = time.monotonic()
        self._housekeeping(now)
        if now - self._last_check >= 1.0:
            self._last_check = now
            self._check_workers()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (started, not necessarily alive)."""
        return [p.pid for p in self.processes if p.pid is not None]

    def close(self) -> None:
        """Stop the workers, close every socket (final maps still queued are logged)."""
        self._close_remaker()
        for inbox in self.inboxes:
            try:
                inbox.send_multipart([W.QUIT], zmq.NOBLOCK)
            except zmq.Again:
                pass
        for proc in self.processes:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        self.processes = []
        for sock in [*self.inboxes, self.reports]:
            sock.close(linger=0)
        self.inboxes = []
        self.outputs.close()
        shutil.rmtree(self._dir, ignore_errors=True)
