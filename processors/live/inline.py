"""The inline executor: frames in over the lossless stream, maps out while the scan runs.

One process receives (the receiver checks each message and accounts for loss by sequence
number), feeds every frame to the run's engine (`engine.LiveRun`, the same `MomentAccumulator`
as `opmon process`), publishes partial maps a few times a second on the lossy display channel,
and the final map of each map both there and on the lossless channel to the archiver
(`service.LiveService`). The ROI is decided from the run's first frames (or configured). An auto
ROI decided so is provisional (an eta-outer scan starts off the rocking curve): the map's frames
are kept (`held_frames`) and, unless it is within 2 pixels of the ROI `opmon process` takes from the
whole map, the map is made again at its end with that ROI and mask (`remake`, on a thread); then
each map's own ROI, from the frames `opmon process` samples, re-centres the ROI of the maps to come
when the peak left it (`engine.LiveRun.conclude_map`).
Each map records the ROI it was summed with, so `opmon process --roi` reproduces it. A processor
restarted mid-run recovers what it missed from the archive (live/recovery.py) and follows on from
the ROI of the run's latest archived maps.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.errors import OpmonError
from opmon.processors.accumulate import Roi, warm_up_kernels
from opmon.processors.live.engine import LiveMap, LiveRun
from opmon.processors.live.service import LiveService
from opmon.processors.live.recovery import recover_missed_maps, recover_prefix
from opmon.streaming import protocol as P
from opmon.streaming.archive.reader import RunArchive
from opmon.streaming.receiver import Counters, FrameReceiver, MapProgress, RunInfo

log = logging.getLogger(__name__)


class LiveProcessor(LiveService):
    """The live chain in one process: receive, account, accumulate, publish.

    Parameters
    ----------
    frames_endpoint : lossless frame stream to connect to.
    display_endpoint : PUB endpoint to bind for maps and status (lossy), or None.
    maps_endpoint : archiver's lossless maps endpoint to connect to, or None.
    workers : must be 1 (`open_live_processor` picks the fan-out processor for more).
    roi : "auto" (from the first `roi_frames` frames of a run, or those of its first `roi_wait_s`),
        None (full frame) or (r0, r1, c0, c1).
    register : auto|tilt: the eta scans of each final map are registered (`opmon process --register`).
    peak_fit : gauss: each final map is also fitted pixel by pixel (`opmon process --peak-fit gauss`): the
        final map messages carry the fitted maps (fields ``fit/...``), the archiver writes them as ``maps/fit``.
    archive_dir : where to recover missed frames after a restart (None: no recovery).
    powder_spots : "auto": each map's powder-arc spots are found at its end and the map re-made without
        them (`remake`), as `opmon process --powder-spots auto`; "off": kept.
    """

    def __init__(self, frames_endpoint: str, display_endpoint: str | None = None, maps_endpoint: str | None = None, *,
                 workers: int = 1, publish_interval_s: float = 0.25, roi: Roi | str | None = "auto",
                 roi_frames: int = 64, roi_wait_s: float = 0.25, threshold: int = 0, background: Any = "auto",
                 register: str = "tilt", peak_fit: str = "off", archive_dir: str | Path | None = None, rcvhwm: int = 200, context: zmq.Context | None = None,
                 powder_spots: str = "auto") -> None:
        if workers != 1:
            raise OpmonError(f"LiveProcessor works inline (workers = 1, got {workers}); use open_live_processor")
        self._init_service(context, display_endpoint, maps_endpoint, publish_interval_s=publish_interval_s, roi=roi,
                           roi_frames=roi_frames, roi_wait_s=roi_wait_s, threshold=threshold, background=background,
                           archive_dir=archive_dir, workers=1, register=register, powder_spots=powder_spots,
                           peak_fit=peak_fit)
        self.receiver = FrameReceiver(frames_endpoint, rcvhwm=rcvhwm, context=self.context, name="live processor",
                                      resolver=self._resolve if self.archive_dir is not None else None)
        self.run: LiveRun | None = None
        self.info: RunInfo | None = None          # the receiver's view of `run` (sequence and loss bookkeeping)
        self._recovered_roi: dict[str, Roi] = {}
        warm_up_kernels()

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def counters(self) -> Counters:
        return self.receiver.counters

    def _resolve(self, uid: str) -> tuple[dict[str, Any], npt.NDArray[np.uint8] | None] | None:
        assert self.archive_dir is not None
        archive = RunArchive(self.archive_dir, uid)
        found = archive.start()
        if found is not None:
            roi = archive.roi()
            if roi is not None:
                self._recovered_roi[uid] = roi
        return found

    # -- run and map lifecycle -------------------------------------------------------------------
    def _begin_run(self, start: dict[str, Any], mask: npt.NDArray[np.uint8] | None, adopted: bool) -> LiveRun:
        if self.run is not None:
            self._end_run("a new run started")
        self.run = self._new_run(start, mask, adopted=adopted, roi=self._recovered_roi.get(start["run"]))
        self.info = self.receiver.tracker.current
        return self.run

    def _map(self, number: int) -> LiveMap:
        run = self.run
        assert run is not None
        if number not in run.maps:
            progress = self._progress(number)
            if progress is not None:
                run.map_started(number, progress.map_shape, progress.n_expected)
        return run.map(number)

    def _decide_roi(self, settle: bool = True) -> None:
        """Fix the run's ROI from the frames held so far (see `RoiDecider`), then accumulate them."""
        run = self.run
        if run is None or run.roi is not None:
            return
        if run.decide_roi(settle=settle) is None:
            return
        self.roi_decided_at = time.time()
        assert run.roi_decider is None
        log.info("run %s: ROI %s from its first %d frames", run.uid, run.roi, len(run.held))
        held, run.held = run.held, []
        for header, frame in held:
            self._accumulate(header, frame)

    def _feed(self, header: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        run = self.run
        assert run is not None
        run.count_dose(header)          # every frame once: received, or recovered from the archive
        if run.roi is None:
            assert run.roi_decider is not None
            run.held.append((header, frame))
            run.roi_decider.add(frame)
            if run.roi_decider.due():
                self._decide_roi(settle=False)
            return
        self._accumulate(header, frame)

    def _accumulate(self, h: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        run = self.run
        assert run is not None and run.roi is not None
        self._map(h["map"])
        lm = run.accumulate(h, frame)
        run.sample_for_follow(lm, h, frame)
        now = time.time()
        self._accumulated(now - h["t"], h["seq"], now)
        lm.unpublished_t.append(h["t"])

    def _end_map(self, number: int) -> None:
        run = self.run
        if run is None:
            return
        self._decide_roi()
        lm = self._map(number)
        if lm.ended:
            return
        lm.ended = True
        acc = lm.acc if lm.acc is not None else run.accumulator(lm)
        self._final_own_roi(run, lm, acc, n_frames=self._expected(number), frames_lost=self._lost(number))

    def _progress(self, number: int) -> MapProgress | None:
        return self.info.maps.get(number) if self.run is not None and self.info is not None else None

    def _lost(self, number: int) -> int:
        progress = self._progress(number)
        return progress.lost if progress is not None else 0

    def _expected(self, number: int) -> int:
        progress = self._progress(number)
        return progress.n_expected if progress is not None else 0

    def _end_run(self, reason: str) -> None:
        run = self.run
        if run is None:
            return
        for number in sorted(run.maps):
            if not run.maps[number].ended:
                self._end_map(number)
        log.info("run %s ended (%s): %d maps", run.uid, reason, len(run.maps))
        self.run = None

    # -- messages ------------------------------------------------------------------------------
    def _adopt_if_new(self, uid: str, number: int) -> None:
        """A message of a run whose start we never saw (the receiver adopted it from the archive)."""
        if self.run is None or self.run.uid != uid:
            info = self.receiver.tracker.current
            assert info is not None
            self._begin_run(info.start, info.mask, adopted=True)
            self._recover_missed_maps(number)

    def handle(self, msg: P.Message) -> None:
        """Act on one accepted message of the frame stream."""
        h = msg.header
        if msg.kind == "frame":
            self._adopt_if_new(h["run"], h["map"])
            assert self.run is not None
            progress = self._progress(h["map"])
            if self.run.adopted and progress is not None and progress.received == 1 and h["frame"] > 0:
                self._recover_prefix(h["map"], h["seq"])
            self._feed(h, msg.array)  # type: ignore[arg-type]
        elif msg.kind == "start":
            self._begin_run(h, msg.array, adopted=False)  # type: ignore[arg-type]
        elif msg.kind == "map_start":
            self._adopt_if_new(h["run"], h["map"])
            assert self.run is not None
            self.run.map_started(h["map"], h["map_shape"], h["n_frames"])
        elif msg.kind == "map_end":
            if self.run is not None and self.run.uid == h["run"]:
                self._end_map(h["map"])
        elif msg.kind == "stop":
            if self.run is not None and self.run.uid == h["run"]:
                self._end_run(h["exit_status"])

    def _recover_missed_maps(self, first_map: int) -> None:
        run = self.run
        if run is not None and self.archive_dir is not None:
            run.recovered += recover_missed_maps(RunArchive(self.archive_dir, run.uid), first_map, self._feed, self._end_map)

    def _recover_prefix(self, number: int, first_seq: int) -> None:
        run = self.run
        if run is not None and self.archive_dir is not None:
            run.recovered += recover_prefix(RunArchive(self.archive_dir, run.uid), number, first_seq, self._feed)

    def _open_runs(self) -> set[str]:
        return {self.run.uid} if self.run is not None else set()

    def _live_runs(self) -> list[LiveRun]:
        return [self.run] if self.run is not None else []

    # -- publication -----------------------------------------------------------------------------
    def publish_partials(self) -> None:
        """Partial maps of every map in progress with new frames (lossy display channel)."""
        run = self.run
        if run is None or run.roi is None:
            return
        for lm in run.maps.values():
            if lm.done or not lm.dirty:
                continue
            lm.dirty = False
            if lm.acc is None or lm.acc.frames_seen == 0:
                continue
            self._partial(run, lm, lm.acc, n_frames=self._expected(lm.number), frames_lost=self._lost(lm.number))

    def status(self) -> dict[str, Any]:
        """Lossy status message of docs/protocol.md."""
        run = self.run
        current = run.current_map() if run else None
        expected = self._expected(current.number) if current is not None else 0
        c = self.receiver.counters
        return self._status_message(
            run=run.uid if run else None, lost=c.lost, rejected=dict(c.rejected),
            map_number=current.number if current else None,
            map_progress=(current.received / expected) if current is not None and expected else None,
            maps_done=sum(lm.done for lm in run.maps.values()) if run else len(self.summaries),
            recovered=run.recovered if run else 0)

    # -- loop --------------------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 50) -> None:
        """Handle what arrives within `timeout_ms`; publish partial maps and status on time."""
        sock = self.receiver.socket
        if sock.poll(timeout_ms):
            deadline = time.monotonic() + self.publish_interval_s
            while time.monotonic() < deadline:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                msg = self.receiver.handle(parts)
                if msg is not None:
                    try:
                        self.handle(msg)
                    except OpmonError as exc:      # one bad frame must not stop the maps
                        self.errors += 1
                        log.error("message %s of run %s not processed: %s", msg.kind, msg.header.get("run"), exc)
        self.outputs.send_unarchived()
        now = time.monotonic()
        run = self.run
        if run is not None and run.roi_decider is not None and run.held and run.roi_decider.due(now):
            self._decide_roi(settle=False)
        self._housekeeping(now)

    def close(self) -> None:
        """Close every socket (final maps still queued for the archiver are logged)."""
        self._close_remaker()
        self.outputs.close()
        self.receiver.close()
