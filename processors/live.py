"""The live processor: frames in over the lossless stream, maps out while the scan runs.

It accumulates with the same `MomentAccumulator` as `opmon process` (inline, or dealt out
to `workers` processes whose sums merge by addition), publishes partial maps a few times a
second on the lossy display channel, and the final map of each map both there and on the
lossless channel to the archiver. The ROI is fixed once per run, from the first frames
(or the configured one) and recorded with every map, so `opmon process --roi` reproduces it.
A processor restarted mid-run recovers what it missed from the archive (live_recovery).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.errors import EmptyMapError, OpmonError
from opmon.processors import live_worker as W
from opmon.processors.accumulate import MomentAccumulator, Roi
from opmon.processors.live_messages import encode_map
from opmon.processors.live_recovery import RunArchive, recover_missed_maps, recover_prefix
from opmon.processors.maps import MapResult
from opmon.processors.live_state import LiveMap, LiveRun, roi_from_sum
from opmon.streaming import protocol as P
from opmon.streaming.receiver import FrameReceiver

log = logging.getLogger(__name__)


class LiveProcessor:
    """Coordinator of the live chain (one process; optional worker processes).

    Parameters
    ----------
    frames_endpoint : lossless frame stream to connect to.
    display_endpoint : PUB endpoint to bind for maps and status (lossy), or None.
    maps_endpoint : archiver's lossless maps endpoint to connect to, or None.
    workers : 1 = accumulate in this process; N > 1 = deal frames to N worker processes.
    roi : "auto" (from the first `roi_frames` frames of a run, or those of its first `roi_wait_s`),
        None (full frame) or (r0, r1, c0, c1).
    archive_dir : where to recover missed frames after a restart (None: no recovery).
    """

    def __init__(self, frames_endpoint: str, display_endpoint: str | None = None, maps_endpoint: str | None = None, *,
                 workers: int = 1, publish_interval_s: float = 0.25, roi: Roi | str | None = "auto",
                 roi_frames: int = 64, roi_wait_s: float = 0.25, threshold: int = 0, background: Any = "auto",
                 archive_dir: str | Path | None = None, rcvhwm: int = 200, context: zmq.Context | None = None) -> None:
        if workers < 1:
            raise OpmonError(f"workers = {workers}, expected >= 1")
        self.context = context or zmq.Context.instance()
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        self.receiver = FrameReceiver(frames_endpoint, rcvhwm=rcvhwm, context=self.context, name="live processor",
                                      resolver=self._resolve if self.archive_dir is not None else None)
        self.display = self._socket(zmq.PUB, display_endpoint, bind=True, hwm=20)
        self.maps_out = self._socket(zmq.PUSH, maps_endpoint, bind=False, hwm=100)
        self.roi_setting, self.roi_frames, self.roi_wait_s = roi, roi_frames, roi_wait_s
        self.threshold, self.background = threshold, background
        self.publish_interval_s = publish_interval_s
        self.run: LiveRun | None = None
        self.latencies: list[float] = []          # frame sent -> accumulated, s
        self.latency_seqs: list[int] = []         # seq of each entry of `latencies`
        self.publish_latencies: list[float] = []  # frame sent -> first display map holding it, s (inline)
        self.results: dict[tuple[str, int], MapResult] = {}
        self.summaries: list[dict[str, Any]] = []
        self.frames_processed = 0
        self.errors = 0
        self.unarchived: deque[list[Any]] = deque()   # final maps the archiver has not taken yet
        self._last_publish = self._last_status = 0.0
        self._rate = (time.monotonic(), 0)
        self._recovered_roi: dict[str, Roi] = {}
        self.stopped = False
        self.pool = W.WorkerPool(workers, self.context, publish_interval_s) if workers > 1 else None
        self.inboxes: list[zmq.Socket] = self.pool.inboxes if self.pool else []
        self.results_in: zmq.Socket | None = self.pool.results if self.pool else None

    # -- plumbing ------------------------------------------------------------------------------
    def _socket(self, kind: int, endpoint: str | None, bind: bool, hwm: int) -> zmq.Socket | None:
        if endpoint is None:
            return None
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 5000 if kind == zmq.PUSH else 0)
        (sock.bind if bind else sock.connect)(endpoint)
        return sock

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
        rows, cols = start["frame_shape"]
        roi: Roi | None
        if start["run"] in self._recovered_roi:
            roi = self._recovered_roi[start["run"]]
        elif self.roi_setting == "auto":
            roi = tuple(start.get("metadata", {}).get("roi") or ()) or None  # type: ignore[assignment]
        elif self.roi_setting is None:
            roi = (0, rows, 0, cols)
        else:
            roi = self.roi_setting  # type: ignore[assignment]
        self.run = LiveRun(start["run"], start, mask, roi, adopted=adopted, info=self.receiver.tracker.current)
        if roi is not None:
            self._setup_workers()
        return self.run

    def _options(self) -> dict[str, Any]:
        assert self.run is not None and self.run.roi is not None
        return {"roi": list(self.run.roi), "threshold": self.threshold, "background": self.background}

    def _setup_workers(self) -> None:
        run = self.run
        assert run is not None
        header = dict(run.start, **self._options())
        for inbox in self.inboxes:
            parts: list[Any] = [W.SETUP, P.pack(header)]
            if run.mask is not None:
                parts.append(np.ascontiguousarray(run.mask))
            inbox.send_multipart(parts)

    def _map(self, number: int) -> LiveMap:
        run = self.run
        assert run is not None
        lm = run.maps.get(number)
        if lm is None:
            progress = self._progress(number)
            shape = progress.map_shape if progress is not None else tuple(run.start["map_shape"])
            lm = run.maps[number] = LiveMap(number, shape, forwarded=[0] * len(self.inboxes))  # type: ignore[arg-type]
        return lm

    def _decide_roi(self) -> None:
        run = self.run
        if run is None or run.roi is not None:
            return
        total = np.zeros(tuple(run.start["frame_shape"]), dtype=np.float64)
        for _, frame in run.pending:
            total += frame
        run.roi = roi_from_sum(total, run.mask)
        log.info("run %s: ROI %s from its first %d frames", run.uid, run.roi, len(run.pending))
        self._setup_workers()
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
            if len(run.pending) >= self.roi_frames or time.monotonic() - run.pending_since >= self.roi_wait_s:
                self._decide_roi()
            return
        self._dispatch(header, frame)

    def _dispatch(self, h: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        run = self.run
        assert run is not None and run.roi is not None
        lm = self._map(h["map"])
        if self.inboxes:
            if not lm.announced:
                for inbox in self.inboxes:
                    inbox.send_multipart([W.MAP, P.pack({"map": lm.number, "map_shape": list(lm.map_shape)})])
                lm.announced = True
            w = run.next_worker % len(self.inboxes)
            run.next_worker += 1
            self.inboxes[w].send_multipart([W.FRAME, P.pack(h), frame], copy=False)
            lm.forwarded[w] += 1
        else:
            if lm.acc is None:
                lm.acc = self._accumulator(lm.map_shape)
            lm.acc.process_frame(frame, h["index"], h["eta"], h["phi"], h["nu"], h["delta"])
            self.latencies.append(time.time() - h["t"])
            self.latency_seqs.append(h["seq"])
            lm.unpublished_t.append(h["t"])
        lm.received += 1
        lm.dirty = True
        self.frames_processed += 1

    def _accumulator(self, map_shape: tuple[int, int]) -> MomentAccumulator:
        run = self.run
        assert run is not None
        return MomentAccumulator(W.geometry_of(run.start), map_shape, detector_mask=run.mask,
                                 **W.accumulator_options(self._options()))

    def _end_map(self, number: int) -> None:
        run = self.run
        if run is None:
            return
        self._decide_roi()
        lm = self._map(number)
        if lm.ended:
            return
        lm.ended = True
        if self.inboxes:
            for inbox in self.inboxes:
                inbox.send_multipart([W.FINAL, P.pack({"map": number})])
        else:
            self._finish_map(lm, lm.acc)

    def _merged(self, lm: LiveMap, states: list[dict[str, np.ndarray]]) -> MomentAccumulator:
        acc = self._accumulator(lm.map_shape)
        for state in states:
            acc.load_state(state)
        return acc

    def _finish_map(self, lm: LiveMap, acc: MomentAccumulator | None) -> None:
        run = self.run
        assert run is not None
        lm.done = True
        if acc is None:
            acc = self._accumulator(lm.map_shape)
        try:
            result = acc.finalize()
        except EmptyMapError:
            result = acc.finalize(partial=True)
        self.results[(run.uid, lm.number)] = result
        lost = self._lost(lm.number)
        parts = encode_map(result, run=run.uid, map_number=lm.number, final=True, frames=acc.frames_seen,
                           n_frames=self._expected(lm.number), frames_lost=lost, options=self._options())
        valid = result.valid_d()
        self.summaries.append({"run": run.uid, "map": lm.number, "frames": acc.frames_seen, "frames_lost": lost,
                               "d_mean": float(valid.mean()) if valid.size else float("nan"),
                               "roi": list(run.roi or ())})
        if self.display is not None:
            self.display.send_multipart(parts, copy=False)
        if self.maps_out is not None:
            self.unarchived.append(parts)
            self._send_unarchived()
        self._publish_latency(lm)
        log.info("run %s map %d final: %d frames, %d lost", run.uid, lm.number, acc.frames_seen, lost)

    def _send_unarchived(self) -> None:
        """Hand final maps to the archiver without ever blocking the live path; keep what it
        cannot take yet (archiver down or slow) and retry on every poll, never drop them."""
        while self.unarchived and self.maps_out is not None:
            try:
                self.maps_out.send_multipart(self.unarchived[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.unarchived.popleft()

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
        if self.inboxes:   # wait (bounded) for the workers' last sums
            deadline = time.monotonic() + 30.0
            while any(not lm.done for lm in run.maps.values()) and time.monotonic() < deadline:
                self._poll_results(100)
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

    def _poll_results(self, timeout_ms: int) -> None:
        """Take worker sums; merge finals when every worker has reported a map."""
        if self.results_in is None or not self.results_in.poll(timeout_ms):
            return
        for _ in range(1000):
            try:
                parts = self.results_in.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if parts[0].bytes != W.STATE:
                continue
            header, state, lat = W.decode_state(parts)
            self.latency_seqs.extend(lat[:, 0].astype(np.int64).tolist())
            self.latencies.extend(lat[:, 1].tolist())
            run = self.run
            if run is None or header["run"] != run.uid or header["map"] not in run.maps:
                continue
            lm = run.maps[header["map"]]
            if header["final"]:
                lm.finals[header["worker"]] = (header["frames"], {k: v.copy() for k, v in state.items()})
                if len(lm.finals) == len(self.inboxes) and not lm.done:
                    counts = [lm.finals[w][0] for w in range(len(self.inboxes))]
                    if counts != lm.forwarded:
                        log.error("map %d: workers counted %s frames, %s were dealt", lm.number, counts, lm.forwarded)
                    self._finish_map(lm, self._merged(lm, [s for _, s in lm.finals.values()]))
            elif not lm.done:
                lm.partials[header["worker"]] = {k: v.copy() for k, v in state.items()}
                lm.dirty = True

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
            acc = lm.acc if not self.inboxes else (self._merged(lm, list(lm.partials.values())) if lm.partials else None)
            if acc is None or acc.frames_seen == 0:
                continue
            if self.display is not None:
                result = acc.finalize(partial=True)
                self.display.send_multipart(encode_map(result, run=run.uid, map_number=lm.number, final=False,
                                                       frames=acc.frames_seen, n_frames=self._expected(lm.number),
                                                       frames_lost=self._lost(lm.number), options=self._options()),
                                            copy=False)
            self._publish_latency(lm)

    def status(self) -> dict[str, Any]:
        """Lossy status message of docs/protocol.md."""
        now = time.monotonic()
        t0, n0 = self._rate
        rate = (self.frames_processed - n0) / (now - t0) if now > t0 else 0.0
        self._rate = (now, self.frames_processed)
        run = self.run
        current = max((lm for lm in run.maps.values() if not lm.done), key=lambda m: m.number, default=None) if run else None
        expected = self._expected(current.number) if current is not None else 0
        c = self.receiver.counters
        return {"v": P.VERSION, "kind": "status", "source": "live", "t": time.time(),
                "run": run.uid if run else None, "state": "running" if run else "idle",
                "frames": self.frames_processed, "frames_per_s": rate, "frames_lost": c.lost,
                "rejected": dict(c.rejected), "map": current.number if current else None,
                "map_progress": (current.received / expected) if current is not None and expected else None,
                "maps_done": sum(lm.done for lm in run.maps.values()) if run else len(self.summaries),
                "recovered": run.recovered if run else 0, "errors": self.errors,
                "maps_unarchived": len(self.unarchived), "workers": max(1, len(self.inboxes)), "archive": None}

    # -- loop --------------------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 50) -> None:
        """Handle what arrives within `timeout_ms`; publish partial maps and status on time."""
        sock = self.receiver.socket
        if sock.poll(timeout_ms if not self.inboxes else min(timeout_ms, 10)):
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
        self._poll_results(0)
        self._send_unarchived()
        now = time.monotonic()
        run = self.run
        if run is not None and run.roi is None and run.pending and now - run.pending_since >= self.roi_wait_s:
            self._decide_roi()
        if now - self._last_publish >= self.publish_interval_s:
            self._last_publish = now
            self.publish_partials()
        if self.display is not None and now - self._last_status >= 1.0:
            self._last_status = now
            self.display.send_multipart([b"status", P.pack(self.status())])

    def serve(self, stop_when: Any = None) -> None:
        """Run until `stop_when()` is true or `stopped` is set, then close."""
        try:
            while not self.stopped and not (stop_when and stop_when()):
                self.poll_once()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers and close every socket."""
        self._send_unarchived()
        if self.unarchived:
            log.error("%d final map(s) never reached the archiver (is it running?)", len(self.unarchived))
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        for sock in (self.display, self.maps_out):
            if sock is not None:
                sock.close()
        self.inboxes, self.results_in = [], None
        self.receiver.close()
