"""What the inline and the fan-out live processors share: the service loop's housekeeping.

Both keep their outputs in a `MapOutputs`, publish partial maps every `publish_interval_s`,
a status message every second, and, when idle with an archive, make the newest run's maps
that nobody delivered (`live_recovery.catch_up`). Each subclass says how to take one round of
messages (`poll_once`), which runs are open, what its status and partial maps are.
"""
from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from opmon.processors.live.outputs import MapOutputs
from opmon.processors.live_recovery import catch_up
from opmon.processors.maps import MapResult
from opmon.streaming import protocol as P

CATCH_UP_S = 5.0   # an idle processor looks this often for archived maps nobody made
LATENCY_RECORDS = 200_000   # latest frames whose latency is kept (benchmarks, status)


class LiveService:
    """Base of `LiveProcessor` and `FanOutProcessor` (not used alone)."""

    outputs: MapOutputs
    archive_dir: Path | None
    roi_setting: Any
    roi_frames: int
    threshold: int
    background: Any
    publish_interval_s: float
    stopped: bool

    def _init_service(self) -> None:
        # Per-frame latency records of the latest frames (bounded: a 48 h beamtime must not grow them)
        self.latencies: deque[float] = deque(maxlen=LATENCY_RECORDS)       # frame sent -> accumulated, s
        self.latency_seqs: deque[int] = deque(maxlen=LATENCY_RECORDS)      # seq of each entry of `latencies`
        self.accumulated_at: deque[float] = deque(maxlen=LATENCY_RECORDS)  # when it was accumulated (time.time())
        self.publish_latencies: deque[float] = deque(maxlen=LATENCY_RECORDS)  # frame sent -> first map showing it, s
        self.recovered_maps = 0
        self.frames_processed = 0
        self.errors = 0
        self._rate = (time.monotonic(), 0)
        self._last_publish = self._last_status = 0.0
        self._last_catch_up = time.monotonic()

    @property
    def results(self) -> dict[tuple[str, int], MapResult]:
        return self.outputs.results

    @property
    def summaries(self) -> list[dict[str, Any]]:
        return self.outputs.summaries

    def _open_runs(self) -> set[str]:
        raise NotImplementedError

    def publish_partials(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def poll_once(self, timeout_ms: int = 50) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _status_message(self, *, run: str | None, lost: int, rejected: dict[str, int], map_number: int | None,
                        map_progress: float | None, maps_done: int, recovered: int, workers: int) -> dict[str, Any]:
        """The lossy status message of docs/protocol.md, with the frame rate since the last one."""
        now = time.monotonic()
        t0, n0 = self._rate
        rate = (self.frames_processed - n0) / (now - t0) if now > t0 else 0.0
        self._rate = (now, self.frames_processed)
        return {"v": P.VERSION, "kind": "status", "source": "live", "t": time.time(),
                "run": run, "state": "running" if run else "idle",
                "frames": self.frames_processed, "frames_per_s": rate, "frames_lost": lost,
                "rejected": rejected, "map": map_number, "map_progress": map_progress,
                "maps_done": maps_done, "recovered": recovered, "errors": self.errors,
                "maps_unarchived": len(self.outputs.unarchived), "workers": workers, "archive": None}

    def _housekeeping(self, now: float) -> None:
        """Publish and report on time; catch up from the archive when idle."""
        if now - self._last_publish >= self.publish_interval_s:
            self._last_publish = now
            self.publish_partials()
        if self.outputs.display is not None and now - self._last_status >= 1.0:
            self._last_status = now
            self.outputs.status(self.status())
        if self.archive_dir is not None and not self._open_runs() and now - self._last_catch_up >= CATCH_UP_S:
            self._last_catch_up = now
            self.recovered_maps += catch_up(self.archive_dir, self.outputs, skip_runs=self._open_runs(),
                                            roi=self.roi_setting, roi_frames=self.roi_frames,
                                            threshold=self.threshold, background=self.background)

    def serve(self, stop_when: Any = None) -> None:
        """Run until `stop_when()` is true or `stopped` is set, then close."""
        try:
            while not self.stopped and not (stop_when and stop_when()):
                self.poll_once()
        finally:
            self.close()
