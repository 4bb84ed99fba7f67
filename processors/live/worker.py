"""Worker process of the fan-out live processor: frames straight from the detector stream.

Each worker connects its own PULL socket to the detector's frame stream, so ZeroMQ deals the
frames out among the workers and no frame is copied twice (the design that spreads over
several machines: a remote worker connects over TCP the same way). A worker accumulates
what it is dealt with the `opmon process` kernels and reports to the coordinator
(`fanout`): the control messages of the stream it happened to receive (start, map_start,
map_end, stop: the coordinator needs all of them and each reaches only one worker), which
frames it has accumulated (sequence numbers, for loss accounting), a running sum of its first
frames (for the auto ROI), and its additive sums, partial and final. The coordinator answers
with what every worker needs to accumulate: the run's geometry and ROI, each map's shape,
and when to hand in a map's final sums. Frames that arrive before that is known wait in the
worker; nothing is dropped. Internal messages are msgpack headers plus raw buffers.
"""
from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq
from zmq.utils.monitor import recv_monitor_message

from opmon.processors.accumulate import SHIPPED_KEYS, MomentAccumulator, warm_up_kernels
from opmon.processors.live.engine import LiveRun, make_accumulator, shipped_state
from opmon.processors.powder_spots import SpotTable
from opmon.processors.live.remake import add_frames
from opmon.processors.live.roi import MapPicks, RoiDecider
from opmon.streaming import protocol as P
from opmon.streaming.memory import keep_frame_buffers
from opmon.streaming.receiver import FinishedRuns, check_frame

log = logging.getLogger(__name__)

# worker -> coordinator
READY, CTRL, ASK, ROISUM, SEEN, STATE = b"ready", b"ctrl", b"ask", b"roisum", b"seen", b"state"
# coordinator -> worker
GO, SETUP, ROI, MAP, FINAL, END, UNKNOWN, QUIT = b"go", b"setup", b"roi", b"map", b"final", b"end", b"unknown", b"quit"
REMAKE = b"remake"    # accumulate a map again from its held frames with its own ROI (roi None: drop them)

#: index, x, y, monitor: what the coordinator's dose map needs of each frame (NaN: not sent)
SEEN_COLUMNS = ("seq", "map", "frame", "t_sent", "t_done", "index", "x", "y", "monitor")
SEEN_FLUSH_S = 0.02          # accounting batches: at most this old ...
SEEN_FLUSH_ROWS = 64         # ... or this long
MAX_PENDING = 256            # frames held while waiting for the coordinator; then stop reading
MAP_SHAPE_WAIT_S = 2.0       # a map whose map_start never reached us uses the run's map shape
ROI_PENDING_WAIT_S = 10.0    # a map whose ROI waits for the previous map's end takes the run's ROI after this long
                             # (well inside the sender's stall timeout, 30 s: frames held here hold the stream up)


#: state keys of a map's picks (`roi.MapPicks`), shipped beside the sums with its final state
PICKS_TOTAL, PICKS_STANDOUT = "picks_total", "picks_standout"
PICKS_SCAN_ETA, PICKS_SCANS = "picks_scan_eta", "picks_scans"     # their per-eta-scan sums (powder-spot search)
PICKS_ETA_VALUES = "picks_eta_values"       # ... and the eta of every frame dealt (the map's scans, for their budget)


def encode_state(acc: MomentAccumulator | None, header: dict[str, Any], picks: MapPicks | None = None) -> list[Any]:
    """`[b"state", header, *sums]` (sums in SHIPPED_KEYS order; none for a map never seen), with the
    map's picks (their sum and bad-pixel counts) when given: the coordinator decides its own ROI.
    A partial state (``header["final"]`` false) of per-scan sums has its scans added together."""
    if acc is None:
        return [STATE, P.pack(dict(header, keys=[]))]
    state = shipped_state(acc, partial=not header.get("final", True))  # SHIPPED_KEYS (+ the scans' eta when final)
    header = dict(header, roi=list(acc.roi))
    if picks is not None and picks.frames:
        header.update(picks_frames=picks.frames, picks_looked_at=picks.sample.finder.frames)
        state = dict(state, **{PICKS_TOTAL: picks.sample.total})
        if picks.sample.finder.standout is not None:
            state[PICKS_STANDOUT] = picks.sample.finder.standout
        if picks.sample.scans is not None and picks.sample.scans.enabled:   # (none: over its memory budget)
            state[PICKS_SCAN_ETA], state[PICKS_SCANS] = picks.sample.scans.arrays()
        if picks.eta_values:
            state[PICKS_ETA_VALUES] = np.fromiter(picks.eta_values, dtype=np.float64, count=len(picks.eta_values))
    header = dict(header, keys=[[k, str(v.dtype), list(v.shape)] for k, v in state.items()])
    return [STATE, P.pack(header)] + [np.ascontiguousarray(v) for v in state.values()]


def decode_state(parts: list[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Inverse of `encode_state` (trusted peer, still shape-checked); the sums are copies."""
    header = P.unpack(_raw(parts[1]))
    state = {}
    for (key, dtype, shape), buf in zip(header["keys"], parts[2:]):
        state[key] = np.frombuffer(_raw(buf), dtype=dtype).reshape(shape).copy()
    return header, state


def _raw(part: Any) -> Any:
    return part.buffer if hasattr(part, "buffer") else part


def _number_or_nan(value: Any) -> float:
    """A frame header's optional number as a float column (NaN when absent)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


@dataclass
class _Held:
    """A frame waiting for its run's setup, ROI or map shape (its ZeroMQ buffer stays alive)."""

    header: dict[str, Any]
    frame: npt.NDArray[Any]
    since: float
    in_roi_sum: bool = False


class FanOutWorker:
    """One worker: frames from the stream, orders from its inbox, reports to the coordinator."""

    def __init__(self, worker_id: int, n_workers: int, frames_endpoint: str, inbox: str, outbox: str, *,
                 publish_interval_s: float = 0.25, roi_frames: int = 64, roi_wait_s: float = 0.25,
                 rcvhwm: int = 200, parent_pid: int | None = None, context: zmq.Context | None = None) -> None:
        keep_frame_buffers()
        self.id = worker_id
        self.context = context or zmq.Context.instance()
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.connect(inbox)
        self.outbox = self.context.socket(zmq.PUSH)
        self.outbox.setsockopt(zmq.LINGER, 5000)
        self.outbox.connect(outbox)
        self.frames = self.context.socket(zmq.PULL)
        self.frames.setsockopt(zmq.RCVHWM, rcvhwm)
        self.frames.setsockopt(zmq.LINGER, 0)
        self.frames_endpoint = frames_endpoint
        self.publish_interval_s = publish_interval_s
        self.roi_quota = max(1, math.ceil(roi_frames / n_workers))   # first frames summed for the auto ROI
        self.roi_wait_s = roi_wait_s
        self.parent_pid = parent_pid
        self.runs: dict[str, LiveRun] = {}
        self.ended = FinishedRuns()          # runs the coordinator closed: later frames are stale
        self.roi_reported: dict[str, int] = {}   # run -> frames in its latest ROI sum reported (a 'no peak' answer counts on from there)
        self.unknown: set[str] = set()       # runs nobody could identify: their frames are rejected
        self.asked: set[str] = set()
        self.held: list[_Held] = []
        self.seen: dict[str, list[tuple[float, ...]]] = {}
        self.n_seen = 0                      # rows in `seen`
        self.rejected: Counter[str] = Counter()
        self._seen_t = time.monotonic()

    # -- reporting -------------------------------------------------------------------------------
    def _report(self, kind: bytes, header: dict[str, Any], *buffers: Any) -> None:
        self.outbox.send_multipart([kind, P.pack(dict(header, worker=self.id)), *buffers], copy=False)

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        if self.rejected[reason] <= 5:
            log.warning("live worker %d rejected a message (%s: %s)", self.id, reason, detail)

    def _flush_seen(self) -> None:
        """Tell the coordinator which frames are in the sums (and what was rejected)."""
        self._seen_t = time.monotonic()
        for uid, rows in self.seen.items():
            if rows:
                self._report(SEEN, {"run": uid, "rejected": {}}, np.asarray(rows, dtype=np.float64))
        self.seen = {}
        self.n_seen = 0
        if self.rejected:
            self._report(SEEN, {"run": None, "rejected": dict(self.rejected)}, np.zeros((0, len(SEEN_COLUMNS))))
            self.rejected.clear()

    def _send_state(self, run: LiveRun, number: int, final: bool) -> None:
        lm = run.map(number)
        acc = lm.acc
        header = {"run": run.uid, "map": number, "frames": acc.frames_seen if acc else 0, "final": final}
        if final and lm.held is not None:     # its ROI was provisional: every frame held, to re-make it if asked
            header["held"] = not lm.held.overflowed and len(lm.held) == (acc.frames_seen if acc else 0)
        elif final and acc is None:          # dealt no frame of it: nothing to hold, nothing to re-make
            header["held"] = True
        self.outbox.send_multipart(encode_state(acc, dict(header, worker=self.id), lm.picks if final else None),
                                   copy=False)
        lm.dirty = False
        if final:
            lm.acc, lm.done, lm.picks = None, True, None

    def _remake(self, run: LiveRun, number: int, roi: list[int] | None, mask: npt.NDArray[np.uint8] | None,
                spots: SpotTable | None = None, n_frames: int = 0) -> None:
        """Accumulate map `number` again from its held frames with `roi`, `mask` and powder-arc `spots` and
        hand the sums in (`remade`); `roi` None: the map stays as it is, its frames are dropped; `n_frames`: the
        map's frame count (all workers')."""
        lm = run.map(number)
        held, lm.held = lm.held, None
        if roi is None:
            return
        acc = None
        if held is not None:                 # (none: dealt no frame of the map; it still answers, the coordinator waits for all)
            acc = make_accumulator(run.geometry, lm.map_shape, mask, dict(run.options, roi=list(roi)), spots,
                                   n_frames=n_frames)
            add_frames(acc, held.frames())
        header = {"run": run.uid, "map": number, "frames": acc.frames_seen if acc else 0, "final": True, "remade": True}
        self.outbox.send_multipart(encode_state(acc, dict(header, worker=self.id)), copy=False)

    # -- frames ----------------------------------------------------------------------------------
    def _on_stream(self, parts: list[Any]) -> None:
        try:
            msg = P.parse(parts)
        except P.RejectedMessage as exc:
            self._reject(exc.reason, str(exc))
            return
        if msg.kind != "frame":
            self.outbox.send_multipart([CTRL, *parts], copy=False)
            return
        self._on_frame(_Held(msg.header, msg.array, time.monotonic()))  # type: ignore[arg-type]

    def _on_frame(self, item: _Held) -> None:
        h = item.header
        uid = h["run"]
        if uid in self.ended:
            self._reject("stale", f"frame of run {uid!r:.60}, which already ended")
            return
        if uid in self.unknown:
            self._reject("unknown_run", f"run {uid!r:.60} has no start")
            return
        run = self.runs.get(uid)
        if run is None:
            if uid not in self.asked:
                self.asked.add(uid)
                self._report(ASK, {"run": uid, "map": h["map"]})
            self.held.append(item)
            return
        if run.roi_decider is not None:
            if not item.in_roi_sum:
                item.in_roi_sum = True
                run.roi_decider.add(item.frame)
            self._maybe_send_roi_sum(run)
            self.held.append(item)
            return
        number = h["map"]
        lm = run.maps.get(number)
        if lm is not None and lm.done:
            self._reject("stale", f"frame of map {number}, whose final sums were already handed in")
            return
        if lm is None or not lm.shape_known:
            if time.monotonic() - item.since < MAP_SHAPE_WAIT_S:
                self.held.append(item)
                return
            log.warning("live worker %d: no map_start for map %d of run %s; using the run's map shape", self.id, number, uid)
            lm = run.map_started(number, run.map_shape)
        if lm.acc is None and lm.roi_pending:       # its ROI comes with the previous map's end (the ROI follows the peak)
            if time.monotonic() - item.since < ROI_PENDING_WAIT_S:
                self.held.append(item)
                return
            log.warning("live worker %d: no ROI for map %d of run %s; taking the run's %s", self.id, number, uid, run.roi)
            lm.roi_pending = False
        try:
            check_frame(h, run.frame_shape, run.start["dtype"], lm.map_shape)
        except P.RejectedMessage as exc:
            self._reject(exc.reason, str(exc))
            return
        run.accumulate(h, item.frame)
        run.sample_for_follow(lm, h, item.frame)
        self.seen.setdefault(uid, []).append((h["seq"], number, h["frame"], h["t"], time.time(), h["index"],
                                              *(_number_or_nan(h.get(k)) for k in ("x", "y", "monitor"))))
        self.n_seen += 1

    def _maybe_send_roi_sum(self, run: LiveRun) -> None:
        """Report this worker's sum of its first frames when due (the coordinator decides the ROI)."""
        decider = run.roi_decider
        if decider is None or not decider.due():
            return
        self.roi_reported[run.uid] = decider.frames
        # report again after a quota more frames, answered or not: the coordinator may be waiting
        # for a worker that was dealt no frame yet, and then decides from the sums it has
        decider.wait_for_more(decider.frames)
        total = decider.sum.total if decider.sum.total is not None else np.zeros(0, dtype=np.uint64)
        standout = decider.sum.finder.standout
        counts = [standout] if standout is not None else []   # its bad-pixel counts, beside the sum
        self._report(ROISUM, {"run": run.uid, "frames": decider.frames, "shape": list(total.shape)}, total, *counts)

    def _retry_held(self) -> None:
        held, self.held = self.held, []
        for item in held:
            self._on_frame(item)

    # -- orders ----------------------------------------------------------------------------------
    def _on_order(self, parts: list[Any]) -> bool:
        """Apply one coordinator message; False on quit."""
        kind = parts[0].bytes
        if kind == QUIT:
            return False
        h = P.unpack(parts[1].bytes)
        uid = h["run"]
        run = self.runs.get(uid)
        if kind == SETUP and run is None and uid not in self.ended:
            mask = None
            if len(parts) > 2:
                mask = np.frombuffer(parts[2].buffer, dtype=np.uint8).reshape(h["frame_shape"]).copy()
            options = h.pop("options")
            map_shapes = h.pop("map_shapes", {})
            maps = h.pop("maps", {})
            follows = bool(h.pop("follows", False))
            decider = RoiDecider(self.roi_quota, self.roi_wait_s) if options.get("roi") is None else None
            run = self.runs[uid] = LiveRun(uid, h, mask, options, roi_decider=decider, follows=follows)
            for number, shape in map_shapes.items():
                self._map_order(run, {"map": int(number), "map_shape": shape, **maps.get(number, {})})
            self.unknown.discard(uid)
        elif kind == ROI and run is not None:
            reported = self.roi_reported.pop(uid, 0)
            if h["roi"] is not None:
                if len(parts) > 2:                  # the coordinator found hot/dead pixels: the run's mask now
                    run.mask = np.frombuffer(parts[2].buffer, dtype=np.uint8).reshape(run.frame_shape).copy()
                run.set_roi(h["roi"], provisional=bool(h.get("provisional")))
                if h.get("map") is not None:       # the ROI of a map that waited for the previous map's end
                    lm = run.map(int(h["map"]))
                    if lm.acc is None:
                        lm.roi, lm.roi_pending, lm.provisional = tuple(h["roi"]), False, run.provisional
            elif run.roi_decider is not None:      # no peak in the frames so far: report again with more
                run.roi_decider.wait_for_more(reported)
        elif kind == MAP and run is not None:
            self._map_order(run, h)
        elif kind == FINAL and run is not None:
            self._flush_seen()
            if h.get("n_frames"):             # the map's count (a map_start without one: learnt only now)
                run.frames_counted(run.map(int(h["map"])), int(h["n_frames"]))
            self._send_state(run, int(h["map"]), final=True)
        elif kind == REMAKE and run is not None:
            has_mask = bool(h.get("mask", len(parts) > 2))
            mask = np.frombuffer(parts[2].buffer, dtype=np.uint8).reshape(run.frame_shape).copy() if has_mask else None
            spots = None
            if h.get("spots"):       # the powder-arc spots to replace, as `SpotTable.arrays` (after the mask)
                spots = SpotTable.from_arrays(run.frame_shape[1], [np.frombuffer(p.buffer, dtype=dt).copy()
                                                                   for p, dt in zip(parts[2 + has_mask:], h["spots"])])
            self._remake(run, int(h["map"]), h["roi"], mask, spots, int(h.get("n_frames") or 0))
        elif kind == END:
            self.runs.pop(uid, None)
            self.roi_reported.pop(uid, None)
            self.ended.add(uid, "ended")
        elif kind == UNKNOWN and run is None:
            self.unknown.add(uid)
        self._retry_held()
        return True

    @staticmethod
    def _map_order(run: LiveRun, h: dict[str, Any]) -> None:
        """A map's shape, frame count and ROI (None: the run's; `roi_pending`: wait for it) from the coordinator."""
        lm = run.map_started(int(h["map"]), h["map_shape"], int(h.get("n_frames") or 0))
        if lm.acc is None:
            lm.roi = tuple(h["roi"]) if h.get("roi") is not None else None  # type: ignore[assignment]
            lm.roi_pending = bool(h.get("roi_pending", False))
            lm.provisional = bool(h.get("provisional", False))

    # -- loop ------------------------------------------------------------------------------------
    def _connect_frames(self, timeout_s: float = 2.0) -> None:
        """Connect to the stream and wait (bounded) for the handshake, so the detector deals
        frames to every worker from the first one when it is already up."""
        monitor = self.frames.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.frames.connect(self.frames_endpoint)
        try:
            if monitor.poll(int(timeout_s * 1000)):
                recv_monitor_message(monitor)
        finally:
            self.frames.disable_monitor()
            monitor.close(linger=0)

    def _parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid

    def _wait_for_go(self, timeout_s: float = 120.0) -> bool:
        """Join the stream only when every worker is up and the coordinator listens: a frame
        or control message taken earlier would reach nobody."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._parent_alive():
            if self.inbox.poll(100):
                kind = self.inbox.recv_multipart()[0]
                if kind == GO:
                    return True
                if kind == QUIT:
                    return False
        return False

    def serve(self) -> None:
        warm_up_kernels()
        self._report(READY, {"rcvhwm": self.frames.getsockopt(zmq.RCVHWM)})
        if not self._wait_for_go():
            self.frames.close(linger=0)
            self.inbox.close(linger=0)
            self.outbox.close(linger=0)
            return
        self._connect_frames()
        poller_all, poller_orders = zmq.Poller(), zmq.Poller()
        poller_all.register(self.inbox, zmq.POLLIN)
        poller_all.register(self.frames, zmq.POLLIN)
        poller_orders.register(self.inbox, zmq.POLLIN)
        last_publish = last_parent = time.monotonic()
        try:
            while True:
                poller = poller_all if len(self.held) < MAX_PENDING else poller_orders
                events = dict(poller.poll(10))
                if self.inbox in events:
                    for _ in range(64):
                        try:
                            parts = self.inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if not self._on_order(parts):
                            return
                if self.frames in events:
                    for _ in range(64):
                        if len(self.held) >= MAX_PENDING:
                            break
                        try:
                            parts = self.frames.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._on_stream(parts)
                        if self.n_seen >= SEEN_FLUSH_ROWS:
                            self._flush_seen()
                now = time.monotonic()
                if now - self._seen_t >= SEEN_FLUSH_S:
                    self._flush_seen()
                    for run in self.runs.values():
                        self._maybe_send_roi_sum(run)
                    if self.held and now - self.held[0].since >= MAP_SHAPE_WAIT_S:
                        self._retry_held()
                if now - last_publish >= self.publish_interval_s:
                    last_publish = now
                    for run in self.runs.values():
                        for lm in list(run.maps.values()):
                            if lm.dirty:
                                self._send_state(run, lm.number, final=False)
                if now - last_parent >= 0.5:
                    last_parent = now
                    if not self._parent_alive():    # an orphan would take frames nobody counts
                        log.error("live worker %d: coordinator gone, exiting", self.id)
                        return
        finally:
            self.frames.close(linger=0)
            self.inbox.close(linger=0)
            self.outbox.close(linger=1000)


def die_with_parent() -> None:
    """Ask Linux to kill this process the moment its parent dies. A worker orphaned by a
    killed coordinator would stay connected to the stream for a while and take frames (and
    control messages) that then reach nobody; the restarted coordinator's workers must get them."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): an orphaned worker exits within 0.5 s instead",
                        ctypes.get_errno())


def worker_main(worker_id: int, n_workers: int, frames_endpoint: str, inbox: str, outbox: str,
                options: dict[str, Any]) -> None:
    """Entry point of a worker process (multiprocessing spawn target)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the terminal's Ctrl-C: the coordinator decides (QUIT)
    if options.get("parent_pid") is not None and os.getppid() != options["parent_pid"]:
        return                   # the coordinator died before we could ask
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s live-worker-{worker_id} %(levelname)s: %(message)s")
    context = zmq.Context()
    FanOutWorker(worker_id, n_workers, frames_endpoint, inbox, outbox, context=context, **options).serve()
    context.term()
