"""The fan-out live processor: N worker processes take frames straight from the detector stream.

`FanOutProcessor` is the coordinator: it starts the workers (`live_worker`), which connect to
the detector's frame stream themselves, so ZeroMQ deals frames among them and every frame
crosses one socket, as in the inline processor. The coordinator never touches a frame. It
rebuilds the run from the control messages the workers pass on, tells every worker the
geometry, ROI and map shapes, counts the frames the workers report (loss = frames sent in a
map minus frames accumulated, or filled from the archive), and merges the workers' additive
sums into partial and final maps, published exactly as the inline processor does
(`live_outputs`). Control messages reach the coordinator through different workers, so
nothing here depends on their order: a map is final when every frame sent in it has been
accumulated (or after a grace period), a run ends when its maps are final.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.errors import ArchiveError, CorruptFrameError, OpmonError
from opmon.processors import live_worker as W
from opmon.processors.accumulate import MomentAccumulator, Roi
from opmon.processors.live_outputs import MapOutputs
from opmon.processors.live_recovery import recover_missed_maps
from opmon.processors.live_service import LiveService
from opmon.processors.live_state import ROI_MAX_FRAMES, RoiSum, accumulator_options, geometry_of, initial_roi
from opmon.streaming import protocol as P
from opmon.streaming.archive.reader import RunArchive
from opmon.streaming.receiver import Counters

log = logging.getLogger(__name__)


@dataclass
class FanMap:
    """One map as the coordinator sees it."""

    number: int
    map_shape: tuple[int, int]
    n_expected: int = 0
    n_sent: int | None = None          # from map_end
    seqs: set[int] = field(default_factory=set)     # sequence numbers accumulated by a worker (freed when done)
    recovered: int = 0
    acc: MomentAccumulator | None = None            # frames filled in from the archive (here)
    partials: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    finals: dict[int, dict[str, np.ndarray] | None] = field(default_factory=dict)
    last_activity: float = field(default_factory=time.monotonic)
    final_requested: bool = False
    done: bool = False
    dirty: bool = False
    unpublished_t: list[float] = field(default_factory=list)

    @property
    def received(self) -> int:
        return len(self.seqs) + self.recovered


@dataclass
class FanRun:
    """One run: its start, ROI decision and maps."""

    uid: str
    start: dict[str, Any]
    mask: npt.NDArray[np.uint8] | None
    roi: Roi | None
    adopted: bool = False
    maps: dict[int, FanMap] = field(default_factory=dict)
    roi_sums: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)  # worker -> its running sum
    roi_from: set[int] = field(default_factory=set)   # workers that reported since the last try
    roi_first: float | None = None
    stop: dict[str, Any] | None = None
    stop_t: float = 0.0


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
                 archive_dir: str | Path | None = None, rcvhwm: int = 200, context: zmq.Context | None = None,
                 grace_s: float = 2.0, ask_wait_s: float = 0.5) -> None:
        if workers < 2:
            raise OpmonError(f"fan-out needs workers >= 2, got {workers} (1 worker runs inline)")
        self.context = context or zmq.Context.instance()
        self.n_workers = workers
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        self.roi_setting, self.roi_frames, self.roi_wait_s = roi, roi_frames, roi_wait_s
        self.threshold, self.background = threshold, background
        self.publish_interval_s = publish_interval_s
        self.grace_s, self.ask_wait_s = grace_s, ask_wait_s
        self.outputs = MapOutputs(self.context, display_endpoint, maps_endpoint)
        self.display = self.outputs.display
        self.counters = Counters()
        self.runs: dict[str, FanRun] = {}
        self.finished: OrderedDict[str, str] = OrderedDict()
        self.asks: dict[str, tuple[float, int]] = {}      # unknown run -> (asked at, first map seen)
        self.held_controls: dict[str, list[list[Any]]] = {}  # control messages of a run not known yet
        self.roi_decided_at = 0.0
        self.recovered = 0
        self.stopped = False
        self._init_service()
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

    def _options(self, run: FanRun) -> dict[str, Any]:
        return {"roi": list(run.roi) if run.roi is not None else None, "threshold": self.threshold,
                "background": self.background}

    def _setup(self, run: FanRun, worker: int | None = None) -> None:
        header = dict(run.start, options=self._options(run),
                      map_shapes={str(m): list(fm.map_shape) for m, fm in run.maps.items()})
        buffers = [np.ascontiguousarray(run.mask)] if run.mask is not None else []
        self._tell(W.SETUP, header, *buffers, worker=worker)

    # -- runs and maps ---------------------------------------------------------------------------
    def _begin_run(self, start: dict[str, Any], mask: npt.NDArray[np.uint8] | None, *, adopted: bool,
                   roi: Roi | None = None, first_map: int | None = None) -> FanRun:
        roi = roi or initial_roi(self.roi_setting, start)
        run = self.runs[start["run"]] = FanRun(start["run"], start, mask, roi, adopted=adopted)
        if roi is not None:
            self.roi_decided_at = time.time()
        if first_map is not None:      # joined mid-map: its map_start went to the processor before us
            self._map(run, first_map)
        self.asks.pop(run.uid, None)
        self._setup(run)
        for parts in self.held_controls.pop(run.uid, []):
            self._on_control(parts)
        return run

    def _map(self, run: FanRun, number: int) -> FanMap:
        fm = run.maps.get(number)
        if fm is None:
            fm = run.maps[number] = FanMap(number, tuple(run.start["map_shape"]))  # type: ignore[arg-type]
        return fm

    def _accumulator(self, run: FanRun, fm: FanMap) -> MomentAccumulator:
        return MomentAccumulator(geometry_of(run.start), fm.map_shape, detector_mask=run.mask,
                                 **accumulator_options(self._options(run)))

    def _decide_roi(self, run: FanRun, settle: bool = True) -> None:
        """Fix the run's ROI from the workers' sums of their first frames; unless `settle`,
        ask for more while they show no Bragg peak (up to ROI_MAX_FRAMES, then the full frame)."""
        if run.roi is not None:
            return
        total = RoiSum()
        for frames, image in run.roi_sums.values():
            if frames:
                total.merge(image, frames)
        settle = settle or total.frames >= ROI_MAX_FRAMES
        roi = total.roi(run.mask, tuple(run.start["frame_shape"]), settle=settle)  # type: ignore[arg-type]
        run.roi_from, run.roi_first = set(), None
        if roi is None:
            self._tell(W.ROI, {"run": run.uid, "roi": None})
            return
        run.roi = roi
        self.roi_decided_at = time.time()
        log.info("run %s: ROI %s from its first %d frames (%d workers)", run.uid, run.roi, total.frames,
                 len(run.roi_sums))
        self._tell(W.ROI, {"run": run.uid, "roi": list(run.roi)})

    def _fill_from_archive(self, run: FanRun, fm: FanMap) -> None:
        """Frames of a map the workers never accumulated (processor restarted mid-map, a
        worker's queue lost): read them from the archive, which holds every frame."""
        if self.archive_dir is None or fm.n_sent is None or fm.received >= fm.n_sent or run.roi is None:
            return
        archive = RunArchive(self.archive_dir, run.uid)
        if not archive.has_frames(fm.number):
            return
        try:
            for header, frame in archive.frames(fm.number, wait_s=10.0):
                if header["seq"] in fm.seqs:
                    continue
                self._feed_here(run, header, frame)
        except (ArchiveError, CorruptFrameError, OSError, KeyError) as exc:
            log.error("run %s map %d: missing frames not recovered: %s", run.uid, fm.number, exc)
        log.warning("run %s map %d: %d frames recovered from the archive", run.uid, fm.number, fm.recovered)

    def _feed_here(self, run: FanRun, header: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        fm = self._map(run, header["map"])
        if fm.acc is None:
            fm.acc = self._accumulator(run, fm)
        fm.acc.process_frame(frame, header["index"], header["eta"], header["phi"], header["nu"], header["delta"])
        fm.recovered += 1
        fm.dirty = True
        self.recovered += 1

    def _request_final(self, run: FanRun, fm: FanMap) -> None:
        if fm.final_requested:
            return
        if run.roi is None:
            self._decide_roi(run)
        self._fill_from_archive(run, fm)
        fm.final_requested = True
        self._tell(W.FINAL, {"run": run.uid, "map": fm.number})

    def _merged(self, run: FanRun, fm: FanMap, states: list[dict[str, np.ndarray] | None]) -> MomentAccumulator:
        acc = self._accumulator(run, fm)
        if fm.acc is not None:
            acc.load_state(fm.acc.state())
        for state in states:
            if state:
                acc.load_state(state)
        return acc

    def _finish_map(self, run: FanRun, fm: FanMap) -> None:
        fm.done = True
        acc = self._merged(run, fm, list(fm.finals.values()))
        expected = fm.n_sent if fm.n_sent is not None else fm.n_expected
        lost = max(0, expected - fm.received)
        self.counters.lost += lost
        if acc.frames_seen != fm.received:
            log.error("run %s map %d: sums hold %d frames, %d were reported", run.uid, fm.number, acc.frames_seen,
                      fm.received)
        self.outputs.final(acc, run=run.uid, number=fm.number, n_frames=fm.n_expected, frames_lost=lost,
                           options=self._options(run))
        self._published(fm)
        fm.partials.clear()
        fm.finals.clear()
        fm.acc = None
        fm.recovered, fm.seqs = fm.received, set()      # keep the count, free the set

    def _published(self, fm: FanMap) -> None:
        now = time.time()
        self.publish_latencies.extend(now - t for t in fm.unpublished_t)
        fm.unpublished_t.clear()

    def _end_run(self, run: FanRun) -> None:
        status = run.stop["exit_status"] if run.stop else "abort"
        self.runs.pop(run.uid, None)
        self.finished[run.uid] = status
        while len(self.finished) > 64:
            self.finished.popitem(last=False)
        self._tell(W.END, {"run": run.uid})
        log.info("run %s ended (%s): %d maps", run.uid, status, len(run.maps))

    def _advance(self) -> None:
        """Make final every map whose frames are all in (or whose wait is over); end finished runs."""
        now = time.monotonic()
        for run in list(self.runs.values()):
            if run.roi is None and run.roi_first is not None and (
                    len(run.roi_from) >= self.n_workers or now - run.roi_first >= self.roi_wait_s):
                self._decide_roi(run, settle=False)
            for fm in list(run.maps.values()):
                if fm.done or fm.final_requested:
                    continue
                closed = fm.n_sent is not None or run.stop is not None
                if fm.n_sent is not None and fm.received >= fm.n_sent:
                    self._request_final(run, fm)
                elif closed and now - fm.last_activity >= self.grace_s:
                    if fm.n_sent is None:
                        fm.n_sent = fm.received
                    self._request_final(run, fm)
            if run.stop is not None and all(fm.done for fm in run.maps.values()) and (
                    len(run.maps) >= int(run.stop.get("n_maps", 0)) or now - run.stop_t >= self.grace_s):
                self._end_run(run)

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
            for other in list(self.runs.values()):
                if other.uid != uid and other.stop is None:
                    log.warning("run %s started while %s had no stop: counted as aborted", uid, other.uid)
                    other.stop, other.stop_t = {"exit_status": "abort", "n_maps": 0}, time.monotonic()
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
            fm = self._map(run, h["map"])
            fm.map_shape, fm.n_expected = tuple(h["map_shape"]), h["n_frames"]  # type: ignore[assignment]
            self._tell(W.MAP, {"run": uid, "map": fm.number, "map_shape": list(fm.map_shape)})
        elif msg.kind == "map_end":
            fm = self._map(run, h["map"])
            fm.n_sent, fm.last_activity = h["n_frames"], time.monotonic()
        elif msg.kind == "stop":
            run.stop, run.stop_t = h, time.monotonic()

    def _adopt(self, uid: str, first_map: int) -> FanRun | None:
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
        for other in list(self.runs.values()):
            if other.stop is None:
                other.stop, other.stop_t = {"exit_status": "abort", "n_maps": 0}, time.monotonic()
        log.warning("joined run %s mid-stream (start recovered)", uid)
        run = self._begin_run(found[0], found[1], adopted=True, roi=roi, first_map=first_map)
        if run.roi is not None:
            self.recovered += recover_missed_maps(archive, first_map, lambda h, f: self._feed_here(run, h, f),
                                                  lambda number: self._adopted_map_end(run, number))
        return run

    def _adopted_map_end(self, run: FanRun, number: int) -> None:
        fm = self._map(run, number)
        fm.n_sent = fm.received

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
            fm = self._map(run, int(number))
            before = len(fm.seqs)
            fm.seqs.update(seqs[sel].tolist())
            if len(fm.seqs) - before != int(sel.sum()):
                self.counters.duplicate += int(sel.sum()) - (len(fm.seqs) - before)
                log.error("run %s map %d: a frame was accumulated twice", run.uid, fm.number)
            fm.last_activity, fm.dirty = now, True
            fm.unpublished_t.extend(rows[sel, 3].tolist())
        self.counters.accepted += len(rows)
        self.frames_processed += len(rows)
        self.latency_seqs.extend(seqs.tolist())
        self.latencies.extend((rows[:, 4] - rows[:, 3]).tolist())
        self.accumulated_at.extend(rows[:, 4].tolist())

    def _on_roi_sum(self, header: dict[str, Any], buf: Any) -> None:
        run = self.runs.get(header["run"])
        if run is None or run.roi is not None:
            return
        image = np.frombuffer(buf, dtype=np.uint64).reshape(header["shape"]) if header["frames"] else np.zeros(0)
        run.roi_sums[header["worker"]] = (header["frames"], image.copy())   # running sums: the latest wins
        run.roi_from.add(header["worker"])
        run.roi_first = run.roi_first or time.monotonic()

    def _on_state(self, parts: list[Any]) -> None:
        header, state = W.decode_state(parts)
        run = self.runs.get(header["run"])
        if run is None:
            return
        fm = run.maps.get(header["map"])
        if fm is None or fm.done:
            return
        if header["final"]:
            fm.finals[header["worker"]] = state or None
            if len(fm.finals) == self.n_workers:
                self._finish_map(run, fm)
        else:
            fm.partials[header["worker"]] = state
            fm.dirty = True

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
                    self._on_roi_sum(P.unpack(parts[1].bytes), parts[2].buffer)
                elif kind == W.ASK:
                    self._on_ask(P.unpack(parts[1].bytes))
            except OpmonError as exc:        # one bad map must not stop the others
                self.errors += 1
                log.error("report %s from a live worker not processed: %s", kind, exc)

    def _open_runs(self) -> set[str]:
        return set(self.runs)

    # -- publication and status --------------------------------------------------------------------
    def publish_partials(self) -> None:
        """Merged partial maps of every map in progress with new frames (lossy display channel)."""
        for run in self.runs.values():
            if run.roi is None:
                continue
            for fm in run.maps.values():
                if fm.done or not fm.dirty or not (fm.partials or fm.acc):
                    continue
                fm.dirty = False
                acc = self._merged(run, fm, list(fm.partials.values()))
                self.outputs.partial(acc, run=run.uid, number=fm.number, n_frames=fm.n_expected,
                                     frames_lost=0, options=self._options(run))
                self._published(fm)

    def status(self) -> dict[str, Any]:
        """Lossy status message of docs/protocol.md (same fields as the inline processor)."""
        run = max(self.runs.values(), key=lambda r: r.stop is None, default=None)
        current = max((fm for fm in run.maps.values() if not fm.done), key=lambda m: m.number, default=None) if run else None
        return self._status_message(
            run=run.uid if run else None, lost=self.counters.lost, rejected=dict(self.counters.rejected),
            map_number=current.number if current else None,
            map_progress=current.received / current.n_expected if current and current.n_expected else None,
            maps_done=sum(fm.done for fm in run.maps.values()) if run else len(self.summaries),
            recovered=self.recovered, workers=self.n_workers)

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

    def close(self) -> None:
        """Stop the workers, close every socket (final maps still queued are logged)."""
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
