"""`opmon bench dask`: `opmon process --dask` on a run of 8 maps, 1 vs 2 local workers, beside
one process (`opmon process` without Dask) in the same run.

The run is an archive directory as the archiver leaves it (map_NNNN.h5 per map, run.h5 linking
them) of 512 x 512 photon-counting frames, bitshuffle/LZ4. Both clusters are started (and their
workers' kernels loaded) before the clock runs: the figures are the reduction and the tree merge,
not Dask's start-up (printed apart). The three are timed in turn, `--repeat` rounds, so load
from other users hits all alike; best and median of the rounds are printed. Each worker has one
thread and one numba thread, and its task reads and adds in turn on that thread (one core); the
single process uses numba's default threads (every core) and reads the next block while the
kernels run (up to two cores). "cores busy" is the CPU time of the processes that
did the work over the wall time: on a machine shared with other work it says how much of the
cores a run got, which bounds its speed-up; frames per CPU-second is the work's cost whatever
the load (equal for 1 and 2 workers = no parallel overhead).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from opmon.benchmarks.bench_process import SHAPE, photon_counting_frames
from opmon.processors.distributed import local_cluster, process_plan_dask
from opmon.processors.offline import ProcessOptions, plan_raw, process_plan
from opmon.streaming.archive.layout import ENTRY, map_file_name
from opmon.streaming.archive.raw import RawMapWriter
from opmon.streaming.archive.run_writer import MasterEntry, RunDirectory

if TYPE_CHECKING:
    from distributed import Client

MAP_SHAPE = (10, 10)
BLOCK = 100  # frames generated at a time (100 MB of uint32), so memory stays flat


def write_run(run: Path, maps: int, frames_per_map: int) -> Path:
    """A run directory of `maps` raw maps, each a 10 x 10 raster at several rocking angles."""
    run.mkdir()
    directory = RunDirectory(run, "bench-dask")
    for number in range(maps):
        with h5py.File(run / map_file_name(number), "w") as f:
            writer = RawMapWriter(f.create_group(ENTRY), frame_shape=SHAPE, dtype=np.uint32, energy_ev=10000.0,
                                  distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(256.0, 256.0),
                                  map_shape=MAP_SHAPE, expected_frames=frames_per_map)
            for start in range(0, frames_per_map, BLOCK):
                k = min(BLOCK, frames_per_map - start)
                index = np.arange(start, start + k) % (MAP_SHAPE[0] * MAP_SHAPE[1])
                eta = 18.7 + 0.6 * (np.arange(start, start + k) // (MAP_SHAPE[0] * MAP_SHAPE[1])) / max(1, frames_per_map // 100)
                writer.append(photon_counting_frames(k, np.uint32, seed=number * 1000 + start), index, eta, 0.0, 35.0, 0.0)
        directory.maps[number] = MasterEntry(number, frames=frames_per_map, complete=True)
    return directory.write_master()


def timed(fn: Callable[[], object], cpu: Callable[[], float]) -> tuple[float, float]:
    """Wall time of `fn` and the cores it kept busy on average (CPU seconds of its processes / wall)."""
    c, t = cpu(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t
    return wall, (cpu() - c) / wall


def workers_cpu(client: "Client") -> Callable[[], float]:
    """CPU seconds used so far by every worker process of `client`'s cluster (all their threads)."""
    return lambda: sum(client.run(time.process_time).values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench dask", description=__doc__)
    parser.add_argument("--maps", type=int, default=8, help="maps in the run (default 8)")
    parser.add_argument("--frames-per-map", type=int, default=500, help="512 x 512 uint32 frames per map (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the three measurements (default 3)")
    parser.add_argument("--task-frames", type=int, default=None, help="frames per Dask task (default: opmon's)")
    args = parser.parse_args(argv)
    options = ProcessOptions()
    with tempfile.TemporaryDirectory(prefix="opmon-bench-dask-") as tmp, ExitStack() as stack:
        from distributed import Client

        work = Path(tmp)
        t = time.perf_counter()
        run = write_run(work / "run", args.maps, args.frames_per_map)
        n = args.maps * args.frames_per_map
        print(f"opmon bench dask: a run of {args.maps} maps x {args.frames_per_map} frames of {SHAPE[0]}x{SHAPE[1]} uint32 "
              f"({n * SHAPE[0] * SHAPE[1] * 4 / 1e9:.1f} GB raw, bitshuffle/LZ4; written in {time.perf_counter() - t:.0f} s)")
        clients = {}
        for workers in (1, 2):
            t = time.perf_counter()
            cluster = stack.enter_context(local_cluster(workers))
            clients[workers] = stack.enter_context(Client(cluster))
            print(f"local cluster of {workers} worker(s) started in {time.perf_counter() - t:.1f} s (not in the figures)")
        plan = plan_raw(run, options)
        stack.callback(plan.close)
        out = work / "maps.h5"

        def one() -> None:
            process_plan(plan, out.with_name("one.h5"), options)

        def on(workers: int) -> Callable[[], None]:
            return lambda: process_plan_dask(plan, out.with_name(f"dask{workers}.h5"), options, clients[workers],
                                             task_frames=args.task_frames)

        runs = {"one process": (one, time.process_time), "dask, 1 worker": (on(1), workers_cpu(clients[1])),
                "dask, 2 workers": (on(2), workers_cpu(clients[2]))}
        for fn, _ in runs.values():
            fn()  # warm: page cache, numba's kernels loaded in every process
        times: dict[str, list[float]] = {name: [] for name in runs}
        cores: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):
            for name, (fn, cpu) in runs.items():
                wall, busy = timed(fn, cpu)
                times[name].append(wall)
                cores[name].append(busy)
    print(f"{'':16} {'best s':>7} {'median s':>9} {'frames/s':>9} {'cores busy':>11} {'frames/CPU-s':>13}")
    for name, ts in times.items():
        cpu_s = statistics.median([t * c for t, c in zip(ts, cores[name])])
        print(f"{name:16} {min(ts):7.2f} {statistics.median(ts):9.2f} {n / min(ts):9.0f} "
              f"{statistics.median(cores[name]):11.2f} {n / cpu_s:13.0f}")
    one_w, two_w, single = min(times["dask, 1 worker"]), min(times["dask, 2 workers"]), min(times["one process"])
    print(f"speed-up of 2 workers over 1 worker: {one_w / two_w:.2f}x (best), "
          f"{statistics.median(times['dask, 1 worker']) / statistics.median(times['dask, 2 workers']):.2f}x (median); "
          f"2 workers vs one process: {single / two_w:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
