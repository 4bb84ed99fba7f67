"""The live processor's auto ROI follows the peak from map to map (it moves ~100 rows over a charge)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from opmon.processors.live import open_live_processor
from opmon.processors.live.roi import roi_from_sum
from opmon.processors.maps import FLAG_EDGE
from opmon.streaming.publisher import ZmqFrameSink

from tests.processors.conftest import GEOMETRY, recv_map, map_sockets

FRAME = (120, 48)
MAP = (2, 3)
ETAS = 10.0 + 0.016 * np.arange(5)


def _map_frames(peak_row: float, seed: int) -> list[tuple[np.ndarray, int, float]]:
    """One map's frames: a Bragg spot near `peak_row` rocking over eta, faint Poisson background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: FRAME[0], : FRAME[1]]
    out = []
    for k, eta in enumerate(ETAS):
        for p in range(MAP[0] * MAP[1]):
            amp = 500 * np.exp(-0.5 * ((k - 2) / 1.2) ** 2)
            lam = amp * np.exp(-((rows - peak_row - 0.5 * p) ** 2 + (cols - 24) ** 2) / (2 * 2.0 ** 2)) + 0.01
            out.append((rng.poisson(lam).astype(np.uint32), p, float(eta)))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2], ids=["inline", "fan-out"])
def test_the_next_maps_roi_is_centred_on_the_moved_peak(workers):
    """Inline, and fan-out workers told each map's ROI by the coordinator, follow the peak alike."""
    ctx = zmq.Context()
    maps_in, maps_endpoint, _ = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], None, maps_endpoint, workers=workers, roi_frames=20,
                                    roi_wait_s=60.0, context=ctx)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    try:
        sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
        first = _map_frames(30.0, seed=0)
        moved = roi_from_sum(sum(f.astype(np.float64) for f, _, _ in first[:20]))[1] - 1.0   # map 0's ROI's last row
        for number, peak_row in enumerate((30.0, moved, moved)):   # after map 0 the peak moves onto its ROI's edge
            frames = first if number == 0 else _map_frames(peak_row, seed=number)
            sink.start_map(len(frames))
            for frame, p, eta in frames:
                sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
            sink.end_map()
        sink.stop_run()
        finals = sorted((recv_map(maps_in) for _ in range(3)), key=lambda m: m[0]["map"])   # a re-made map comes later
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
        ctx.destroy(linger=0)
    rois = [tuple(header["options"]["roi"]) for header, _ in finals]
    assert rois[0][0] < 30 < rois[0][1] == moved + 1, rois               # decided on map 0's first frames
    assert rois[1] == rois[0], rois                                          # map 1 is taken with map 0's ROI ...
    cut = finals[1][1].flags[finals[1][1].mask > 0] & FLAG_EDGE           # ... which cuts its peak: flagged
    assert cut.mean() >= 0.8, cut                                            # (a noisy centre may land inside)
    assert rois[2][0] + 8 < moved < rois[2][1] - 8 and rois[2][0] > rois[0][0], rois  # map 2: re-centred on map 1's peak
    assert rois[2] != (0, FRAME[0], 0, FRAME[1])
    done = finals[2][1]
    assert done.mask.sum() == MAP[0] * MAP[1] and not (done.flags & FLAG_EDGE).any()


def test_a_restarted_processor_follows_the_peak_from_the_archived_roi():
    """A processor joining a run mid-way takes the ROI of the run's latest archived maps (`roi`) and
    still follows the peak: the next map's ROI is the one the map it made asks for."""
    ctx = zmq.Context()
    processor = open_live_processor("tcp://127.0.0.1:1", None, None, workers=1, context=ctx)   # never connects
    try:
        start = {"run": "r1", "frame_shape": list(FRAME), "dtype": "uint32", "map_shape": list(MAP), **GEOMETRY,
                 "pixel_size_m": list(GEOMETRY["pixel_size_m"]), "beam_center": list(GEOMETRY["beam_center"])}
        archived = (2, 40, 2, 47)                       # the ROI the maps made before the restart recorded
        run = processor._new_run(start, None, adopted=True, roi=archived)
        assert run.roi == archived
        frames = _map_frames(80.0, seed=4)              # the peak went on, far below that ROI
        lm = run.map_started(3, MAP, len(frames))
        for k, (frame, p, eta) in enumerate(frames):
            header = {"map": 3, "frame": k, "index": p, "eta": eta, "phi": 0.0, "nu": 0.0, "delta": 30.0}
            run.accumulate(header, frame)
            run.sample_for_follow(lm, header, frame)
        wanted = run.map_plan(lm).roi
        assert run.conclude_map(lm, run.map_plan(lm)) == wanted and run.roi == wanted
        assert wanted[0] < 80 < wanted[1], wanted
    finally:
        processor.close()
        ctx.destroy(linger=0)
