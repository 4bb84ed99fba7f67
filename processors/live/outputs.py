"""Where the live processor's maps go: the lossy display channel and the lossless archive hand-off.

Shared by the inline processor (`live.LiveProcessor`) and the fan-out one
(`fanout.FanOutProcessor`), so both publish byte-identical map and status messages
(docs/protocol.md) and keep final maps the archiver has not taken yet instead of dropping them.
"""
from __future__ import annotations

import logging
from collections import OrderedDict, deque
from typing import Any

import zmq

from opmon.errors import EmptyMapError
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.dose import DoseGrid
from opmon.streaming.map_messages import encode_map
from opmon.processors.maps import MapResult
from opmon.processors.onset import OnsetDetector
from opmon.processors.peak_fit import fit_arrays
from opmon.streaming.archive.maps_file import FitArrays
from opmon.streaming import protocol as P

log = logging.getLogger(__name__)


def bound_or_connected(context: zmq.Context, kind: int, endpoint: str | None, *, bind: bool, hwm: int) -> zmq.Socket | None:
    """A PUB/PUSH socket on `endpoint` (None: no socket); PUSH lingers so final maps get out."""
    if endpoint is None:
        return None
    sock = context.socket(kind)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, 5000 if kind == zmq.PUSH else 0)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


def fit_message(result: MapResult, options: dict[str, Any]) -> FitArrays | None:
    """The final map's peak fit as the map message carries it (None when the map was not fitted)."""
    if result.fit is None:
        return None
    return fit_arrays(result.fit, str(options.get("peak_fit", "gauss")))


KEEP_RESULTS = 64    # latest final maps kept in memory (a 48 h beamtime makes hundreds)


class MapOutputs:
    """Display PUB (bound) and archiver PUSH (connected); the maps made so far.

    `results` holds the latest `keep_results` final maps (None: all, for a bounded replay);
    `made` and `summaries` (a few numbers per map) remember every one.
    """

    def __init__(self, context: zmq.Context, display_endpoint: str | None, maps_endpoint: str | None,
                 keep_results: int | None = KEEP_RESULTS) -> None:
        self.display = bound_or_connected(context, zmq.PUB, display_endpoint, bind=True, hwm=20)
        self.maps_out = bound_or_connected(context, zmq.PUSH, maps_endpoint, bind=False, hwm=100)
        self.keep_results = keep_results
        self.results: OrderedDict[tuple[str, int], MapResult] = OrderedDict()
        self.made: set[tuple[str, int]] = set()
        self.encoded: OrderedDict[tuple[str, int], list[Any]] = OrderedDict()   # as sent, for `resend`
        self.summaries: list[dict[str, Any]] = []
        self.unarchived: deque[list[Any]] = deque()   # final maps the archiver has not taken yet
        self.onsets: OrderedDict[str, OnsetDetector] = OrderedDict()   # per run, the newest few

    def final(self, acc: MomentAccumulator, *, run: str, number: int, n_frames: int, frames_lost: int,
              options: dict[str, Any], dose: DoseGrid | None = None) -> MapResult:
        """Finalize a completed map, publish it and hand it to the archiver (never dropped)."""
        try:
            result = acc.finalize()
        except EmptyMapError:
            result = acc.finalize(partial=True)
        self.results[(run, number)] = result
        self.made.add((run, number))
        while self.keep_results is not None and len(self.results) > self.keep_results:
            self.results.popitem(last=False)
        onset = self._onset_of(run).update(number, result.intensity, result.d_spacing, result.mask)
        if onset is not None:
            log.warning("run %s map %d: onset of a transformation: %s", run, number, onset.reason)
        parts = encode_map(result, run=run, map_number=number, final=True, frames=acc.frames_seen,
                           n_frames=n_frames, frames_lost=frames_lost, options=options, dose=dose,
                           onset=onset.as_dict() if onset is not None else None, fit=fit_message(result, options))
        self.encoded[(run, number)] = parts
        while self.keep_results is not None and len(self.encoded) > self.keep_results:
            self.encoded.popitem(last=False)
        valid = result.valid_d()
        self.summaries.append({"run": run, "map": number, "frames": acc.frames_seen, "frames_lost": frames_lost,
                               "d_mean": float(valid.mean()) if valid.size else float("nan"),
                               "roi": list(options.get("roi") or ()),
                               "onset": onset.as_dict() if onset is not None else None})
        if self.display is not None:
            self.display.send_multipart(parts, copy=False)
        if self.maps_out is not None:
            self.unarchived.append(parts)
            self.send_unarchived()
        log.info("run %s map %d final: %d frames, %d lost", run, number, acc.frames_seen, frames_lost)
        return result

    def _onset_of(self, run: str) -> OnsetDetector:
        """The run's onset detector (the maps of a run come in order; a few runs are kept)."""
        if run not in self.onsets:
            self.onsets[run] = OnsetDetector()
            while len(self.onsets) > 4:
                self.onsets.popitem(last=False)
        return self.onsets[run]

    def partial(self, acc: MomentAccumulator, *, run: str, number: int, n_frames: int, frames_lost: int,
                options: dict[str, Any], dose: DoseGrid | None = None) -> None:
        """Publish a map in progress on the display channel (lossy: a slow viewer misses some)."""
        if self.display is None or acc.frames_seen == 0:
            return
        result = acc.finalize(partial=True)
        self.display.send_multipart(encode_map(result, run=run, map_number=number, final=False, frames=acc.frames_seen,
                                               n_frames=n_frames, frames_lost=frames_lost, options=options,
                                               dose=dose), copy=False)

    def status(self, status: dict[str, Any]) -> None:
        if self.display is not None:
            self.display.send_multipart([b"status", P.pack(status)])

    def resend(self, run: str, number: int) -> bool:
        """Hand a final map to the archiver again (the first copy went to an archiver that died
        before writing it: ZeroMQ drops what was queued towards a lost peer); False when it is no
        longer held in memory (then the caller remakes it from the archive)."""
        parts = self.encoded.get((run, number))
        if parts is None or self.maps_out is None:
            return False
        self.unarchived.append(parts)
        self.send_unarchived()
        return True

    def send_unarchived(self) -> None:
        """Hand final maps to the archiver without ever blocking the live path; keep what it
        cannot take yet (archiver down or slow) and retry on every poll, never drop them."""
        while self.unarchived and self.maps_out is not None:
            try:
                self.maps_out.send_multipart(self.unarchived[0], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self.unarchived.popleft()

    def close(self) -> None:
        self.send_unarchived()
        if self.unarchived:
            log.error("%d final map(s) never reached the archiver (is it running?)", len(self.unarchived))
        for sock in (self.display, self.maps_out):
            if sock is not None:
                sock.close()
