"""Lossless receiving end of the frame stream: check, account, never crash.

`RunTracker` knows which run is live, which are finished, and where sequence numbers jumped;
`FrameReceiver` puts it behind a PULL socket. Every rejected message is counted by reason and
logged (rate-limited), then the receiver carries on with the next one, so a burst of garbage
cannot stop or disturb good frames.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.errors import OpmonError
from opmon.streaming.memory import keep_frame_buffers
from opmon.streaming.protocol import Message, RejectedMessage, parse

log = logging.getLogger(__name__)

#: Called with an unknown run uid; returns (start header, mask or None) to adopt that run
#: (a receiver restarted mid-run recovers the start from the archive), or None.
RunResolver = Callable[[str], "tuple[dict[str, Any], npt.NDArray[np.uint8] | None] | None"]
#: Called with each parsed message before the run rules; raises RejectedMessage to reject it
#: (the archiver checks a chunk-only frame's block layout this way).
MessageCheck = Callable[[Message], None]


@dataclass
class MapProgress:
    """What a receiver knows about one map of the live run."""

    number: int
    map_shape: tuple[int, int]
    n_expected: int = 0          # from map_start (0 = unknown)
    received: int = 0            # frames accepted
    first_frame: int | None = None   # `frame` field of the first accepted frame (0 unless joined late)
    lost: int = 0                # sequence gaps revealed inside this map
    ended: bool = False          # map_end seen
    n_sent: int | None = None    # from map_end
    trigger: dict[str, Any] = field(default_factory=dict)


class RunShapes:
    """The shapes a run's start header fixes, for every class that follows a run from its start."""

    start: dict[str, Any]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.start["frame_shape"])  # type: ignore[return-value]

    @property
    def map_shape(self) -> tuple[int, int]:
        """The run's map shape (a map whose map_start was not seen has this one)."""
        return tuple(self.start["map_shape"])  # type: ignore[return-value]


@dataclass
class RunInfo(RunShapes):
    """One run as seen by a receiver: its start header, maps, and sequence bookkeeping."""

    uid: str
    start: dict[str, Any]
    mask: npt.NDArray[np.uint8] | None = None
    adopted: bool = False        # joined mid-run (start recovered, not received)
    maps: dict[int, MapProgress] = field(default_factory=dict)
    next_seq: int | None = None
    first_seq: int | None = None
    exit_status: str | None = None


@dataclass
class Counters:
    """Loss accounting shown to the user: accepted frames, lost frames, rejections by reason."""

    accepted: int = 0
    lost: int = 0
    duplicate: int = 0
    resent: int = 0              # re-sent messages already held (archive acknowledgements): not losses
    control: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "lost": self.lost, "duplicate": self.duplicate, "resent": self.resent,
                "control": self.control, "rejected": dict(self.rejected),
                "rejected_total": sum(self.rejected.values())}


def check_frame(header: dict[str, Any], frame_shape: tuple[int, int], dtype: str, map_shape: tuple[int, int]) -> None:
    """The checks of one frame against its run that every receiver of the stream applies
    (the live processor's fan-out workers too): frame shape and dtype, map pixel inside the map.

    Raises
    ------
    RejectedMessage
        reason `shape` or `index`, naming the bad value.
    """
    if tuple(header["shape"]) != tuple(frame_shape) or header["dtype"] != dtype:
        raise RejectedMessage("shape", f"frame {header['shape']} {header['dtype']}, run has {list(frame_shape)} {dtype}")
    ny, nx = map_shape
    if header["index"] >= ny * nx:
        raise RejectedMessage("index", f"map pixel {header['index']} outside map {ny}x{nx}")


class FinishedRuns:
    """Runs that ended and how (newest last, the latest `keep` only): a later message of one is stale.

    Shared by every party that follows runs (receiver, live coordinator, live workers), so a run
    ends the same way everywhere.
    """

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._status: OrderedDict[str, str] = OrderedDict()

    def add(self, uid: str, status: str) -> None:
        self._status[uid] = status
        while len(self._status) > self.keep:
            self._status.popitem(last=False)

    def __contains__(self, uid: object) -> bool:
        return uid in self._status

    def __getitem__(self, uid: str) -> str:
        return self._status[uid]

    def __len__(self) -> int:
        return len(self._status)


class RunTracker:
    """Applies run identity and sequence rules to parsed messages (docs/protocol.md).

    Frames of finished runs are `stale`, of never-started runs `unknown_run` (unless the
    resolver adopts the run); each jump in `seq` adds to `lost`; a repeated `seq` is dropped
    and counted as `duplicate`.
    """

    #: Largest forward jump of `seq` taken as frames lost; a larger one is a corrupt header, and
    #: believing it would count ~2**64 frames lost and drop every later frame as a duplicate.
    MAX_SEQ_JUMP = 1 << 24

    def __init__(self, resolver: RunResolver | None = None, keep_finished: int = 64) -> None:
        self.resolver = resolver
        self.current: RunInfo | None = None
        self.finished = FinishedRuns(keep_finished)
        self.counters = Counters()

    def _finish(self, run: RunInfo, status: str) -> None:
        run.exit_status = status
        self.finished.add(run.uid, status)
        if self.current is run:
            self.current = None

    def _run_for(self, uid: str) -> RunInfo:
        if self.current is not None and self.current.uid == uid:
            return self.current
        if uid in self.finished:
            raise RejectedMessage("stale", f"run {uid!r:.60} already ended ({self.finished[uid]})")
        found = None
        if self.resolver is not None:
            try:
                found = self.resolver(uid)
            except (OpmonError, OSError) as exc:     # an unreadable archive must not stop the receiver
                log.error("cannot recover the start of run %s: %s", uid, exc)
        if found is None:
            raise RejectedMessage("unknown_run", f"run {uid!r:.60} has no start")
        start, mask = found
        if self.current is not None:
            self._finish(self.current, "abort")
        self.current = RunInfo(uid, start, mask, adopted=True)
        log.warning("joined run %s mid-stream (start recovered)", uid)
        return self.current

    def _map(self, run: RunInfo, number: int) -> MapProgress:
        progress = run.maps.get(number)
        if progress is None:
            progress = run.maps[number] = MapProgress(number, run.map_shape)
        return progress

    def _check_jump(self, run: RunInfo, kind: str, last_seq: int) -> None:
        if run.next_seq is not None and last_seq - run.next_seq >= self.MAX_SEQ_JUMP:
            raise RejectedMessage("field", f"{kind} jumps to seq {last_seq} from {run.next_seq}: implausible gap")

    def _advance(self, run: RunInfo, last_seq: int, progress: MapProgress | None) -> None:
        """Sequence numbers up to `last_seq` were sent: count the ones never seen."""
        if run.next_seq is None:
            return
        if last_seq >= run.next_seq:
            gap = last_seq - run.next_seq + 1
            self.counters.lost += gap
            if progress is not None:
                progress.lost += gap
            run.next_seq = last_seq + 1

    def accept(self, msg: Message) -> Message:
        """Apply run and sequence rules; returns the message or raises RejectedMessage."""
        h = msg.header
        kind = msg.kind
        if kind == "frame":
            run = self._run_for(h["run"])
            known = run.maps.get(h["map"])
            check_frame(h, run.frame_shape, run.start["dtype"], known.map_shape if known else run.map_shape)
            progress = self._map(run, h["map"])
            seq = h["seq"]
            self._check_jump(run, kind, seq)
            if run.next_seq is None:
                run.next_seq = run.first_seq = seq
            if seq < run.next_seq:
                raise RejectedMessage("duplicate", f"seq {seq} already seen (next expected {run.next_seq})")
            self._advance(run, seq - 1, progress)
            run.next_seq = seq + 1
            if progress.first_frame is None:
                progress.first_frame = h["frame"]
            progress.received += 1
            self.counters.accepted += 1
            return msg
        self.counters.control += 1
        if kind == "start":
            uid = h["run"]
            if uid in self.finished:
                raise RejectedMessage("stale", f"start of run {uid!r:.60}, which already ended")
            if self.current is not None and self.current.uid == uid:
                # a repeated start would make receivers begin the run again over what they hold
                self.counters.duplicate += 1
                raise RejectedMessage("duplicate", f"start of run {uid!r:.60}, which is already running")
            if self.current is not None and self.current.uid != uid:
                log.warning("run %s started while %s had no stop: counted as aborted", uid, self.current.uid)
                self._finish(self.current, "abort")
            if self.current is None or self.current.uid != uid:
                self.current = RunInfo(uid, h, None if msg.array is None else np.array(msg.array))
            return msg
        run = self._run_for(h["run"])
        if kind == "map_start":
            progress = self._map(run, h["map"])
            progress.map_shape = tuple(h["map_shape"])  # type: ignore[assignment]
            progress.n_expected = h["n_frames"]
            progress.trigger = h.get("trigger") or {}
        elif kind == "map_end":
            self._check_jump(run, kind, h["last_seq"])
            progress = self._map(run, h["map"])
            self._advance(run, h["last_seq"], progress)
            progress.ended = True
            progress.n_sent = h["n_frames"]
        elif kind == "stop":
            self._check_jump(run, kind, h["n_frames"] - 1)
            last = max(run.maps) if run.maps else None
            self._advance(run, h["n_frames"] - 1, run.maps.get(last) if last is not None else None)
            self._finish(run, h["exit_status"])
        return msg


class FrameReceiver:
    """A PULL socket that yields only good messages and counts everything else.

    Parameters
    ----------
    endpoint
        e.g. ``tcp://127.0.0.1:5551``; connected unless `bind`.
    rcvhwm
        receive queue depth; when full the sender blocks (back-pressure), nothing is dropped.
    accept_chunk_only
        take frames sent as their compressed chunk alone (`protocol.CHUNK_ONLY`): a receiver
        that stores chunks (the archiver); any other needs the raw frame and rejects them.
    check
        a further check of each parsed message, before it counts as received (`MessageCheck`).
    """

    def __init__(self, endpoint: str, *, bind: bool = False, rcvhwm: int = 200, resolver: RunResolver | None = None,
                 context: zmq.Context | None = None, name: str = "receiver", accept_chunk_only: bool = False,
                 check: MessageCheck | None = None) -> None:
        keep_frame_buffers()
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        if bind:
            self.socket.bind(endpoint)
        else:
            self.socket.connect(endpoint)
        self.endpoint = endpoint
        self.name = name
        self.tracker = RunTracker(resolver)
        self.accept_chunk_only = accept_chunk_only
        self.check = check
        self._logged: Counter[str] = Counter()
        self._last_log = 0.0

    @property
    def counters(self) -> Counters:
        return self.tracker.counters

    def _reject(self, exc: RejectedMessage, resent: bool = False) -> None:
        if resent and exc.reason in ("duplicate", "stale"):
            self.counters.resent += 1           # the sender re-sent what this receiver already had
            return
        if exc.reason == "duplicate":
            self.counters.duplicate += 1
        else:
            self.counters.rejected[exc.reason] += 1
        n = self._logged[exc.reason] = self._logged[exc.reason] + 1
        now = time.monotonic()
        if n <= 5 or now - self._last_log > 5.0:
            self._last_log = now
            log.warning("%s rejected a message (%s; %d of this kind so far)", self.name, exc, n)

    def handle(self, parts: list[Any], resent: bool = False) -> Message | None:
        """Check one multipart message; None if it was rejected (and counted).

        `resent`: the sender re-sends it after a reconnection, so an already-seen seq or an
        ended run is expected and counted as `resent`, not as a duplicate or stale message.
        """
        try:
            msg = parse(parts, self.accept_chunk_only)
            if self.check is not None:
                self.check(msg)
            return self.tracker.accept(msg)
        except RejectedMessage as exc:
            self._reject(exc, resent)
            return None

    def recv(self, timeout_ms: int = 100) -> Message | None:
        """Next good message, or None if nothing good arrived within `timeout_ms`."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not self.socket.poll(remaining):
                return None
            msg = self.handle(self.socket.recv_multipart(copy=False))
            if msg is not None:
                return msg
            if time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        self.socket.close(linger=0)
