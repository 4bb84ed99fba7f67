"""`opmon bench stream`: the live chain end to end, beside raw pyzmq loopback of the same frames.

A simulated detector process sends 512 x 512 uint32 frames through `ZmqFrameSink` to the
live processor (inline, or with `--workers N` the fan-out processor), which accumulates them
into a map with the `opmon process` kernels. In the same run, the same frames go through a
bare pyzmq PUSH/PULL pair (header + zero-copy buffer, nothing else) as the baseline. Printed:
frames/s of each (raw: first to last frame received; chain: first to last frame accumulated
after the ROI decision, and also until the final map is out), their ratio, frames lost, and
latency from a frame's send time to its map update (accumulated; and first partial map
published on the display channel), both with the sender saturating the chain (queueing
latency) and paced at half that rate.
Not a timed test: machines are noisy, so read the ratio.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import Any

import numpy as np
import zmq

from opmon.benchmarks.loopback import SHAPE, free_endpoint, frame_pool, raw_loopback, send_run
from opmon.processors.live import open_live_processor
from opmon.streaming import protocol as P
from opmon.streaming.memory import keep_frame_buffers


def _fanout_sender(endpoint: str, n: int, go: Any, done: Any) -> None:
    pool = frame_pool()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 200)
    push.bind(endpoint)
    go.wait(60)
    header = P.pack(P.frame_header("raw", 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, "uint32", SHAPE))
    for i in range(n):
        push.send_multipart([header, pool[i % len(pool)]], copy=False)
    while not done.is_set():              # one end marker per receiver, wherever PUSH deals them
        try:
            push.send(b"end", zmq.NOBLOCK)
        except zmq.Again:
            pass
        done.wait(0.01)
    push.close(linger=0)
    ctx.term()


def _fanout_receiver(endpoint: str, results: Any) -> None:
    keep_frame_buffers()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 200)
    monitor = pull.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    pull.connect(endpoint)
    if monitor.poll(10000):
        monitor.recv_multipart()
    pull.disable_monitor()
    monitor.close(linger=0)
    results.put(("ready", 0, 0.0, 0.0))
    count, first, last = 0, 0.0, 0.0
    while True:
        parts = pull.recv_multipart(copy=False)
        if len(parts) == 1:
            break
        last = time.time()
        first = first or last
        count += 1
    results.put(("done", count, first, last))
    pull.close(linger=0)
    ctx.term()


def raw_fanout(n: int, receivers: int, transport: str = "tcp") -> float:
    """Frames/s of bare PUSH to `receivers` PULL processes (the fan-out topology, no work)."""
    spawn = multiprocessing.get_context("spawn")
    endpoint = free_endpoint(transport)
    go, done, results = spawn.Event(), spawn.Event(), spawn.Queue()
    sender = spawn.Process(target=_fanout_sender, args=(endpoint, n, go, done))
    sender.start()
    procs = [spawn.Process(target=_fanout_receiver, args=(endpoint, results)) for _ in range(receivers)]
    for proc in procs:
        proc.start()
    for _ in procs:
        results.get(timeout=60)
    go.set()
    reports = []
    while len(reports) < receivers:
        kind, count, first, last = results.get(timeout=120)
        if kind == "done":
            reports.append((count, first, last))
    done.set()
    for proc in [*procs, sender]:
        proc.join(30)
    total = sum(r[0] for r in reports)
    span = max(r[2] for r in reports) - min(r[1] for r in reports if r[0])
    return (total - 1) / span if span > 0 else float("nan")


def live_chain(n: int, workers: int, rate_fps: float | None = None, transport: str = "tcp") -> dict[str, Any]:
    """Frames/s, loss and latency of detector -> ZeroMQ -> live processor (until the final map)."""
    map_shape = (max(1, n // 300), 10) if n >= 300 else (1, max(1, n // 30))
    endpoint = free_endpoint(transport)
    ctx = zmq.Context()
    processor = open_live_processor(endpoint, "tcp://127.0.0.1:*", None, workers=workers, publish_interval_s=0.25,
                              context=ctx)
    proc = multiprocessing.get_context("spawn").Process(target=send_run, args=(endpoint, n, map_shape, rate_fps))
    proc.start()
    t0 = None
    while not processor.summaries:
        processor.poll_once(20)
        if t0 is None and processor.frames_processed:
            t0 = time.perf_counter()
    elapsed = time.perf_counter() - (t0 or time.perf_counter())
    final_at = time.time()
    proc.join()
    summary = processor.summaries[-1]
    counters = processor.counters
    lat_all = np.asarray(processor.latencies) * 1e3
    done_at = np.asarray(processor.accumulated_at)
    # steady state: frames sent after the ROI was decided (earlier ones had to wait for it)
    steady = done_at - np.asarray(processor.latencies) >= processor.roi_decided_at
    # (a run so short that most frames were sent before the ROI decision: all of them)
    lat = lat_all[steady] if steady.sum() >= max(2, n // 4) else lat_all
    done = np.sort(done_at[steady])
    span = done[-1] - done[0] if done.size > 1 else float("nan")
    pub = np.asarray(processor.publish_latencies) * 1e3
    to_final = (summary["frames"] - 1) / elapsed if elapsed > 0 else float("nan")
    result = {"first_p99": float(np.percentile(lat_all, 99)) if lat_all.size else float("nan"),
              # like the raw baseline (first to last frame received): first to last frame accumulated
              # (a run too short to have a steady half after the ROI decision counts to the final map)
              "frames_per_s": (done.size - 1) / span if done.size >= max(2, n // 2) and span > 0 else to_final,
              # and until the final map was out (includes the map's finalization)
              "to_final_per_s": to_final,
              "final_after_ms": (final_at - done[-1]) * 1e3 if done.size else float("nan"),
              "frames": summary["frames"], "lost": counters.lost + (n - summary["frames"]),
              "rejected": sum(counters.rejected.values()),
              "lat_p50": float(np.percentile(lat, 50)) if lat.size else float("nan"),
              "lat_p99": float(np.percentile(lat, 99)) if lat.size else float("nan"),
              "pub_p50": float(np.percentile(pub, 50)) if pub.size else float("nan"),
              "pub_p99": float(np.percentile(pub, 99)) if pub.size else float("nan")}
    processor.close()
    ctx.term()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames per measurement (default 3000)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="live processor workers (default: 1 2)")
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                        help="frame stream transport, for the baseline and the chain alike (default tcp)")
    parser.add_argument("--repeat", type=int, default=7, help="interleaved raw/chain pairs per setting (default 7)")
    args = parser.parse_args(argv)
    if args.frames < 100:
        parser.error("--frames must be >= 100")
    print(f"opmon bench stream: {args.frames} frames of {SHAPE[0]}x{SHAPE[1]} uint32 per measurement, {args.transport}"
          f" loopback, {os.cpu_count()} cores")
    live_chain(200, 1)     # warm up numba and the sockets
    for workers in args.workers:
        raws, chains = [], []
        for _ in range(args.repeat):          # interleaved, so a noisy neighbour hits both alike
            raws.append(raw_loopback(args.frames, args.transport))
            chains.append(live_chain(args.frames, workers, transport=args.transport))
        ratios = [c["frames_per_s"] / r for c, r in zip(chains, raws)]
        raw = float(np.median(raws))
        res = sorted(chains, key=lambda c: c["frames_per_s"])[len(chains) // 2]
        paced_rate = 0.5 * res["frames_per_s"]
        paced = live_chain(min(args.frames, int(paced_rate * 3) + 100), workers, rate_fps=paced_rate,
                           transport=args.transport)
        to_final = [c["to_final_per_s"] / r for c, r in zip(chains, raws)]
        fan_raws = [raw_fanout(args.frames, workers, args.transport) for _ in range(args.repeat)] if workers > 1 else []
        print(f"workers={workers}: raw pyzmq PUSH/PULL {raw:8.0f} frames/s | live chain {res['frames_per_s']:8.0f} frames/s"
              f" | ratio {float(np.median(ratios)):.2f}x (median of {args.repeat} interleaved pairs: "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; goal >= 0.7x)")
        if fan_raws:
            fan = float(np.median(fan_raws))
            print(f"  same topology, no work (1 PUSH -> {workers} PULL processes): {fan:.0f} frames/s = "
                  f"{fan / raw:.2f}x of 1 -> 1; the chain is {res['frames_per_s'] / fan:.2f}x of it")
        print(f"  counted until the final map was out: ratio {float(np.median(to_final)):.2f}x; final map "
              f"{float(np.median([c['final_after_ms'] for c in chains])):.0f} ms after its last frame was accumulated")
        lost = sum(c["lost"] for c in chains) + paced["lost"]
        rejected = sum(c["rejected"] for c in chains) + paced["rejected"]
        print(f"  frames lost {lost} of {args.frames * args.repeat + paced['frames']} (goal 0), rejected {rejected}")
        for label, r in ((f"saturated ({res['frames_per_s']:.0f} frames/s, queue full)", res),
                         (f"paced at {paced_rate:.0f} frames/s (half the saturated rate)", paced)):
            print(f"  latency sent->accumulated, {label}: p50 {r['lat_p50']:.1f} ms, p99 {r['lat_p99']:.1f} ms"
                  f" (goal p99 < 100 ms; p99 {r['first_p99']:.0f} ms counting the frames sent before the ROI was decided)" +
                  f"; sent->partial map published p50 {r['pub_p50']:.0f} ms, p99 {r['pub_p99']:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
