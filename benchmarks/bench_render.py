"""Speed of the simulated detector: rendering a 60 x 60 x 30 map against zeroing the same frames.

Prints figures and ratios only (no asserts): rendered frames/s for the whole map in blocks
(parallel numba), numpy's allocate-and-zero of the same number of frames in the same block
size (the floor any frame producer pays), and the latency of one `FrameRenderer.frame` call.

    .venv/bin/python benchmarks/bench_render.py [--frames N] [--block 256] [--x-mean 0.7]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.render import FrameRenderer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="opmon bench render", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=0, help="frames to render (default: the whole 60x60x30 map)")
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--x-mean", type=float, default=0.7)
    ap.add_argument("--dtype", choices=("uint32", "uint16"), default="uint32")
    args = ap.parse_args(argv)
    setup = SxdmSetup()
    particle = ParticleModel(setup, seed=0, x_mean=args.x_mean)
    renderer = FrameRenderer(setup, particle, seed=0, dtype=np.dtype(args.dtype))
    midx, etas = setup.scan("eta-outer")
    n = args.frames or midx.size
    midx, etas = np.resize(midx, n), np.resize(etas, n)
    buf = np.empty((args.block,) + setup.frame_shape, dtype=renderer.dtype)
    renderer.frames(midx[:2], etas[:2], setup.phi, setup.nu, setup.delta, out=buf[:2])  # compile / load cache

    t0 = time.perf_counter()
    for start in range(0, n, args.block):
        stop = min(start + args.block, n)
        renderer.frames(midx[start:stop], etas[start:stop], setup.phi, setup.nu, setup.delta, out=buf[: stop - start])
    t_render = time.perf_counter() - t0

    t0 = time.perf_counter()
    for start in range(0, n, args.block):
        stop = min(start + args.block, n)
        zeros = np.zeros((stop - start,) + setup.frame_shape, dtype=renderer.dtype)
        zeros[:] = 0  # touch every page, as a renderer must
    t_zero = time.perf_counter() - t0

    bright = int(np.argmax(particle.truth()["intensity"]))
    eta_b = float(particle.bragg_eta(particle.truth()["q"].reshape(-1, 3)[bright]))
    one = np.empty(setup.frame_shape, dtype=renderer.dtype)
    reps = 2000
    t0 = time.perf_counter()
    for i in range(reps):
        renderer.frame(bright, eta_b, setup.phi, setup.nu, setup.delta, out=one)
    t_one = (time.perf_counter() - t0) / reps

    print(f"frames: {n} of {setup.frame_shape[0]}x{setup.frame_shape[1]} {renderer.dtype}, block {args.block}")
    print(f"render          : {n / t_render:10.0f} frames/s  ({t_render:.2f} s; whole 108,000-frame map "
          f"{108000 / (n / t_render):.1f} s)")
    print(f"numpy zero      : {n / t_zero:10.0f} frames/s  ({t_zero:.2f} s)")
    print(f"ratio render/zero: {t_zero / t_render:.2f} (frames/s of render over frames/s of numpy zeroing)")
    print(f"single frame()  : {t_one * 1e6:.1f} us at the Bragg peak of the brightest pixel")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
