"""`opmon bench acquisition`: frames/s of the step scan and of the fly scan, beside the renderer alone.

Plan alone: `sxdm_map` through the RunEngine into a sink that only counts (step, then fly);
the baseline renders the same frames with `FrameRenderer.frames` in one call. The ratio is the
RunEngine's per-frame (step) or per-line (fly) cost. End to end (unless --no-archive): the
same map, step and fly, from the RunEngine through the acknowledged ZeroMQ archive stream
(`ZmqFrameSink`) into an `Archiver` in its own process, until the archiver has closed the run;
frames lost = frames the detector took that are not in the archive; then the CPU each frame costs
in the acquisition's process and in the archiver's (getrusage, a short map's fixed cost
subtracted) and the frames/s that allows on the machine's cores, a figure the load does not move.
Not a timed test: machines are noisy, so read the ratios of one run.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine

from opmon.acquisition.mapping import sxdm_map
from opmon.acquisition.sinks import PublisherSink, SinkTarget
from opmon.benchmarks.bench_archive import cpu_per_frame, with_cpu
from opmon.benchmarks.loopback import free_endpoint
from opmon.simulators.beamline import BeamlineConfig, SimulatedBeamline
from opmon.simulators.instrument import SxdmSetup


class CountingSink:
    """A FrameSink that only counts, so the figure is the plan's own cost."""

    def __init__(self) -> None:
        self.frames = 0

    def open(self, run_uid: str, map_id: int, meta: Any) -> SinkTarget:
        return SinkTarget(uri="null://", mimetype="application/x-opmon-null")

    def write(self, frame: np.ndarray, header: dict[str, Any]) -> int:
        self.frames += 1
        return self.frames - 1

    def close(self) -> None:
        pass


def _archive(directory: str, endpoint: str, ack: str, results: Any, done: Any, ready: Any) -> None:
    """The archiver process: say when it is up (`ready`), take one run, report (frames written,
    lost, wall time the run closed), then keep acknowledging until the detector has closed its
    stream (`done`)."""
    from opmon.streaming.archive.archiver import Archiver

    archiver = Archiver(directory, endpoint, ack_endpoint=ack, flush_interval_s=0.5)
    ready.set()
    t_closed = None
    try:
        while not done.is_set():
            archiver.poll_once(20)
            if t_closed is None and archiver.runs and archiver.run_dir is None:   # the stop was taken
                t_closed = time.time()
                archiver.flush()                  # acknowledges the run's end
                results.put((archiver.frames_written, archiver.frames.counters.lost, t_closed))
    finally:
        archiver.close()


def end_to_end(setup: SxdmSetup, fly: bool, point_time_s: float, directory: Path) -> dict[str, float]:
    """Frames/s of one map from the RunEngine's start to the archiver's closed run, and frames lost."""
    from opmon.streaming.publisher import ZmqFrameSink

    endpoint, ack = free_endpoint("tcp"), free_endpoint("tcp")
    ctx = multiprocessing.get_context("spawn")
    results, done, ready = ctx.Queue(), ctx.Event(), ctx.Event()
    archive_dir = directory / ("fly" if fly else "step")
    proc = ctx.Process(target=_archive, args=(str(archive_dir), endpoint, ack, results, done, ready))
    proc.start()
    publisher = ZmqFrameSink([endpoint], stall_timeout_s=120, ack_endpoint=ack)
    sink = PublisherSink(publisher)
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(sink)
    bl = SimulatedBeamline(BeamlineConfig(setup=setup), sink=sink)
    try:
        # An archiver is a service that runs before the scan: its process start-up (imports,
        # 1-2 s under load) is not part of the scan. Unwaited, a run that sets up its beamline
        # faster than the archiver starts (every run after the first in a process) counted it.
        if not ready.wait(120):
            raise RuntimeError("the archiver process did not start within 120 s")
        t0 = time.time()
        RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), bl.etas(), potentiostat=bl.potentiostat,
                    fly=fly, point_time_s=point_time_s))
        taken = bl.detector.recorder.n_written - bl.detector.recorder.lines_dropped * setup.map_shape[1]
        written, lost, t_closed = results.get(timeout=300)
    finally:
        bl.close()
        publisher.close()                # waits for the archiver's last acknowledgements
        done.set()
        proc.join(30)
        shutil.rmtree(archive_dir, ignore_errors=True)
    return {"frames": taken, "frames_per_s": written / (t_closed - t0), "lost": lost + taken - written}


def plan_alone(setup: SxdmSetup, fly: bool, point_time_s: float) -> tuple[int, float]:
    """(frames, frames/s) of `sxdm_map` into a counting sink, after a short warm-up."""
    RE = RunEngine({}, call_returns_result=True)
    sink = CountingSink()
    bl = SimulatedBeamline(BeamlineConfig(setup=setup), sink=sink)
    try:
        kw = dict(potentiostat=bl.potentiostat, fly=fly, point_time_s=point_time_s)
        RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), bl.etas()[:2], **kw))
        sink.frames = 0
        t = time.perf_counter()
        RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), bl.etas(), **kw))
        return sink.frames, sink.frames / (time.perf_counter() - t)
    finally:
        bl.close()


def renderer_alone(setup: SxdmSetup, n: int) -> float:
    """Frames/s of `FrameRenderer.frames` rendering the map's frames in blocks of 256."""
    RE = RunEngine({}, call_returns_result=True)  # noqa: F841 (the beamline needs the bluesky loop)
    bl = SimulatedBeamline(BeamlineConfig(setup=setup), sink=CountingSink())
    try:
        index, eta = setup.scan("eta-outer")
        bl.renderer.frames(index[:64], eta[:64], setup.phi, setup.nu, setup.delta)  # compile outside the clock
        t = time.perf_counter()
        for s in range(0, n, 256):
            bl.renderer.frames(index[s:s + 256], eta[s:s + 256], setup.phi, setup.nu, setup.delta)
        return n / (time.perf_counter() - t)
    finally:
        bl.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench acquisition", description=__doc__.split("\n\n")[0])
    parser.add_argument("--map-shape", type=int, nargs=2, default=(10, 100),
                        help="rows, points per row: a fly line is a row (default 10 100)")
    parser.add_argument("--angles", type=int, default=5, help="rocking angles per map (default 5)")
    parser.add_argument("--point-time", type=float, default=0.0002,
                        help="fly scan: detector exposure per point in s, the trajectory's pace (default 0.0002: 5 kHz)")
    parser.add_argument("--no-archive", action="store_true", help="skip the end-to-end runs into the archiver")
    parser.add_argument("--dir", default=None, help="where the archiver writes (default: a temporary directory)")
    args = parser.parse_args(argv)
    if min(args.map_shape) < 1 or args.angles < 2 or args.point_time < 0:
        parser.error("--map-shape needs two sizes >= 1, --angles >= 2, --point-time >= 0")
    setup = SxdmSetup(map_shape=tuple(args.map_shape), n_angles=args.angles, roi=(96, 416, 160, 352))
    runs = {}
    if not args.no_archive:      # first: numba's parallel renderer below leaves its worker threads behind
        directory = Path(tempfile.mkdtemp(prefix="opmon-bench-acquisition-", dir=args.dir))
        try:
            # A short map of each kind first, not counted: the first end-to-end map of a process pays its
            # warm-up (first calls through ophyd-async and the sink, a full garbage collection over the
            # imports: 1-2 s) and came out at half the speed of the next. Warmed up, the order of the
            # two measured maps does not matter (it did only while the archiver's start-up was timed).
            warm = SxdmSetup(map_shape=(min(2, args.map_shape[0]), min(20, args.map_shape[1])), n_angles=2,
                             roi=setup.roi)
            for fly in (True, False):
                end_to_end(warm, fly, args.point_time, directory)
            # the same short maps again: their CPU is a map's fixed cost (the archiver process's start-up)
            bases = {fly: with_cpu(lambda fly=fly: end_to_end(warm, fly, args.point_time, directory)) for fly in (False, True)}
            runs = {fly: with_cpu(lambda fly=fly: end_to_end(setup, fly, args.point_time, directory)) for fly in (False, True)}
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    n, step = plan_alone(setup, fly=False, point_time_s=args.point_time)
    _, fly = plan_alone(setup, fly=True, point_time_s=args.point_time)
    render = renderer_alone(setup, n)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (only ratios inside one run compare)")
    print(f"opmon bench acquisition: {n} frames of {setup.frame_shape[0]}x{setup.frame_shape[1]} per map "
          f"({args.map_shape[0]} rows of {args.map_shape[1]} points, {args.angles} angles), potentiostat logging; "
          f"fly scan paced at {args.point_time * 1e3:g} ms per point")
    print(f"sxdm_map through the RunEngine: {step:8.0f} frames/s")
    print(f"sxdm_map fly scan:              {fly:8.0f} frames/s")
    print(f"FrameRenderer.frames alone:     {render:8.0f} frames/s")
    print(f"ratio plan / renderer: step {step / render:.3f}, fly {fly / render:.3f}  (the paper's instrument: 100 frames/s)")
    if runs:
        for fly, (r, _) in sorted(runs.items()):
            print(f"end to end into the archive, {'fly ' if fly else 'step'}: {r['frames_per_s']:8.0f} frames/s, "
                  f"frames lost {r['lost']:.0f} of {r['frames']:.0f}")
        print(f"fly / step end to end: {runs[True][0]['frames_per_s'] / runs[False][0]['frames_per_s']:.1f}x")
        cores = os.cpu_count() or 1
        for fly, (r, used) in sorted(runs.items()):
            base, used_base = bases[fly]
            here, there = cpu_per_frame([used], used_base, int(r["frames"]), int(base["frames"]))
            if here + there > 0:      # the frames/s above move with the machine's load, this does not
                print(f"CPU per frame beyond start-up, {'fly ' if fly else 'step'}: acquisition process {here:.0f} us + "
                      f"archiver process {there:.0f} us = {here + there:.0f} us -> at most "
                      f"{cores * 1e6 / (here + there):.0f} frames/s on {cores} fully busy cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
