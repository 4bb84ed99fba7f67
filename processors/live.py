"""The live processor: frames in over the lossless stream, maps out while the scan runs.

It accumulates with the same `MomentAccumulator` as `opmon process`, publishes partial maps
a few times a second on the lossy display channel, and the final map of each map both there
and on the lossless channel to the archiver. With `workers` > 1, `open_live_processor` gives
the fan-out design instead (`live_fanout`): worker processes take frames straight from the
stream and their sums merge by addition. The ROI is fixed once per run, from the first frames
(or the configured one) and recorded with every map, so `opmon process --roi` reproduces it.
A processor restarted mid-run recovers what it missed from the archive (live_recovery).
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
from opmon.processors.accumulate import MomentAccumulator, Roi, warm_up_kernels
from opmon.processors.live_outputs import MapOutputs
from opmon.processors.live_recovery import recover_missed_maps, recover_prefix
from opmon.processors.live_service import LiveService
from opmon.processors.live_state import ROI_MAX_FRAMES, LiveMap, LiveRun, accumulator_options, geometry_of, initial_roi
from opmon.streaming import protocol as P
from opmon.streaming.archive.reader import RunArchive
from opmon.streaming.receiver import Counters, FrameReceiver

log = logging.getLogger(__name__)


def open_live_processor(frames_endpoint: str, display_endpoint: str | None = None, maps_endpoint: str | None = None, *,
                        workers: int = 1, **options: Any) -> Any:
    """The live processor for `workers`: inline for 1, fan-out to worker processes for more."""
    if workers > 1:
        from opmon.processors.live_fanout import FanOutProcessor
        return FanOutProcessor(frames_endpoint, display_endpoint, maps_endpoint, workers=workers, **options)
    return LiveProcessor(frames_endpoint, display_endpoint, maps_endpoint, workers=workers, **options)


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
    archive_dir : where to recover missed frames after a restart (None: no recovery).
    """

    def __init__(self, frames_endpoint: str, display_endpoint: str | None = None, maps_endpoint: str | None = None, *,
                 workers: int = 1, publish_interval_s: float = 0.25, roi: Roi | str | None = "auto",
                 roi_frames: int = 64, roi_wait_s: float = 0.25, threshold: int = 0, background: Any = "auto",
                 archive_dir: str | Path | None = None, rcvhwm: int = 200, context: zmq.Context | None = None) -> None:
        if workers != 1:
            raise OpmonError(f"LiveProcessor works inline (workers = 1, got {workers}); use open_live_processor")
        self.context = context or zmq.Context.instance()
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        self.receiver = FrameReceiver(frames_endpoint, rcvhwm=rcvhwm, context=self.context, name="live processor",
                                      resolver=self._resolve if self.archive_dir is not None else None)
        self.outputs = MapOutputs(self.context, display_endpoint, maps_endpoint)
        self.display = self.outputs.display
        self.roi_setting, self.roi_frames, self.roi_wait_s = roi, roi_frames, roi_wait_s
        self.threshold, self.background = threshold, background
        self.publish_interval_s = publish_interval_s
        self.run: LiveRun | None = None
        self.roi_decided_at = 0.0                 # time.time() the current run's ROI was known
        self._recovered_roi: dict[str, Roi] = {}
        self.stopped = False
        self._init_service()
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
        roi = self._recovered_roi.get(start["run"]) or initial_roi(self.roi_setting, start)
        self.run = LiveRun(start["run"], start, mask, roi, adopted=adopted, info=self.receiver.tracker.current)
        if roi is not None:
            self.roi_decided_at = time.time()
        return self.run

    def _options(self) -> dict[str, Any]:
        assert self.run is not None and self.run.roi is not None
        return {"roi": list(self.run.roi), "threshold": self.threshold, "background": self.background}

    def _map(self, number: int) -> LiveMap:
        run = self.run
        assert run is not None
        lm = run.maps.get(number)
        if lm is None:
            progress = self._progress(number)
            shape = progress.map_shape if progress is not None else tuple(run.start["map_shape"])
            lm = run.maps[number] = LiveMap(number, shape)  # type: ignore[arg-type]
        return lm

    def _decide_roi(self, settle: bool = True) -> None:
        """Fix the run's ROI from the frames held so far; unless `settle`, wait for more
        while they show no Bragg peak (up to ROI_MAX_FRAMES, then the full frame)."""
        run = self.run
        if run is None or run.roi is not None:
            return
        settle = settle or len(run.pending) >= ROI_MAX_FRAMES
        roi = run.roi_sum.roi(run.mask, tuple(run.start["frame_shape"]), settle=settle)  # type: ignore[arg-type]
        if roi is None:
            run.roi_next = len(run.pending) + self.roi_frames
            run.pending_since = time.monotonic()
            return
        run.roi = roi
        self.roi_decided_at = time.time()
        log.info("run %s: ROI %s from its first %d frames", run.uid, run.roi, run.roi_sum.frames)
        pending, run.pending = run.pending, []
        for header, frame in pending:
            self._dispatch(header, frame)

    def _feed(self, header: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        run = self.run
        assert run is not None
        if run.roi is None:
            if not run.pending:
                run.pending_since = time.monotonic()
            run.pending.append((header, frame))
            run.roi_sum.add(frame)
            if len(run.pending) >= max(self.roi_frames, run.roi_next) or \
                    time.monotonic() - run.pending_since >= self.roi_wait_s:
                self._decide_roi(settle=False)
            return
        self._dispatch(header, frame)

    def _dispatch(self, h: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        run = self.run
        assert run is not None and run.roi is not None
        lm = self._map(h["map"])
        if lm.acc is None:
            lm.acc = self._accumulator(lm.map_shape)
        lm.acc.process_frame(frame, h["index"], h["eta"], h["phi"], h["nu"], h["delta"])
        now = time.time()
        self.latencies.append(now - h["t"])
        self.latency_seqs.append(h["seq"])
        self.accumulated_at.append(now)
        lm.unpublished_t.append(h["t"])
        lm.received += 1
        lm.dirty = True
        self.frames_processed += 1

    def _accumulator(self, map_shape: tuple[int, int]) -> MomentAccumulator:
        run = self.run
        assert run is not None
        return MomentAccumulator(geometry_of(run.start), map_shape, detector_mask=run.mask,
                                 **accumulator_options(self._options()))

    def _end_map(self, number: int) -> None:
        run = self.run
        if run is None:
            return
        self._decide_roi()
        lm = self._map(number)
        if lm.ended:
            return
        lm.ended = True
        self._finish_map(lm, lm.acc)

    def _finish_map(self, lm: LiveMap, acc: MomentAccumulator | None) -> None:
        run = self.run
        assert run is not None
        lm.done = True
        if acc is None:
            acc = self._accumulator(lm.map_shape)
        self.outputs.final(acc, run=run.uid, number=lm.number, n_frames=self._expected(lm.number),
                           frames_lost=self._lost(lm.number), options=self._options())
        self._publish_latency(lm)

    def _progress(self, number: int) -> Any:
        run = self.run
        return run.info.maps.get(number) if run is not None and run.info is not None else None

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
    def handle(self, msg: P.Message) -> None:
        """Act on one accepted message of the frame stream."""
        h = msg.header
        if msg.kind == "frame":
            if self.run is None or self.run.uid != h["run"]:
                info = self.receiver.tracker.current        # adopted by the resolver
                self._begin_run(info.start, info.mask, adopted=True)
                self._recover_missed_maps(h["map"])
            progress = self._progress(h["map"])
            if self.run.adopted and progress is not None and progress.received == 1 and h["frame"] > 0:
                self._recover_prefix(h["map"], h["seq"])
            self._feed(h, msg.array)
        elif msg.kind == "start":
            self._begin_run(h, msg.array, adopted=False)
        elif msg.kind == "map_start":
            if self.run is None or self.run.uid != h["run"]:
                info = self.receiver.tracker.current
                self._begin_run(info.start, info.mask, adopted=True)
                self._recover_missed_maps(h["map"])
            self._map(h["map"]).map_shape = tuple(h["map_shape"])  # type: ignore[assignment]
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

    # -- publication -----------------------------------------------------------------------------
    def _publish_latency(self, lm: LiveMap) -> None:
        now = time.time()
        self.publish_latencies.extend(now - t for t in lm.unpublished_t)
        lm.unpublished_t.clear()

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
            self.outputs.partial(lm.acc, run=run.uid, number=lm.number, n_frames=self._expected(lm.number),
                                 frames_lost=self._lost(lm.number), options=self._options())
            self._publish_latency(lm)

    def status(self) -> dict[str, Any]:
        """Lossy status message of docs/protocol.md."""
        run = self.run
        current = max((lm for lm in run.maps.values() if not lm.done), key=lambda m: m.number, default=None) if run else None
        expected = self._expected(current.number) if current is not None else 0
        c = self.receiver.counters
        return self._status_message(
            run=run.uid if run else None, lost=c.lost, rejected=dict(c.rejected),
            map_number=current.number if current else None,
            map_progress=(current.received / expected) if current is not None and expected else None,
            maps_done=sum(lm.done for lm in run.maps.values()) if run else len(self.summaries),
            recovered=run.recovered if run else 0, workers=1)

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
        if run is not None and run.roi is None and run.pending and now - run.pending_since >= self.roi_wait_s:
            self._decide_roi(settle=False)
        self._housekeeping(now)

    def close(self) -> None:
        """Close every socket (final maps still queued for the archiver are logged)."""
        self.outputs.close()
        self.receiver.close()
