"""`opmon bench dectris`: stream V2 decode + accumulate, beside a bare cbor2 + decompress loop.

The same stream V2 image messages (detector-like 512 x 512 frames from `loopback.frame_pool`,
bslz4 as an EIGER sends them, two threshold channels) go through, in one process and one
thread, interleaved `--repeats` times:

* bare: `cbor2.loads` (tags left as they are), then dectris-compression on the one channel's
  tag 56500 bytes and `np.frombuffer`: the least any stream V2 client must do;
* bare, every channel: DECTRIS's documented client recipe, a tag hook that decompresses every
  tag 56500 and makes numpy arrays of tags 40/69/70;
* opmon: `StreamV2Bridge.handle` (decode, checks, loss accounting, scan point, only the chosen
  channel decompressed), `ZmqFrameSink` over inproc, the receiving `parse`, and the
  `MomentAccumulator` the live processor runs on each frame;
* opmon without the accumulator, to show where the time goes.

Printed: frames/s of each (median of the repeats) and the ratios. Not a timed test.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import cbor2
import numpy as np
import zmq
from dectris.compression import decompress

from opmon.benchmarks.loopback import GEOMETRY, SHAPE, frame_pool
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.streaming import protocol as P
from opmon.streaming.dectris.bridge import StreamV2Bridge
from opmon.streaming.dectris.codec import dumps
from opmon.streaming.dectris.sender import end_message, image_message, start_message
from opmon.streaming.publisher import ZmqFrameSink

MAP = (20, 25)


def messages(n: int, dtype: str) -> tuple[bytes, list[bytes], bytes]:
    """Start, `n` image messages (a pool of 8 encoded frames, repeated with their image_id) and end."""
    pool = frame_pool().astype(dtype)
    start = dumps(start_message(1, frame_shape=SHAPE, dtype=dtype, n_images=n, channels=("t1", "t2"),
                                user_data={"opmon": {"map_shape": list(MAP)}}, energy_ev=GEOMETRY["energy_ev"],
                                distance_m=GEOMETRY["distance_m"], beam_center=GEOMETRY["beam_center"]))
    encoded = [image_message(1, 0, {"t1": f, "t2": f[::-1].copy()}) for f in pool]
    images = []
    for i in range(n):
        message = dict(encoded[i % len(encoded)], image_id=i)
        images.append(dumps(message))
    return start, images, dumps(end_message(1))


_TYPES = {69: "<u2", 70: "<u4"}


def _bare_hook(*args: Any) -> Any:
    tag = args[0] if isinstance(args[0], cbor2.CBORTag) else args[1]
    if tag.tag == 56500:
        algorithm, elem_size, data = tag.value
        return decompress(data, algorithm, elem_size=elem_size)
    if tag.tag in _TYPES:
        return np.frombuffer(tag.value, dtype=_TYPES[tag.tag])
    if tag.tag == 40:
        dims, array = tag.value
        return array.reshape(dims)
    return tag


def bare_every_channel(images: list[bytes]) -> float:
    t0 = time.perf_counter()
    for raw in images:
        cbor2.loads(raw, tag_hook=_bare_hook)
    return len(images) / (time.perf_counter() - t0)


def bare(images: list[bytes]) -> float:
    t0 = time.perf_counter()
    for raw in images:
        dims, typed = cbor2.loads(raw)["data"]["t1"].value
        algorithm, elem_size, data = typed.value.value
        np.frombuffer(decompress(data, algorithm, elem_size=elem_size), dtype=_TYPES[typed.tag]).reshape(dims)
    return len(images) / (time.perf_counter() - t0)


def through_bridge(start: bytes, images: list[bytes], end: bytes, accumulate: bool) -> tuple[float, int]:
    """Frames/s through the bridge, the protocol and (optionally) the accumulator; frames lost."""
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://bench-dectris")
    sink = ZmqFrameSink(["inproc://bench-dectris"], bind=False, context=ctx, sndhwm=10)
    bridge = StreamV2Bridge(sink)
    geometry = DetectorGeometry(GEOMETRY["energy_ev"], GEOMETRY["distance_m"], GEOMETRY["pixel_size_m"],
                                GEOMETRY["beam_center"], SHAPE)
    acc = MomentAccumulator(geometry, MAP, roi=(200, 300, 200, 300), background=None)
    bridge.handle(start)
    t0 = time.perf_counter()
    for raw in images:
        bridge.handle(raw)
        while pull.poll(0):
            msg = P.parse(pull.recv_multipart(copy=False))
            if accumulate and msg.kind == "frame":
                h = msg.header
                acc.process_frame(msg.array, h["index"], h["eta"], h["phi"], h["nu"], h["delta"])
    rate = len(images) / (time.perf_counter() - t0)
    bridge.handle(end)
    lost = bridge.counters.lost + sum(bridge.counters.rejected.values())
    sink.close()
    pull.close(linger=0)
    ctx.term()
    return rate, lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench dectris", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000, help="image messages per measurement")
    parser.add_argument("--dtype", choices=("uint16", "uint32"), default="uint32")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repetitions (medians are printed)")
    args = parser.parse_args(argv)
    logging.getLogger("opmon.streaming.dectris").setLevel(logging.WARNING)
    start, images, end = messages(args.frames, args.dtype)
    size = sum(len(m) for m in images) / len(images)
    print(f"{args.frames} stream V2 image messages, {SHAPE[0]}x{SHAPE[1]} {args.dtype}, 2 channels, bslz4: "
          f"{size / 1e3:.1f} kB each on the wire ({SHAPE[0] * SHAPE[1] * np.dtype(args.dtype).itemsize / 1e6:.2f} MB "
          "decoded per channel)")
    through_bridge(start, images, end, True)       # warm up numba and the sockets
    rates: dict[str, list[float]] = {"bare": [], "every": [], "opmon": [], "decode": []}
    lost = 0
    for _ in range(args.repeats):
        rates["bare"].append(bare(images))
        rates["every"].append(bare_every_channel(images))
        rate, n_lost = through_bridge(start, images, end, True)
        rates["opmon"].append(rate)
        lost += n_lost
        rates["decode"].append(through_bridge(start, images, end, False)[0])
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"bare cbor2 + dectris-compression, one channel:   {med['bare']:8.0f} frames/s")
    print(f"bare, every channel (DECTRIS's client recipe):    {med['every']:8.0f} frames/s  "
          f"({med['every'] / med['bare']:.2f}x of bare)")
    print(f"opmon bridge + protocol + accumulator:            {med['opmon']:8.0f} frames/s  "
          f"({med['opmon'] / med['bare']:.2f}x of bare)")
    print(f"opmon bridge + protocol, no accumulator:          {med['decode']:8.0f} frames/s  "
          f"({med['decode'] / med['bare']:.2f}x of bare)")
    print(f"frames lost or rejected: {lost}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
