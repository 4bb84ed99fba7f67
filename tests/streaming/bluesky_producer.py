"""A beamline that knows nothing of opmon: a stock RunEngine, ophyd-async's simulated devices and
bluesky's 0MQ Proxy + Publisher, run as its own process by the bluesky-source tests.

It prints the proxy's outbound address, then runs one-point `count` plans (no detector) until a
line arrives on stdin (the subscriber sees one: both 0MQ hops are connected, nothing of the real
scan can be lost to a slow joiner), then one `bluesky.plans.grid_scan` of `SimBlobDetector`
(ophyd-async 0.21.3: uint8 frames written to SWMR HDF5, StreamResource/StreamDatum) over a
`SimStage`'s motors, with eta and delta motors in the baseline. The only non-default settings:
motor velocities 0 (instant moves) and the pattern generator's `sleep` shortened (its own hook
for simulated time), so the scan takes about a second.
"""
from __future__ import annotations

import argparse
import asyncio
import select
import sys
import threading

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import msgpack
from bluesky import RunEngine
from bluesky.callbacks.zmq import Proxy, Publisher
from ophyd_async.core import StaticFilenameProvider, StaticPathProvider, init_devices
from ophyd_async.sim import PatternGenerator, SimBlobDetector, SimMotor, SimStage


async def quick_sleep(seconds: float) -> None:
    await asyncio.sleep(min(max(seconds, 0.0), 0.005))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--shape", type=int, nargs=2, default=(5, 6))
    parser.add_argument("--snake", action="store_true")
    parser.add_argument("--md", action="append", default=[], help="KEY=FLOAT added to the start document")
    parser.add_argument("--pickle", action="store_true", help="publish with bluesky's default serializer")
    args = parser.parse_args(argv)

    proxy = Proxy("tcp://127.0.0.1", "tcp://127.0.0.1")
    threading.Thread(target=proxy.start, daemon=True).start()
    publisher = Publisher(proxy.in_port) if args.pickle else Publisher(proxy.in_port, serializer=msgpack.packb)
    print(proxy.out_port, flush=True)

    RE = RunEngine({})
    RE.subscribe(publisher)
    pattern = PatternGenerator(sleep=quick_sleep)
    with init_devices():
        stage = SimStage(pattern)
        det = SimBlobDetector(StaticPathProvider(StaticFilenameProvider("det"), args.directory), pattern)
        eta = SimMotor()
        delta = SimMotor()
    RE(bps.mv(stage.x.velocity, 0, stage.y.velocity, 0, eta.velocity, 0, delta.velocity, 0))
    RE(bps.mv(eta, 19.0, delta, 35.0))
    RE.preprocessors.append(bpp.SupplementalData(baseline=[eta, delta]))

    while not select.select([sys.stdin], [], [], 0.1)[0]:      # warm-up until the subscriber says go
        RE(bp.count([], num=1))
    sys.stdin.readline()
    ny, nx = args.shape
    md = {k: float(v) for k, v in (item.split("=") for item in args.md)}
    plan = bp.grid_scan([det], stage.y, 0.0, 2.0, ny, stage.x, 0.0, 2.5, nx, snake_axes=args.snake, md=md)
    RE(bpp.stage_wrapper(plan, [stage]))
    print("done", flush=True)
    sys.stdin.readline()     # stay up until told: the proxy must not vanish under the subscriber
    publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
