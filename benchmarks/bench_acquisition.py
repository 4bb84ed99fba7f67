"""`opmon bench acquisition`: frames/s of the step-scan plan beside the renderer alone.

The plan moves the motors, triggers the detector and emits an event per frame through the
RunEngine; the baseline renders the same frames with `FrameRenderer.frames` in one call.
The ratio is the RunEngine's per-frame cost: what a fly scan would win back.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np
from bluesky import RunEngine

from opmon.acquisition.mapping import sxdm_map
from opmon.acquisition.sinks import SinkTarget
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench acquisition", description=__doc__)
    parser.add_argument("--map-shape", type=int, nargs=2, default=(10, 10))
    parser.add_argument("--angles", type=int, default=30)
    args = parser.parse_args(argv)
    setup = SxdmSetup(map_shape=tuple(args.map_shape), n_angles=args.angles, roi=(96, 416, 160, 352))
    RE = RunEngine({}, call_returns_result=True)
    sink = CountingSink()
    with tempfile.TemporaryDirectory():
        bl = SimulatedBeamline(BeamlineConfig(setup=setup), sink=sink)
        try:
            RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), bl.etas()[:2], potentiostat=bl.potentiostat))
            sink.frames = 0
            t = time.perf_counter()
            RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), bl.etas(), potentiostat=bl.potentiostat))
            plan_s = time.perf_counter() - t
            n = sink.frames
            index, eta = setup.scan("eta-outer")
            bl.renderer.frames(index[:64], eta[:64], setup.phi, setup.nu, setup.delta)  # compile outside the clock
            t = time.perf_counter()
            for s in range(0, n, 256):
                bl.renderer.frames(index[s:s + 256], eta[s:s + 256], setup.phi, setup.nu, setup.delta)
            render_s = time.perf_counter() - t
        finally:
            bl.close()
    print(f"opmon bench acquisition: {n} frames of {setup.frame_shape[0]}x{setup.frame_shape[1]}, step scan with "
          f"potentiostat logging")
    print(f"sxdm_map through the RunEngine: {n / plan_s:8.0f} frames/s")
    print(f"FrameRenderer.frames alone:      {n / render_s:8.0f} frames/s")
    print(f"ratio plan / renderer:           {render_s / plan_s:8.3f}  (the paper's instrument: 100 frames/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
