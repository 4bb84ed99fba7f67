"""MapOutputs keeps the latest final maps in memory, and remembers every one it made."""
from __future__ import annotations

import numpy as np
import zmq

from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.live.outputs import MapOutputs


def _accumulator() -> MomentAccumulator:
    geometry = DetectorGeometry(10000.0, 1.0, (5.5e-5, 5.5e-5), (0.0, 0.0), (16, 16))
    acc = MomentAccumulator(geometry, (1, 2), roi=(4, 12, 4, 12))
    frame = np.zeros((16, 16), dtype=np.uint32)
    frame[7:9, 7:9] = 50
    for index in range(2):
        acc.process_frame(frame, index, 10.0, 0.0, 0.0, 30.0)
    return acc


def test_a_long_beamtime_keeps_only_the_latest_maps_in_memory():
    outputs = MapOutputs(zmq.Context.instance(), None, None, keep_results=2)
    for number in range(5):
        outputs.final(_accumulator(), run="r", number=number, n_frames=2, frames_lost=0, options={"roi": [4, 12, 4, 12]})
    assert list(outputs.results) == [("r", 3), ("r", 4)]
    assert outputs.made == {("r", n) for n in range(5)}          # catch-up must not remake dropped ones
    assert [s["map"] for s in outputs.summaries] == list(range(5))
    unbounded = MapOutputs(zmq.Context.instance(), None, None, keep_results=None)
    for number in range(5):
        unbounded.final(_accumulator(), run="r", number=number, n_frames=2, frames_lost=0, options={"roi": [4, 12, 4, 12]})
    assert len(unbounded.results) == 5
