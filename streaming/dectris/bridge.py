"""A DECTRIS detector as an opmon frame source: stream V2 in, opmon's protocol out.

The bridge PULLs the detector's stream V2 (it connects, as DECTRIS's clients do, to port
31001), checks and accounts every message, and republishes each series through
`ZmqFrameSink`, the sink the acquisition uses: the live processor and the archiver run
unchanged and see an ordinary run (one map per series, or several when `user_data` says so;
series.py). Loss accounting follows opmon's own receivers (`Counters`): a gap in `image_id` is
counted as lost (a detector PUSH deals messages round robin, so another consumer pulling from
the same detector shows up here as gaps), images of another series are rejected as `series`,
images or an end while no series is open as `unknown_series`, and images never seen before `end` as lost.
A malformed message is rejected with a reason and one log line, and the next one is handled
as if nothing happened: nothing already acquired is lost.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.streaming.dectris.codec import FRAME_KINDS, MultiDimArray, frame_chunk, loads, to_ndarray
from opmon.streaming.dectris.series import SeriesStart, parse_start
from opmon.streaming.protocol import RejectedMessage
from opmon.streaming.publisher import ZmqFrameSink
from opmon.streaming.receiver import Counters

log = logging.getLogger(__name__)
SCHEME = "dectris:"


def detector_endpoint(source: str) -> str:
    """`dectris:tcp://HOST:PORT` -> `tcp://HOST:PORT` (ValueError naming the source otherwise)."""
    if not source.startswith(SCHEME) or not source[len(SCHEME):].startswith(("tcp://", "ipc://")):
        raise ValueError(f"source {source!r}: expected dectris:tcp://HOST:PORT (the detector's stream V2, port 31001)")
    return source[len(SCHEME):]


@dataclass
class SeriesReport:
    """What became of one detector series."""

    series_id: int
    run: str
    map_number: int
    n_images: int
    received: int = 0
    lost: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)   # first few [first, last] image_ids missing
    ended: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"series_id": self.series_id, "run": self.run, "map": self.map_number, "images": self.n_images,
                "received": self.received, "lost": self.lost, "gaps": self.gaps[:10], "ended": self.ended}


class StreamV2Bridge:
    """Turns a detector's stream V2 into opmon runs on `sink`.

    Parameters
    ----------
    sink
        where runs go (bound by the caller: the acquisition's frame endpoints).
    channel
        threshold channel to monitor (default: the first of each series' `channels`).
    archive_chunks
        pass the detector's bslz4 chunk along with each frame, so the archiver stores it as it
        arrived (no recompression) when it matches the archive's codec.
    """

    def __init__(self, sink: ZmqFrameSink, *, channel: str | None = None, archive_chunks: bool = True) -> None:
        self.sink = sink
        self.channel = channel
        self.archive_chunks = archive_chunks
        self.counters = Counters()
        self.series: SeriesStart | None = None
        self.report: SeriesReport | None = None
        self.reports: list[SeriesReport] = []
        self.next_image = 0
        self._started = False           # the opmon run/map of the current series has been opened
        self._run_ok = True             # every series of the open opmon run ended normally
        self._next_map: dict[str, int] = {}
        self._logged: Counter[str] = Counter()

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, raw: bytes | memoryview) -> bool:
        """Check and forward one detector message; False if it was rejected (counted, logged)."""
        try:
            message = loads(raw)
            kind = message["type"]
            if kind == "image":
                self._on_image(message)
            else:
                self.counters.control += 1
                if kind == "start":
                    self._on_start(message)
                else:
                    self._on_end(message)
            return True
        except RejectedMessage as exc:
            self._reject(exc)
            return False

    def _reject(self, exc: RejectedMessage) -> None:
        if exc.reason == "duplicate":
            self.counters.duplicate += 1
        else:
            self.counters.rejected[exc.reason] += 1
        n = self._logged[exc.reason] = self._logged[exc.reason] + 1
        if n <= 5 or n % 1000 == 0:
            log.warning("detector message rejected (%s; %d of this kind so far)", exc, n)

    # -- series -------------------------------------------------------------------------------
    def _on_start(self, message: dict[str, Any]) -> None:
        series = parse_start(message, self.channel)
        if self.series is not None:
            log.warning("series %d started while series %d had no end: counted as aborted",
                        series.series_id, self.series.series_id)
            self._finish(aborted=True)
        if self.sink.run is not None and (not series.shared_run or self.sink.run != series.run):
            self.sink.stop_run("success" if self._run_ok else "abort")
        number = series.map_number if series.map_number is not None else (
            self._next_map.get(series.run, 0) if series.shared_run else 0)
        self._next_map[series.run] = number + 1
        self.series, self.next_image, self._started = series, 0, False
        self.report = SeriesReport(series.series_id, series.run, number, series.n_images)
        self.reports.append(self.report)
        log.info("series %d: %d images %s, map %d of run %s", series.series_id, series.n_images,
                 list(series.frame_shape), number, series.run)

    def _open(self, first: npt.NDArray[Any] | None) -> None:
        """Start the opmon run (first series of it) and map, once the first image is known.

        Pixels above `saturation_value` in the first image (DECTRIS's NODATA value fills
        module gaps and dead pixels) join the start's pixel mask, so a series sent without
        `header_detail = all` still has its gaps masked.
        """
        series, report = self.series, self.report
        assert series is not None and report is not None
        if self.sink.run != series.run:
            mask = series.mask
            if first is not None:
                limit = series.saturation if series.saturation is not None else np.iinfo(first.dtype).max - 1
                nodata = (first > limit).astype(np.uint8)
                mask = nodata if mask is None else (mask | nodata)
            self.sink.start_run(energy_ev=series.energy_ev, distance_m=series.distance_m,
                                pixel_size_m=series.pixel_size_m, beam_center=series.beam_center,
                                frame_shape=series.frame_shape, dtype=first.dtype if first is not None else "uint16",
                                map_shape=series.map_shape, run=series.run,
                                mask=mask, metadata=series.metadata())
            self._run_ok = True
        self.sink.start_map(series.n_images, map_number=report.map_number, map_shape=series.map_shape,
                            trigger={"kind": "dectris_series", "series_id": series.series_id,
                                     "series_unique_id": series.unique_id})
        self._started = True

    def _same_series(self, message: dict[str, Any], kind: str) -> SeriesStart:
        series = self.series
        sid = message.get("series_id")
        if series is None:
            raise RejectedMessage("unknown_series", f"{kind} of series {sid!r:.40} while no series is open "
                                                    "(its start never came, or it already ended)")
        unique = message.get("series_unique_id")
        if sid != series.series_id or (unique is not None and series.unique_id and unique != series.unique_id):
            raise RejectedMessage("series", f"{kind} of series {sid!r:.40} ({unique!r:.40}) while series "
                                            f"{series.series_id} ({series.unique_id}) is open")
        return series

    def _count_lost(self, first: int, last: int) -> None:
        """Images first..last (inclusive) never arrived."""
        n = last - first + 1
        if n <= 0 or self.report is None:
            return
        self.counters.lost += n
        self.report.lost += n
        if len(self.report.gaps) < 100:
            self.report.gaps.append((first, last))
        log.warning("series %d: images %d..%d lost (%d; another consumer pulling from the detector?)",
                    self.report.series_id, first, last, n)

    def _on_image(self, message: dict[str, Any]) -> None:
        series = self._same_series(message, "image")
        image_id = message.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool) or image_id < 0:
            raise RejectedMessage("field", f"image.image_id = {image_id!r:.40}, expected an integer >= 0")
        if image_id < self.next_image:
            raise RejectedMessage("duplicate", f"image_id {image_id} of series {series.series_id} already seen")
        index, angles, x, y = series.image_point(image_id)
        frame, chunk = self._frame(message, series)
        if not self._started:
            self._open(frame)
        if frame.shape != self.sink.frame_shape or str(frame.dtype) != self.sink.dtype:
            raise RejectedMessage("shape", f"image {list(frame.shape)} {frame.dtype}, the run has "
                                           f"{list(self.sink.frame_shape)} {self.sink.dtype}")
        self._count_lost(self.next_image, image_id - 1)
        self.next_image = image_id + 1
        self.sink.send_frame(frame, index=index, x=x, y=y, chunk=chunk, **angles)
        self.counters.accepted += 1
        assert self.report is not None
        self.report.received += 1

    def _frame(self, message: dict[str, Any], series: SeriesStart) -> tuple[npt.NDArray[Any], bytes | None]:
        data = message.get("data")
        if not isinstance(data, dict):
            raise RejectedMessage("field", f"image.data is a {type(data).__name__}, expected a map of channels")
        value = data.get(series.channel)
        if value is None:
            raise RejectedMessage("channel", f"image has no channel {series.channel!r} (has {list(data)[:8]})")
        frame = to_ndarray(value, f"image.data.{series.channel}")
        if frame.shape != series.frame_shape:
            raise RejectedMessage("shape", f"image {list(frame.shape)}, series has {list(series.frame_shape)}")
        if frame.dtype not in FRAME_KINDS:
            raise RejectedMessage("dtype", f"image of {frame.dtype}, expected uint8, uint16 or uint32 counts")
        if frame.dtype == np.uint8:
            return frame.astype(np.uint16), None       # opmon's frames are 16 or 32 bit
        chunk = frame_chunk(value) if self.archive_chunks and isinstance(value, MultiDimArray) else None
        return frame, chunk

    def _on_end(self, message: dict[str, Any]) -> None:
        series = self._same_series(message, "end")
        self._count_lost(self.next_image, series.n_images - 1)
        self._finish(aborted=False)

    def _finish(self, aborted: bool) -> None:
        series, report = self.series, self.report
        assert series is not None and report is not None
        if not self._started:
            self._open(None)
        self.sink.end_map()
        report.ended = not aborted
        self._run_ok = self._run_ok and not aborted
        if not series.shared_run or series.last_map:
            self.sink.stop_run("success" if self._run_ok else "abort",
                               reason="" if self._run_ok else "a detector series had no end message")
        log.info("series %d done: %d received, %d lost", report.series_id, report.received, report.lost)
        self.series = None

    def close(self) -> None:
        """The bridge stops: an open series is aborted (its run stopped, so receivers close it)."""
        if self.series is not None:
            self._finish(aborted=True)
        if self.sink.run is not None:
            self.sink.stop_run("success" if self._run_ok else "abort")

    def summary(self) -> dict[str, Any]:
        """Counters and every series' fate, for the log and the command's last line."""
        return {**self.counters.as_dict(), "series": [r.as_dict() for r in self.reports]}


class DetectorReceiver:
    """The PULL socket on the detector's stream V2, feeding a bridge until told to stop."""

    def __init__(self, endpoint: str, bridge: StreamV2Bridge, *, rcvhwm: int = 1000,
                 context: zmq.Context | None = None) -> None:
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, rcvhwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.endpoint = endpoint
        self.bridge = bridge
        self.stopped = False      # set by a signal handler (`stop_on_signals`)

    def poll_once(self, timeout_ms: int = 100) -> int:
        """Handle what arrived within `timeout_ms`; returns how many messages."""
        n = 0
        if self.socket.poll(timeout_ms):
            while n < 1000:
                try:
                    frame = self.socket.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self.bridge.handle(frame.buffer)
                n += 1
        return n

    def run(self, stop_when: Callable[[], bool] | None = None) -> None:
        """Serve until `stopped` is set (a signal handler) or `stop_when()`; then close the open series."""
        t_status = time.monotonic()
        while not self.stopped and not (stop_when is not None and stop_when()):
            self.poll_once()
            if time.monotonic() - t_status > 30:
                t_status = time.monotonic()
                log.info("detector stream: %s", self.bridge.counters.as_dict())
        self.bridge.close()

    def close(self) -> None:
        self.socket.close(linger=0)
