"""Dashboard update latency (frame processed -> visible in the browser) and server CPU at 1 kHz.

Three processes, all real: a producer (the live-processing loop: simulated detector frames
through `MomentAccumulator` at 1 kHz, partial maps published with the live processor's own
`encode_map` on a PUB socket, latest wins), the `opmon dashboard` server (a subprocess, so its
CPU is measured alone from /proc), and Debian's chromium driven by Selenium. Each published
map carries the wall-clock time its newest frame was processed; the page records when each
update arrives (window.__opmon_seen, same clock), so latency = arrival - processed.

Baselines measured in the same run: the bare transport latency (a plain SUB socket in this
process receiving the same messages) and the dashboard's CPU while idle with the page open.
Prints figures only, no asserts.

    .venv/bin/python benchmarks/bench_dashboard.py [--seconds 20] [--rate 1000] [--publish-ms 250]
        [--update-ms 250] [--map-side 24] [--angles 6]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- producer (own process)
def produce(port: int, rate: float, seconds: float, publish_ms: float, side: int = 24, angles: int = 6) -> None:
    """Process simulated frames at `rate` Hz and publish partial maps every `publish_ms`."""
    from opmon.processors.accumulate import MomentAccumulator
    from opmon.processors.geometry import DetectorGeometry
    from opmon.streaming.map_messages import encode_map
    from opmon.simulators.crystal import ParticleModel
    from opmon.simulators.instrument import SxdmSetup
    from opmon.simulators.render import FrameRenderer
    from opmon.streaming.protocol import pack, unpack

    setup = SxdmSetup(map_shape=(side, side), n_angles=angles, eta_step=0.3 / angles, roi=(192, 320, 192, 320))
    particle = ParticleModel(setup, seed=1, x_mean=0.7)
    renderer = FrameRenderer(setup, particle, seed=0)
    midx, etas = setup.scan("point-outer")
    frames = renderer.frames(midx, etas, setup.phi, setup.nu, setup.delta)     # one map, rendered up front
    geo = DetectorGeometry(setup.energy_ev, setup.distance_m, (setup.pixel_size_m, setup.pixel_size_m),
                           setup.frame_beam_center, setup.frame_shape)
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 10)
    pub.bind(f"tcp://127.0.0.1:{port}")
    acc = MomentAccumulator(geo, setup.map_shape, background=None)
    acc.process_frame(frames[0], int(midx[0]), float(etas[0]), setup.phi, setup.nu, setup.delta)  # compile
    acc.reset()
    time.sleep(1.0)
    n_map, k, seq, map_no = len(frames), 0, 0, 0
    t0 = time.perf_counter()
    next_pub = t0
    end = t0 + seconds
    while True:
        now = time.perf_counter()
        if now > end:
            break
        due = int((now - t0) * rate)          # frames that should have been processed by now
        while k < due:
            i = k % n_map
            acc.process_frame(frames[i], int(midx[i]), float(etas[i]), setup.phi, setup.nu, setup.delta)
            k += 1
            t_frame = time.time()
            if i == n_map - 1:
                acc.reset()
                map_no += 1
        if now >= next_pub and k:
            next_pub = now + publish_ms / 1000.0
            seq += 1
            parts = encode_map(acc.finalize(partial=True), run="bench", map_number=map_no, final=False,
                               frames=k % n_map, n_frames=n_map, frames_lost=0)
            header = unpack(parts[1])
            header["t"], header["seq"] = t_frame, seq
            parts[1] = pack(header)
            pub.send_multipart(parts)
            status = {"v": 1, "kind": "status", "source": "live", "t": time.time(), "state": "running",
                      "frames": k, "frames_per_s": k / (now - t0), "frames_lost": 0, "map": map_no,
                      "map_progress": (k % n_map) / n_map}
            pub.send_multipart([b"status", pack(status)])
        time.sleep(0.0005)
    print(f"PRODUCER frames={k} rate={k / (time.perf_counter() - t0):.0f}/s maps_published={seq}", flush=True)
    pub.close(0)
    ctx.term()


# ---------------------------------------------------------------- measurement
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (no psutil)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="opmon bench dashboard", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="frames per second processed")
    ap.add_argument("--publish-ms", type=float, default=250.0, help="partial-map publish period")
    ap.add_argument("--update-ms", type=int, default=250, help="dashboard display period")
    ap.add_argument("--map-side", type=int, default=24, help="map of N x N pixels")
    ap.add_argument("--angles", type=int, default=6, help="rocking angles per map pixel")
    ap.add_argument("--producer", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.producer:
        port, rate, seconds, publish_ms, side, angles = args.producer
        produce(int(port), float(rate), float(seconds), float(publish_ms), int(side), int(angles))
        return 0

    from opmon.benchmarks.browser import Browser, browser_available   # selenium: the test extra
    if not browser_available():
        print("bench_dashboard: needs /usr/bin/chromium and chromedriver (scripts/install-browser.sh)")
        return 1
    from opmon.port_picker import free_ports   # chosen before the producer and the dashboard start
    live_port, ctl_port, acq_port, arch_port = free_ports(4)
    cfg = Path(tempfile.mkdtemp()) / "bench.toml"
    cfg.write_text(f"[ports]\ndisplay_live = {live_port}\ndisplay_acquisition = {acq_port}\n"
                   f"display_archive = {arch_port}\ncontrol = {ctl_port}\n")
    dash = subprocess.Popen([sys.executable, "-m", "opmon.cli", "dashboard", "--config", str(cfg), "--port",
                             "0", "--update-ms", str(args.update_ms)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    browser = None
    prod = None
    try:
        url = dash.stdout.readline().split()[-1]   # "opmon dashboard (read-only): http://127.0.0.1:PORT/"
        browser = Browser(1920, 1080)
        browser.get(url)
        browser.wait_for("the page", lambda: browser.js("return !!(window.Bokeh && Bokeh.documents.length)"))
        time.sleep(2.0)
        c0, w0 = cpu_seconds(dash.pid), time.perf_counter()
        time.sleep(min(args.seconds, 10.0))
        idle_cpu = (cpu_seconds(dash.pid) - c0) / (time.perf_counter() - w0)

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"map")
        sub.connect(f"tcp://127.0.0.1:{live_port}")
        prod = subprocess.Popen([sys.executable, __file__, "--producer", str(live_port), str(args.rate),
                                 str(args.seconds + 2.0), str(args.publish_ms), str(args.map_side), str(args.angles)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        from opmon.streaming.protocol import unpack
        transport: list[float] = []
        browser.js("window.__opmon_seen = [];")
        browser.wait_for("the first map in the page", lambda: browser.js("return (window.__opmon_seen || []).length"),
                         timeout=180)                  # producer warm-up: rendering, numba
        browser.js("window.__opmon_seen = [];")       # measure from here on
        while sub.poll(0):
            sub.recv_multipart()                      # drop what queued during the warm-up
        c0, w0 = cpu_seconds(dash.pid), time.perf_counter()
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        while time.perf_counter() - w0 < args.seconds:
            if poller.poll(50):
                parts = sub.recv_multipart()
                transport.append(time.time() - unpack(parts[1])["t"])
        busy_cpu = (cpu_seconds(dash.pid) - c0) / (time.perf_counter() - w0)
        seen = browser.js("return window.__opmon_seen || [];")
        prod_out = prod.communicate(timeout=30)[0].strip()
        sub.close(0)
        ctx.term()
    finally:
        if browser is not None:
            browser.quit()
        dash.terminate()
        dash.wait(10)
        if prod is not None and prod.poll() is None:
            prod.kill()

    lat = []
    arrivals = []
    for text, t_ms in seen:
        parts = str(text).split()
        if len(parts) >= 2 and float(parts[1]) > 0:
            lat.append(t_ms / 1000.0 - float(parts[1]))
            arrivals.append(t_ms / 1000.0)
    span = (max(arrivals) - min(arrivals)) if len(arrivals) > 1 else float("nan")
    print(prod_out)
    print(f"map {args.map_side} x {args.map_side} x {args.angles} angles; "
          f"frames/s processed: {args.rate:.0f}, partial maps published every {args.publish_ms:.0f} ms, "
          f"dashboard period {args.update_ms} ms, {args.seconds:.0f} s")
    print(f"browser updates: {len(lat)} ({(len(lat) - 1) / span:.2f} Hz)")
    print(f"latency frame processed -> in browser: p50 {1e3 * pct(lat, 50):.1f} ms, p99 {1e3 * pct(lat, 99):.1f} ms")
    print(f"baseline transport only (PUB -> SUB): p50 {1e3 * pct(transport, 50):.2f} ms, "
          f"p99 {1e3 * pct(transport, 99):.2f} ms")
    print(f"ratio dashboard/transport p50: {pct(lat, 50) / pct(transport, 50):.0f}x; "
          f"p50 / display period: {1e3 * pct(lat, 50) / args.update_ms:.2f}")
    print(f"dashboard server CPU following the stream: {100 * busy_cpu:.1f} % of one core "
          f"(idle with page open: {100 * idle_cpu:.1f} %, ratio {busy_cpu / max(idle_cpu, 1e-3):.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
