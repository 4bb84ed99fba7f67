"""What the inline and the fan-out executors share: settings, outputs and the service loop.

Both begin runs with the same engine (`engine.LiveRun`), keep their outputs in one `MapOutputs`,
publish partial maps every `publish_interval_s`, a status message every second, and, when idle
with an archive, make the newest run's maps that nobody delivered (`recovery.catch_up`).
Each executor says how to take one round of messages (`poll_once`), which runs are open, what
its status and partial maps are.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.errors import OpmonError
from opmon.processors.accumulate import MomentAccumulator, Roi
from opmon.processors.live.engine import LiveMap, LiveRun, initial_roi, spot_options
from opmon.processors.live.outputs import MapOutputs
from opmon.processors.live.recovery import catch_up
from opmon.processors.live.remake import remake_map
from opmon.processors.maps import MapResult
from opmon.processors.peak_fit import PEAK_FIT_MODELS
from opmon.streaming import protocol as P

log = logging.getLogger(__name__)

CATCH_UP_S = 5.0   # an idle processor looks this often for archived maps nobody made
LATENCY_RECORDS = 200_000   # latest frames whose latency is kept (benchmarks, status)


class LiveService:
    """Base of `LiveProcessor` and `FanOutProcessor` (not used alone)."""

    def _init_service(self, context: zmq.Context | None, display_endpoint: str | None, maps_endpoint: str | None, *,
                      publish_interval_s: float, roi: Roi | str | None, roi_frames: int, roi_wait_s: float,
                      threshold: int, background: Any, archive_dir: str | Path | None, workers: int,
                      register: str = "tilt", powder_spots: str = "auto", peak_fit: str = "off") -> None:
        if register not in ("auto", "tilt", "off"):
            raise OpmonError(f"register {register!r}: the live processor takes auto, tilt or off")
        if powder_spots not in ("auto", "off"):
            raise OpmonError(f"powder_spots {powder_spots!r}: the live processor takes auto or off")
        if peak_fit not in PEAK_FIT_MODELS:
            raise OpmonError(f"peak_fit {peak_fit!r}: the live processor takes {' or '.join(PEAK_FIT_MODELS)}")
        self.register, self.peak_fit = register, peak_fit
        self.powder_spots = powder_spots
        self.context = context or zmq.Context.instance()
        self.n_workers = workers
        self.archive_dir = Path(archive_dir) if archive_dir is not None else None
        self.roi_setting, self.roi_frames, self.roi_wait_s = roi, roi_frames, roi_wait_s
        self.threshold, self.background = threshold, background
        self.publish_interval_s = publish_interval_s
        self.outputs = MapOutputs(self.context, display_endpoint, maps_endpoint)
        self.display = self.outputs.display
        self.roi_decided_at = 0.0                 # time.time() the current run's ROI was known
        self.stopped = False
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
        self._remaker: ThreadPoolExecutor | None = None     # re-makes maps taken with a provisional ROI
        self._remaking: list[tuple[Any, ...]] = []          # (job, run, map, its live sums, n_frames, lost, options)

    @property
    def results(self) -> dict[tuple[str, int], MapResult]:
        return self.outputs.results

    @property
    def summaries(self) -> list[dict[str, Any]]:
        return self.outputs.summaries

    # -- the engine, the same for every executor --------------------------------------------------
    def _new_run(self, start: dict[str, Any], mask: npt.NDArray[np.uint8] | None, *, adopted: bool,
                 roi: Roi | None) -> LiveRun:
        """A run with this processor's settings; `roi` (recovered from the archive) before the setting."""
        given = initial_roi(self.roi_setting, start)
        run = LiveRun.begin(start, mask, roi or given, threshold=self.threshold,
                            background=self.background, roi_quota=self.roi_frames, roi_wait_s=self.roi_wait_s,
                            adopted=adopted, register=self.register, powder_spots=self.powder_spots, peak_fit=self.peak_fit,
                            follows=self.roi_setting == "auto" and given is None)   # also after a restart (`roi` recovered)
        if run.roi is not None:
            self.roi_decided_at = time.time()
        return run

    def _accumulated(self, latency_s: float, seq: int, at: float) -> None:
        """Record one frame in the sums (latency from its send time, when)."""
        self.latencies.append(latency_s)
        self.latency_seqs.append(seq)
        self.accumulated_at.append(at)
        self.frames_processed += 1

    def _published(self, lm: LiveMap) -> None:
        """The frames of `lm` not yet shown are in a map just published: record their latency."""
        now = time.time()
        self.publish_latencies.extend(now - t for t in lm.unpublished_t)
        lm.unpublished_t.clear()

    def _final(self, run: LiveRun, lm: LiveMap, acc: MomentAccumulator, *, n_frames: int, frames_lost: int,
               options: dict[str, Any] | None = None) -> None:
        """Make, publish and archive `lm`'s final maps from `acc` (taken with `options`, default the map's)."""
        lm.done = True
        dose = run.dose.grid(up_to=lm.number) if run.dose is not None else None   # maps 0..this one
        self.outputs.final(acc, run=run.uid, number=lm.number, n_frames=n_frames, frames_lost=frames_lost,
                           options=options if options is not None else run.map_options(lm), dose=dose)
        if run.dose is not None:
            run.dose.release(lm.number)
        self._published(lm)
        lm.acc = None   # the sums of a finished map are its final maps now: a run of hundreds of maps must not keep them

    def _final_own_roi(self, run: LiveRun, lm: LiveMap, acc: MomentAccumulator, *, n_frames: int,
                       frames_lost: int) -> Roi | None:
        """`lm`'s final maps with the ROI and mask its whole map asks for (`opmon process`'s rule on
        the frames it samples): a map taken with a provisional ROI that misses its peak is re-made
        (`remake.remake_map`) on a thread, its final maps made when that is done (`_remakes_done`),
        while the maps to come already follow its peak. Returns the ROI they take when it changed."""
        plan = run.map_plan(lm)
        options = dict(run.map_options(lm), **spot_options(plan))
        if run.remake_wanted(lm, plan):
            assert plan is not None
            if self._remaker is None:
                self._remaker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opmon-remake")
            job = self._remaker.submit(remake_map, run, lm, plan, self.archive_dir, lm.held)
            self._remaking.append((job, run, lm, acc, n_frames, frames_lost, options))
        else:
            self._final(run, lm, acc, n_frames=n_frames, frames_lost=frames_lost, options=options)
        return run.conclude_map(lm, plan)

    def _remakes_done(self, wait_s: float = 0.0) -> None:
        """Final maps of the re-made maps whose re-making is over (waiting up to `wait_s` for them);
        a map that could not be re-made keeps the sums it was taken with."""
        deadline = time.monotonic() + wait_s
        for item in list(self._remaking):
            job, run, lm, acc, n_frames, frames_lost, options = item
            try:
                remade = job.result(timeout=max(0.0, deadline - time.monotonic())) if wait_s else (
                    job.result() if job.done() else False)
            except FutureTimeout:
                continue
            except Exception:       # noqa: BLE001 - the map keeps its live sums; the error is logged
                log.exception("run %s map %d: re-making it failed; kept with ROI %s", run.uid, lm.number, lm.roi)
                remade = None
            if remade is False:
                continue
            self._remaking.remove(item)
            if remade is not None:
                acc, options = remade
            self._final(run, lm, acc, n_frames=n_frames, frames_lost=frames_lost, options=options)

    def _close_remaker(self, wait_s: float = 60.0) -> None:
        """Make the final maps of maps still being re-made (bounded wait), then stop the thread."""
        self._remakes_done(wait_s)
        if self._remaker is not None:
            self._remaker.shutdown(wait=False, cancel_futures=True)
            self._remaker = None

    def _partial(self, run: LiveRun, lm: LiveMap, acc: MomentAccumulator, *, n_frames: int, frames_lost: int) -> None:
        """Publish `lm` in progress from `acc` on the display channel."""
        self.outputs.partial(acc, run=run.uid, number=lm.number, n_frames=n_frames, frames_lost=frames_lost,
                             options=run.map_options(lm), dose=run.dose.grid(up_to=lm.number) if run.dose is not None else None)
        self._published(lm)

    # -- what each executor says ------------------------------------------------------------------
    def _open_runs(self) -> set[str]:
        raise NotImplementedError

    def publish_partials(self) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def _live_runs(self) -> list[LiveRun]:
        raise NotImplementedError

    def sums_held(self) -> int:
        """Maps whose sums this process holds in memory: the maps in progress only (a run of
        hundreds of maps over a 48 h beamtime must not keep the sums of the finished ones)."""
        return sum(lm.acc is not None for run in self._live_runs() for lm in run.maps.values())

    def poll_once(self, timeout_ms: int = 50) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _status_message(self, *, run: str | None, lost: int, rejected: dict[str, int], map_number: int | None,
                        map_progress: float | None, maps_done: int, recovered: int) -> dict[str, Any]:
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
                "maps_unarchived": len(self.outputs.unarchived), "workers": self.n_workers, "archive": None}

    def _housekeeping(self, now: float) -> None:
        """Publish and report on time; final maps of re-made maps; catch up from the archive when idle."""
        if self._remaking:
            self._remakes_done()
        if now - self._last_publish >= self.publish_interval_s:
            self._last_publish = now
            self.publish_partials()
        if self.outputs.display is not None and now - self._last_status >= 1.0:
            self._last_status = now
            self.outputs.status(self.status())
        if self.archive_dir is not None and not self._open_runs() and now - self._last_catch_up >= CATCH_UP_S:
            self._last_catch_up = now
            self.recovered_maps += catch_up(self.archive_dir, self.outputs, skip_runs=self._open_runs(),
                                            roi=self.roi_setting,
                                            threshold=self.threshold, background=self.background,
                                            register=self.register, peak_fit=self.peak_fit,
                                            powder_spots=self.powder_spots)

    def serve(self, stop_when: Any = None) -> None:
        """Run until `stop_when()` is true or `stopped` is set, then close."""
        try:
            while not self.stopped and not (stop_when and stop_when()):
                self.poll_once()
        finally:
            self.close()
