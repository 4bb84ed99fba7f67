"""Disk full while archiving: a real archiver on a small filesystem, a real RunEngine streaming.

The archive directory is a tmpfs of a few MiB when this process may mount one (root); otherwise
the archiver is given a free-space reserve larger than the disk has, so the same disk-full path
runs (`DiskGuard.check_space`) without a real ENOSPC. Frames are random (incompressible), sent
from inside a bluesky plan with a checkpoint before each frame, as the detector plans do. The
archiver's status goes to an `ArchiverWatch`, which pauses the RunEngine. Afterwards: what the
status said, whether and how fast the run paused, and whether every frame on disk reads back
equal to what was sent.
"""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq

from opmon.waiting import until

SHAPE = (64, 64)
GEOMETRY = dict(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(-100.0, 32.0))


def mount_small_fs(directory: Path, size_mb: int) -> bool:
    """Mount a tmpfs of `size_mb` MiB on `directory`; False when this process may not mount."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(directory)],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def unmount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], capture_output=True, timeout=10)


def run_disk_full(directory: Path, *, size_mb: int = 32, max_frames: int = 3000, rate_hz: float = 1000.0,
                  mount: bool = True, reserve_mb: float = 6.0, seed: int = 0, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stream until the archive disk is full; returns what happened (see module docstring)."""
    mounted = mount and mount_small_fs(directory, size_mb)
    try:
        return _fill(directory, mounted, size_mb, max_frames, rate_hz, reserve_mb, seed, timeout_s)
    finally:
        if mounted:
            unmount(directory)


def _fill(directory: Path, mounted: bool, size_mb: int, max_frames: int, rate_hz: float, reserve_mb: float,
          seed: int, timeout_s: float) -> dict[str, Any]:
    import bluesky.plan_stubs as bps
    from bluesky import RunEngine

    from opmon.archive_watch import ArchiverWatch
    from opmon.streaming.archive.archiver import Archiver
    from opmon.acquisition.steering import RunEngineSteering
    from opmon.streaming.publisher import ZmqFrameSink

    directory.mkdir(parents=True, exist_ok=True)
    reserve = int(reserve_mb * 2**20) if mounted else None   # 0: let the writes hit ENOSPC
    ctx = zmq.Context()
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 2**32 - 1, size=(16, *SHAPE), dtype=np.uint32)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=timeout_s)
    if reserve is None:     # no mount: a reserve above the free space makes the disk "full" at the first flush
        import shutil
        reserve = shutil.disk_usage(directory).free + 2**30
    archiver = Archiver(directory, sink.endpoints[0], status_endpoint="tcp://127.0.0.1:*", context=ctx,
                        disk_reserve_bytes=reserve)
    status_ep = archiver.status_socket.getsockopt_string(zmq.LAST_ENDPOINT)
    statuses: list[dict[str, Any]] = []
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"status")
    sub.connect(status_ep)
    stop = threading.Event()
    crashed: list[str] = []

    def serve() -> None:
        try:
            while not stop.is_set():
                archiver.poll_once(50)
        except Exception as exc:  # noqa: BLE001 - reported: the archiver must not die
            crashed.append(f"{type(exc).__name__}: {exc}")

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    RE = RunEngine({}, call_returns_result=True)
    steering = RunEngineSteering(RE)
    watch = ArchiverWatch(status_ep, steering, context=ctx).start()
    time.sleep(0.5)     # SUB sockets join
    sent: list[int] = []
    t_full: list[float] = []
    t_paused: list[float] = []

    def plan():  # type: ignore[no-untyped-def]
        yield from bps.open_run()
        sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=(50, 60), **GEOMETRY)
        sink.start_map(max_frames)
        t0 = time.perf_counter()
        for i in range(max_frames):
            yield from bps.checkpoint()      # where a deferred pause takes effect
            wait = t0 + i / rate_hz - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent.append(sink.send_frame(pool[i % len(pool)], index=i % 3000, eta=10.0, phi=0.0, nu=0.0, delta=37.0))
        yield from bps.close_run()

    def watch_pause() -> None:
        def paused() -> bool:
            while sub.poll(0):
                parts = sub.recv_multipart()
                from opmon.streaming.protocol import unpack
                st = unpack(parts[1])
                statuses.append(st)
                if st.get("state") == "disk_full" and not t_full:
                    t_full.append(time.monotonic())
            return RE.state == "paused"

        if until(paused, timeout_s, interval_s=0.01, cancel=stop):
            t_paused.append(time.monotonic())
            steering.abort("disk full test over")
        else:
            steering.abort("timeout")

    waiter = threading.Thread(target=watch_pause, daemon=True)
    waiter.start()
    exit_status = steering.run(plan())
    waiter.join(timeout_s)
    stop.set()
    server.join(10)
    full_status = next((s for s in statuses if s.get("state") == "disk_full"), {})
    run_uid = sink.run
    result: dict[str, Any] = {
        "filesystem": f"tmpfs {size_mb} MiB, reserve {reserve / 2**20:g} MiB" if mounted else f"forced (reserve {reserve / 2**30:.1f} GiB > free space)",
        "frames_sent": len(sent), "archiver_crashed": crashed, "status_state": full_status.get("state"),
        "status_error": full_status.get("error"), "watch_pauses": watch.pauses, "run_exit": exit_status,
        "paused": bool(t_paused), "pause_after_status_s": (t_paused[0] - t_full[0]) if t_paused and t_full else None,
        "frames_written_by_archiver": archiver.frames_written}
    watch.close()
    try:
        archiver.close()
        result["archiver_closed"] = "cleanly"
    except OSError as exc:
        result["archiver_closed"] = f"with {type(exc).__name__}: {exc}"
    try:
        sink.sockets[0].setsockopt(zmq.LINGER, 0)
        sink.run = None
        sink.close()
    except Exception:  # noqa: BLE001
        pass
    sub.close(0)
    ctx.destroy(linger=0)
    result.update(read_back(directory / str(run_uid), pool))
    return result


def read_back(run_dir: Path, pool: np.ndarray) -> dict[str, Any]:
    """Open every map file of the run as a reader would; check each frame against what was sent."""
    path = run_dir / "map_0000.h5"
    try:
        with h5py.File(path, "r", swmr=True) as f:
            data = f["entry/data/data"] if "entry/data/data" in f else None
            seq = f["entry/scan/sequence"][:]
            if data is None:
                from opmon.streaming.archive.layout import DATA
                data = f[f"entry/{DATA}"]
            n = min(len(seq), data.shape[0])
            bad = [i for i in range(n) if not np.array_equal(data[i], pool[int(seq[i]) % len(pool)])]
            return {"file_readable": True, "frames_on_disk": n, "frames_differing_from_sent": len(bad),
                    "first_differing": bad[0] if bad else None,
                    "seq_gap_free": bool(n == 0 or (seq[:n] == np.arange(n)).all())}
    except (OSError, KeyError) as exc:
        return {"file_readable": False, "read_error": f"{type(exc).__name__}: {exc}"}
