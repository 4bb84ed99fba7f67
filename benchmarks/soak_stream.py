"""Soak of the live chain: hours of frames through `opmon live` and `opmon archive`.

A 48 h beamtime must not grow memory, lose frames or slow down. This runs the deployed
services (`opmon live [--workers N]`, `opmon archive`, supervised as in `opmon demo`) and
streams detector-like 512 x 512 uint32 frames into them at a paced rate, map after map, for
`--minutes`. Every `--every` seconds it prints frames sent, accumulated and archived, frames
lost, maps done, and the resident memory of each service (workers included). At the end: the
totals, memory growth from the first report to the last, and the archive's size.

    python benchmarks/soak_stream.py --minutes 30 --workers 2 --rate 1000

Not a test (it takes as long as you ask); its figures go in the notes.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from opmon.benchmarks.loopback import GEOMETRY, SHAPE, compressed_pool, frame_pool
from opmon.config import load_config
from opmon.demo import shift_ports, write_config
from opmon.streaming import protocol as P
from opmon.streaming.publisher import ZmqFrameSink
from opmon.supervisor import Supervisor
from opmon.waiting import until


def rss_mb(pid: int | None) -> float:
    """Resident memory of a process and its children (the live workers), MB."""
    if pid is None:
        return float("nan")
    total = 0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def archived_frames(archive: Path) -> int:
    """Distinct frames (run, seq) in the archive's map files: what the archive path kept."""
    from opmon.streaming.archive.reader import RunArchive
    seen: set[tuple[str, int]] = set()
    for run_dir in archive.iterdir():
        run = RunArchive.at(run_dir)
        for number in run.map_numbers():
            seen.update((run.uid, int(s)) for s in run.map_info(number).seqs)
    return len(seen)


class StatusWatch:
    """Latest status message of each service (lossy display channels)."""

    def __init__(self, context: zmq.Context, endpoints: dict[str, str]) -> None:
        self.latest: dict[str, dict[str, Any]] = {}
        self.socks: dict[zmq.Socket, str] = {}
        for name, endpoint in endpoints.items():
            sock = context.socket(zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"status")
            sock.connect(endpoint)
            self.socks[sock] = name

    def drain(self) -> None:
        for sock, name in self.socks.items():
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if parts[0] == b"status" and len(parts) == 2:
                    self.latest[name] = P.unpack(parts[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=500.0, help="frames/s sent (default 500)")
    parser.add_argument("--map-frames", type=int, default=2000, help="frames per map (default 2000)")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between reports (default 30)")
    parser.add_argument("--port-base", type=int, default=6650)
    parser.add_argument("--keep", action="store_true", help="keep the archive directory")
    parser.add_argument("--compressed", action="store_true",
                        help="a detector compressing at the source: the archiver gets each frame's bslz4 chunk alone "
                             "(as `[detector] compression = \"bslz4\"`), the live processor raw frames")
    args = parser.parse_args(argv)

    directory = Path(tempfile.mkdtemp(prefix="opmon-soak-"))
    config = load_config(None)
    shift_ports(config, args.port_base)
    config.archive.dir = str(directory / "archive")
    config_path = write_config(config, directory / "soak.toml")
    supervisor = Supervisor(directory / "logs", max_restarts=0)
    supervisor.start("archiver", ["archive", "--config", str(config_path)])
    supervisor.start("live", ["live", "--config", str(config_path), "--workers", str(args.workers)])
    context = zmq.Context()
    watch = StatusWatch(context, {"live": config.endpoint("display_live"), "archiver": config.endpoint("display_archive")})
    sink = ZmqFrameSink([config.endpoint("frames_archive"), config.endpoint("frames_live")], context=context,
                        sndhwm=config.stream.sndhwm, stall_timeout_s=120,
                        ack_endpoint=config.endpoint("frames_archive_ack"),   # as `opmon demo` sends
                        archive_chunk_only=args.compressed)
    pool = frame_pool()
    chunks: list[bytes | None] = compressed_pool(pool) if args.compressed else [None] * len(pool)
    cols = 50
    map_shape = (max(1, args.map_frames // cols), cols)
    per_map = map_shape[0] * map_shape[1]
    time.sleep(3.0)          # let the services start and connect (the sink blocks until they do)
    start_rss = (rss_mb(supervisor.pid("live")), rss_mb(supervisor.pid("archiver")))   # before any frame
    print(f"soak: {args.minutes:g} min at {args.rate:g} frames/s, maps of {per_map} frames, workers={args.workers}, "
          f"{'detector-compressed chunks to the archiver, ' if args.compressed else ''}"
          f"archive {config.archive.dir}", flush=True)
    print(f"{'t (s)':>7} {'sent':>9} {'live':>9} {'archived':>9} {'lost':>5} {'maps':>5} {'live MB':>8} {'arch MB':>8}"
          f" {'live fr/s':>9}", flush=True)
    sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=map_shape, **GEOMETRY)
    t0 = time.perf_counter()
    end = t0 + args.minutes * 60
    sent = maps = 0
    next_report = t0 + args.every
    first_rss: tuple[float, float] | None = None
    rss = (float("nan"), float("nan"))
    failed = ""
    try:
        while time.perf_counter() < end:
            sink.start_map(per_map)
            for i in range(per_map):
                wait = t0 + sent / args.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sink.send_frame(pool[i % len(pool)], index=i, eta=10.0 + 0.01 * (i % 7), phi=0.0, nu=0.0, delta=37.0,
                                chunk=chunks[i % len(pool)])
                sent += 1
                now = time.perf_counter()
                if now >= next_report:
                    next_report += args.every
                    watch.drain()
                    rss = (rss_mb(supervisor.pid("live")), rss_mb(supervisor.pid("archiver")))
                    first_rss = first_rss or rss
                    live, arch = watch.latest.get("live", {}), watch.latest.get("archiver", {})
                    print(f"{now - t0:7.0f} {sent:9d} {live.get('frames', 0):9d} {arch.get('frames', 0):9d}"
                          f" {live.get('frames_lost', 0):5d} {live.get('maps_done', 0):5d} {rss[0]:8.0f} {rss[1]:8.0f}"
                          f" {live.get('frames_per_s', 0.0):9.0f}", flush=True)
                    events = supervisor.check()
                    if events:
                        failed = "; ".join(events)
                        raise RuntimeError(failed)
            sink.end_map()
            maps += 1
        sink.stop_run()

        def live_done() -> bool:
            watch.drain()
            live = watch.latest.get("live", {})
            return live.get("maps_done", 0) >= maps and live.get("state") == "idle"

        until(live_done, 60, interval_s=0.5)
    except RuntimeError:
        pass
    finally:
        sink.close()
        codes = supervisor.stop_all()
    watch.drain()
    live, arch = watch.latest.get("live", {}), watch.latest.get("archiver", {})
    size = sum(f.stat().st_size for f in Path(config.archive.dir).rglob("*") if f.is_file()) / 2**30
    on_disk = archived_frames(Path(config.archive.dir))
    growth = [b - a for a, b in zip(first_rss or rss, rss)]
    print(f"sent {sent} frames in {maps} maps; live accumulated {live.get('frames', 0)}, lost {live.get('frames_lost', 0)},"
          f" rejected {sum((live.get('rejected') or {}).values())}, errors {live.get('errors', 0)}, maps done"
          f" {live.get('maps_done', 0)}; archiver frames {arch.get('frames', 0)}, lost {arch.get('frames_lost', 0)},"
          f" frames in the archive files {on_disk} (archive path lost {sent - on_disk}); archive {size:.2f} GiB")
    print(f"memory at start (MB, before the first frame): live {start_rss[0]:.0f}, archiver {start_rss[1]:.0f};"
          f" at end: live {rss[0]:.0f}, archiver {rss[1]:.0f}")
    print(f"memory (MB, RSS incl. workers): live {first_rss[0] if first_rss else float('nan'):.0f} -> {rss[0]:.0f}"
          f" ({growth[0]:+.0f}), archiver {first_rss[1] if first_rss else float('nan'):.0f} -> {rss[1]:.0f}"
          f" ({growth[1]:+.0f}); exit codes {codes}")
    if failed:
        print(f"FAILED: {failed} (logs in {directory / 'logs'})")
    if not args.keep and not failed:
        shutil.rmtree(directory, ignore_errors=True)
    ok = not failed and live.get("frames_lost", 1) == 0 and live.get("maps_done", 0) >= maps \
        and on_disk == sent
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
