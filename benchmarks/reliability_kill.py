"""kill -9 of a service at random moments during a paced stream through the deployed services.

`opmon archive` and `opmon live` run as real processes under the `opmon demo` supervisor (which
restarts a killed one); a separate process plays the acquisition: a `ZmqFrameSink` streaming
detector-like frames map after map at `rate` frames/s. The chosen victim is killed `kills`
times, each after a random 1-3 s. Killing the acquisition starts a new acquisition (a new
run) afterwards, as an operator would. At the end the archive itself is read: per run, frames
sent against distinct frames on disk (the archive path's loss), maps with final maps against
maps sent, and how each run is marked.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from opmon.streaming.archive.reader import RunArchive
from opmon.waiting import until


def _acquire(endpoints: list[str], ack_endpoint: str, rate: float, map_frames: int, sent: Any, run_box: Any,
             stop: Any) -> None:
    """The acquisition process: stream maps until `stop` is set (or until killed); the first
    endpoint is the archive's, acknowledged as in `opmon demo` (held until flushed)."""
    from opmon.benchmarks.loopback import GEOMETRY, SHAPE, frame_pool
    from opmon.streaming.publisher import ZmqFrameSink
    pool = frame_pool()
    sink = ZmqFrameSink(endpoints, stall_timeout_s=120, ack_endpoint=ack_endpoint)
    cols = 40
    map_shape = (max(1, map_frames // cols), cols)
    per_map = map_shape[0] * map_shape[1]
    uid = sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=map_shape, **GEOMETRY)
    run_box.value = uid.encode()
    t0 = time.perf_counter()
    n = 0
    while not stop.is_set():
        sink.start_map(per_map)
        for i in range(per_map):
            wait = t0 + n / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sink.send_frame(pool[i % len(pool)], index=i, eta=10.0 + 0.01 * (i % 7), phi=0.0, nu=0.0, delta=37.0)
            n += 1
            sent.value = n
        sink.end_map()
    sink.stop_run()
    sink.close()


def archive_of_run(run_dir: Path) -> dict[str, Any]:
    """Distinct frames (by seq) and maps with final maps of one archived run, and its end."""
    archive = RunArchive.at(run_dir)
    seqs: set[int] = set()
    maps = finals = complete = 0
    for number in archive.map_numbers():
        maps += 1
        info = archive.map_info(number)
        seqs.update(int(s) for s in info.seqs)
        complete += int(info.complete)
        finals += archive.has_maps(number)
    try:
        stop = archive.stop() if archive.exists() else None
        status = stop.get("exit_status") if stop else archive.state() or "no master file"
    except (OSError, ValueError):
        status = "no master file"
    return {"frames": len(seqs), "max_seq": max(seqs) if seqs else -1, "maps": maps, "maps_with_final": finals,
            "maps_complete": complete, "exit_status": status}


def run_kills(victim: str, kills: int = 20, rate: float = 1000.0, map_frames: int = 2000, port_base: int = 25200,
              seed: int = 0, directory: Path | None = None, gap_s: tuple[float, float] = (1.0, 3.0),
              settle_s: float = 60.0, keep: bool = False) -> dict[str, Any]:
    """kill -9 `victim` ("live", "archiver" or "acquisition") `kills` times; see the module docstring."""
    import zmq

    from opmon.config import load_config
    from opmon.demo import shift_ports, write_config
    from opmon.supervisor import Supervisor

    from opmon.benchmarks.soak_stream import StatusWatch
    rng = random.Random(seed)
    per_map = max(1, map_frames // 40) * 40
    directory = directory or Path(tempfile.mkdtemp(prefix=f"opmon-kill-{victim}-"))
    config = load_config(None)
    shift_ports(config, port_base)
    config.archive.dir = str(directory / "archive")
    config_path = write_config(config, directory / "kill.toml")
    supervisor = Supervisor(directory / "logs", max_restarts=10 * kills + 10)
    supervisor.start("archiver", ["archive", "--config", str(config_path)])
    supervisor.start("live", ["live", "--config", str(config_path)])
    context = zmq.Context()
    watch = StatusWatch(context, {"live": config.endpoint("display_live"), "archiver": config.endpoint("display_archive")})
    ctx = mp.get_context("spawn")
    endpoints = [config.endpoint("frames_archive"), config.endpoint("frames_live")]
    ack_endpoint = config.endpoint("frames_archive_ack")
    runs: list[dict[str, Any]] = []

    def start_acquisition() -> tuple[Any, Any, Any, Any]:
        sent, box, stop = ctx.Value("q", 0), ctx.Array("c", 64), ctx.Event()
        proc = ctx.Process(target=_acquire, args=(endpoints, ack_endpoint, rate, map_frames, sent, box, stop), daemon=True)
        proc.start()
        return proc, sent, box, stop

    time.sleep(3.0)     # services up and connected
    acq = start_acquisition()
    recover_s: list[float] = []
    t_start = time.monotonic()
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(*gap_s))
            if victim == "acquisition":
                proc, sent, box, _stop = acq
                os.kill(proc.pid, signal.SIGKILL)
                proc.join()
                runs.append({"run": box.value.decode(), "sent": sent.value, "killed": True})
                t_kill = time.monotonic()
                acq = start_acquisition()
                until(lambda: acq[1].value > 0, 30, interval_s=0.01)
                recover_s.append(time.monotonic() - t_kill)
                continue
            watch.drain()
            pid = supervisor.pid(victim)
            t_kill, wall_kill = time.monotonic(), time.time()
            os.kill(pid, signal.SIGKILL)

            def restarted_and_working() -> bool:
                supervisor.check()
                watch.drain()
                st = watch.latest.get(victim, {})
                return supervisor.pid(victim) != pid and st.get("t", 0) > wall_kill and st.get("frames", 0) > 0

            recovered = until(restarted_and_working, 60, interval_s=0.02)
            recover_s.append(time.monotonic() - t_kill if recovered else float("nan"))
        proc, sent, box, stop = acq
        stop.set()
        proc.join(120)
        runs.append({"run": box.value.decode(), "sent": sent.value, "killed": False})
        elapsed = time.monotonic() - t_start

        def both_idle() -> bool:
            supervisor.check()
            watch.drain()
            return all(watch.latest.get(name, {}).get("state") == "idle" for name in ("live", "archiver"))

        until(both_idle, settle_s, interval_s=0.5)      # let the live processor finish the last maps
    finally:
        codes = supervisor.stop_all()
        context.destroy(linger=0)
    archive = Path(config.archive.dir)
    per_run = []
    for r in runs:
        on_disk = archive_of_run(archive / r["run"]) if (archive / r["run"]).is_dir() else {"frames": 0}
        per_run.append({**r, **on_disk, "lost_on_archive_path": r["sent"] - on_disk["frames"],
                        "maps_sent": math.ceil(r["sent"] / per_map)})
    if not keep:
        shutil.rmtree(directory, ignore_errors=True)
    total_sent = sum(r["sent"] for r in runs)
    rec = [s for s in recover_s if s == s]
    return {"victim": victim, "kills": kills, "rate_asked": rate, "rate_achieved": total_sent / elapsed,
            "frames_sent": total_sent, "frames_lost_on_archive_path": sum(r["lost_on_archive_path"] for r in per_run),
            "maps_sent": sum(r["maps_sent"] for r in per_run),
            "maps_with_final_maps": sum(r.get("maps_with_final", 0) for r in per_run),
            "recover_s_median": float(np.median(rec)) if rec else float("nan"),
            "recover_s_max": max(rec) if rec else float("nan"), "not_recovered": len(recover_s) - len(rec),
            "runs": per_run, "exit_codes": codes, "logs": str(directory / "logs") if keep else "removed (--keep keeps them)"}
