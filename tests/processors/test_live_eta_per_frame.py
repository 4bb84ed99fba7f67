"""Live maps whose eta is read back per frame, and fan-out picks of a map whose frame count comes at its end.

`opmon process` registers only frames that hold eta scans (`eta_scans.holds_eta_scans`); the live processor
learns a map's frames as they come, so its registering accumulator gives the scans up (adds them together)
once their eta values pass what eta scans of the map take, instead of one scan slot per frame. A fan-out
worker that never learnt its map's frame count (a map_start without one, as the bluesky path sends) is told it
with the order to hand its sums in, and re-sums its picks as `opmon process` samples them.
"""
from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from opmon.cli import main
from opmon.processors import eta_scans
from opmon.processors.accumulate import PER_PIXEL_KEYS
from opmon.processors.eta_scans import EtaScanAccumulator, scan_limit
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.maps import read_map_result
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.streaming.archive.raw import RawMapWriter

from tests.processors.conftest import FRAME, GEOMETRY, assert_same_maps

SIDE, STEPS = 4, 8          # a 4 x 4 map, 8 eta steps: 128 frames


def jittered_raw(path, seed: int = 1, side: int = SIDE, steps: int = STEPS):
    """An eta-outer map whose eta is read back per frame (the steps plus 2e-3 deg of encoder jitter: every frame
    its own value), a peak moving over the particle and with eta on a faint background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: FRAME[0], : FRAME[1]]
    pixels = side * side
    index = np.tile(np.arange(pixels), steps)
    step = np.repeat(np.arange(steps), pixels)
    eta = 10.0 + 0.016 * step + rng.normal(0.0, 2e-3, step.size)
    frames = np.empty((step.size,) + FRAME, dtype=np.uint32)
    for f, (p, k) in enumerate(zip(index, step)):
        r0, c0 = 18 + 0.4 * (p % side) + 0.8 * (k - steps / 2 + 0.5), 22 + 0.5 * (p // side)
        amp = 300 * (1 + p % 3) * np.exp(-0.5 * ((k - steps / 2 + 0.5) / 1.5) ** 2)
        frames[f] = rng.poisson(amp * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / 8.0) + 0.01)
    with h5py.File(path, "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=FRAME, dtype=np.uint32, map_shape=(side, side),
                              **GEOMETRY)
        writer.append(frames, index, eta, 0.0, 0.0, 30.0)
    return path


@pytest.mark.timeout(120)
def test_live_map_with_eta_per_frame_gives_its_scans_up_and_equals_opmon_process(tmp_path, monkeypatch):
    """Live (`opmon replay`: real ZeroMQ, the map_start with its count, register tilt and powder spots auto by
    default), the per-scan sums never hold more scans than eta scans of 128 frames can (16), not one per frame."""
    slots: list[int] = []
    resize = EtaScanAccumulator._resize

    def counted(self, n_slots):
        slots.append(n_slots)
        resize(self, n_slots)

    monkeypatch.setattr(EtaScanAccumulator, "_resize", counted)
    raw = jittered_raw(tmp_path / "raw.h5")
    out = tmp_path / "live.h5"
    assert main(["replay", str(raw), "-o", str(out), "--workers", "1"]) == 0
    n_frames = SIDE * SIDE * STEPS
    assert slots and max(slots) <= scan_limit(n_frames, SIDE * SIDE) < n_frames, max(slots)
    with h5py.File(out, "r") as f, h5py.File(raw, "r") as r:
        live = read_map_result(f["entry0"])
        offline, _ = process_entry(r["entry"], ProcessOptions())     # `opmon process`: not registered
    assert offline.eta_shifts is None and live.eta_shifts is None
    assert int(offline.mask.sum()) >= 8
    assert_same_maps(live, offline)


def test_live_spot_search_of_a_map_with_eta_per_frame_is_skipped_where_opmon_process_skips_it(tmp_path, monkeypatch):
    """`opmon process` sums its sampled frames per eta value only when one sum per eta value of the whole map fits
    `powder_spots.MAX_SAMPLE_BYTES` (else: not searched); the live picks counted only the values they summed (200
    of 400 frames here), so they searched the spots of a map `opmon process` does not search."""
    from opmon.processors import powder_spots
    from opmon.processors.live.engine import LiveRun
    from opmon.processors.offline import plan_map
    from opmon.streaming.archive.sources import open_source

    monkeypatch.setattr(powder_spots, "MAX_SAMPLE_BYTES", 300 * FRAME[0] * FRAME[1] * 4)   # 300 of the 400 values
    raw = jittered_raw(tmp_path / "raw.h5", side=5, steps=16)
    source = open_source(raw)
    try:
        smap = source.maps[0]
        offline = plan_map(smap, ProcessOptions())
        meta = smap.meta
        frames = np.empty((meta.n_frames,) + FRAME, dtype=np.uint32)
        smap.read_frames(frames, np.arange(meta.n_frames))
    finally:
        source.close()
    start = {"run": "r", "frame_shape": list(FRAME), "map_shape": [5, 5], **{k: list(v) if isinstance(v, tuple) else v
                                                                             for k, v in GEOMETRY.items()}}
    run = LiveRun.begin(start, None, None, threshold=0, background="auto", roi_quota=1, roi_wait_s=1.0)
    run.set_roi(offline.roi)
    run.map_started(0, (5, 5), meta.n_frames)
    for f in range(meta.n_frames):
        h = {"map": 0, "frame": f, "index": int(meta.map_index[f]), "eta": float(meta.eta[f]), "phi": 0.0, "nu": 0.0,
             "delta": 30.0}
        run.sample_for_follow(run.accumulate(h, frames[f]), h, frames[f])
    live = run.map_plan(run.maps[0])
    assert offline.spots is not None and "not searched" in offline.spots.note
    assert live.spots.note == offline.spots.note and live.roi == offline.roi


def _accumulator(n_frames: int = 0) -> EtaScanAccumulator:
    geometry = DetectorGeometry(GEOMETRY["energy_ev"], GEOMETRY["distance_m"], GEOMETRY["pixel_size_m"],
                                GEOMETRY["beam_center"], FRAME)
    acc = EtaScanAccumulator(geometry, (SIDE, SIDE), roi=(8, 32, 10, 38), registration="tilt")
    acc.expect_frames(n_frames)
    return acc


def _frames(eta, seed=0):
    rng = np.random.default_rng(seed)
    return rng.poisson(0.5, (len(eta),) + FRAME).astype(np.uint32), np.arange(len(eta)) % (SIDE * SIDE)


def test_scans_given_up_by_count_by_memory_and_by_a_merged_state_keep_every_frame(monkeypatch):
    """Three ways a registering accumulator learns its frames are not eta scans; each keeps the sums of the
    frames already added (they equal one accumulator's that never kept scans apart)."""
    eta = 10.0 + 1e-3 * np.arange(48)                     # swept: every frame its own eta
    frames, index = _frames(eta)
    whole = _accumulator(len(eta))
    whole.process_block(frames, index, eta, 0.0, 0.0, 30.0)
    assert not whole.per_scan and whole.sum_i.shape == (SIDE * SIDE,)   # counted: past scan_limit(48, 16) = 6

    monkeypatch.setattr(eta_scans, "SCAN_SUMS_BYTES", 10 * SIDE * SIDE * whole._row_bytes)
    uncounted = _accumulator()                           # no count: past 10 scans' worth of sums
    for k in range(len(eta)):
        uncounted.process_frame(frames[k], int(index[k]), float(eta[k]), 0.0, 0.0, 30.0)
        assert uncounted.per_scan == (k < 10)

    halves = [_accumulator(), _accumulator()]            # a fan-out worker's plain sums merged with per-scan ones
    halves[0].process_block(frames[:8], index[:8], eta[:8], 0.0, 0.0, 30.0)
    halves[1].process_block(frames[8:], index[8:], eta[8:], 0.0, 0.0, 30.0)
    assert halves[0].per_scan and not halves[1].per_scan
    merged = _accumulator()
    for part in halves:
        merged.load_state(part.state())
    assert not merged.per_scan
    for acc in (uncounted, merged):
        for key in PER_PIXEL_KEYS:
            np.testing.assert_allclose(getattr(acc, key), getattr(whole, key), rtol=1e-12, atol=1e-9, err_msg=key)


def test_eta_scans_met_one_at_a_time_grow_the_sums_geometrically(monkeypatch):
    """An eta-outer map's scans come one at a time: the sums are copied a few times, not once per scan; with its
    count unknown, they are kept past SCAN_SUMS_BYTES (each scan holds a scan's worth of frames)."""
    acc = _accumulator()
    monkeypatch.setattr(eta_scans, "SCAN_SUMS_BYTES", 10 * SIDE * SIDE * acc._row_bytes)
    eta = np.repeat(10.0 + 0.016 * np.arange(40), SIDE * SIDE)
    frames, index = _frames(eta[: SIDE * SIDE])
    storage = []
    for k in range(40):
        acc.process_block(frames, index, eta[k * SIDE * SIDE:(k + 1) * SIDE * SIDE], 0.0, 0.0, 30.0)
        base = acc.sum_i.base if acc.sum_i.base is not None else acc.sum_i
        if not storage or storage[-1] is not base:
            storage.append(base)
    assert acc.per_scan and acc.scan_eta.size == 40 and acc.sum_i.shape == (40 * SIDE * SIDE,)
    np.testing.assert_array_equal(acc.n_frames, 1)
    assert len(storage) <= 10, len(storage)          # 1.5x growth: 1, 2, 3, 4, 6, 9, 13, 19, 28, 42 scans


class _Uncounted:
    """The sink, its map_starts without a frame count (as the bluesky path's `PublisherSink` sends them)."""

    def __init__(self, sink):
        self.sink = sink

    def start_map(self, n_frames: int = 0, **kwargs):
        return self.sink.start_map(0, **kwargs)

    def __getattr__(self, name):
        return getattr(self.sink, name)


@pytest.mark.timeout(180)
def test_fan_out_map_whose_count_comes_at_its_end_is_planned_as_opmon_process_plans_it(tmp_path):
    """Powder arcs, spots auto: the workers' picks summed every frame (the count unknown while they came), so the
    coordinator's ROI and spots came from other frames than `opmon process` samples (columns 33-160 against 35-158,
    d off by 8e-5 A; 8 x 8 x 6: rows 206-306 against 160-317, 3.4e-3 A); told the count with the order to hand
    their sums in, the workers re-sum them from their held frames."""
    from opmon.processors.live import open_live_processor
    from opmon.streaming.publisher import ZmqFrameSink
    from opmon.streaming.replay import replay
    from tests.waiting import until

    raw = tmp_path / "arcs.h5"
    assert main(["simulate", "-o", str(raw), "--ny", "6", "--nx", "6", "--angles", "6", "--roi", "96", "416", "160",
                 "352", "--seed", "4", "--effects", "powder-arcs", "-q"]) == 0
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], None, None, workers=2, publish_interval_s=0.1)
    processor.outputs.keep_results = None
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    try:
        replay(raw, _Uncounted(sink))
        assert until(lambda: len(processor.summaries) == 1, 90), "no final map"
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
    (live,) = processor.results.values()
    with h5py.File(raw, "r") as f:
        offline, roi = process_entry(f["entry"], ProcessOptions())
    assert tuple(processor.summaries[0]["roi"]) == roi
    assert_same_maps(live, offline)


def test_eta_key_is_numpys_rounding_of_one_float():
    """The live path's per-frame key of an eta value is the very float `np.round(eta, ETA_DECIMALS)` gives (the eta
    scans and the spot search's budget are counted offline with numpy), ties and negative angles included."""
    from opmon.processors.eta_scans import ETA_DECIMALS, eta_key

    values = np.concatenate([np.random.default_rng(3).uniform(-40.0, 40.0, 20000),
                             (np.arange(-200, 200) + 0.5) / 10.0 ** ETA_DECIMALS, 10.0 + 0.016 * np.arange(64)])
    np.testing.assert_array_equal([eta_key(v) for v in values.tolist()], np.round(values, ETA_DECIMALS))
