"""The first map of a run: its live ROI is decided with the whole rocking curve in view.

An eta-outer scan's first frames are off the rocking curve, so the ROI the live processor can
decide from them is the full frame or a window around the rocking tails; the map is then made
again at its end with the ROI and mask `opmon process` takes from the whole map.
"""
from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from opmon.cli import main
from opmon.processors.live.held_frames import HeldFrames
from opmon.processors.maps import read_map_result
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.streaming.archive.raw import RawMapWriter
from opmon.streaming.publisher import ZmqFrameSink

from tests.processors.conftest import GEOMETRY, assert_same_maps

FRAME = (96, 64)
MAP = (4, 4)
ETAS = 10.0 + 0.016 * np.arange(16)


def off_peak_start(seed: int = 3) -> list[tuple[np.ndarray, int, float]]:
    """An eta-outer map whose rocking curve peaks at its 14th of 16 eta steps (the first eleven show
    nothing) in the detector's top rows, the peak moving 3 rows a step, on a background that rises
    towards the bottom rows: a live ROI decided from any part of the map but the whole misses the
    peak (the first frames show only the bright rows), and a full-frame ROI could not measure the
    background."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: FRAME[0], : FRAME[1]]
    background = 0.004 + 0.06 * rows / FRAME[0]
    out = []
    for k, eta in enumerate(ETAS):
        for p in range(MAP[0] * MAP[1]):
            r0, c0 = 25 + 0.5 * (p % 4) + 3.0 * (k - 13), 30 + 0.5 * (p // 4)
            amp = 300 * (1 + p % 3) * np.exp(-0.5 * ((k - 13) / 0.7) ** 2)
            lam = amp * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * 2.5 ** 2)) + background
            out.append((rng.poisson(lam).astype(np.uint32), p, float(eta)))
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2], ids=["inline", "fan-out"])
def test_first_map_starting_off_the_rocking_curve_equals_opmon_process(tmp_path, capsys, workers):
    """Inline, the map is re-made from the frames it held; fan-out, each worker re-makes its share."""
    raw = tmp_path / "raw.h5"
    frames = off_peak_start()
    with h5py.File(raw, "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=FRAME, dtype=np.uint32, map_shape=MAP, **GEOMETRY)
        writer.append(np.stack([fr for fr, _, _ in frames]), [p for _, p, _ in frames], [e for _, _, e in frames],
                      0.0, 0.0, 30.0)
    out = tmp_path / "replayed.h5"
    assert main(["replay", str(raw), "-o", str(out), "--workers", str(workers)]) == 0   # live: ROI from the first 64 frames
    assert "frames lost 0" in capsys.readouterr().out
    with h5py.File(out, "r") as f, h5py.File(raw, "r") as r:
        live = read_map_result(f["entry0"])
        live_roi = tuple(int(v) for v in f["entry0/maps"].attrs["roi"])
        offline, offline_roi = process_entry(r["entry"], ProcessOptions())       # `opmon process`, auto ROI
    assert offline_roi[1] < 60, offline_roi            # the peak's window, in the top rows, clear of the bright ones
    assert live_roi == offline_roi
    assert int(offline.mask.sum()) >= 12
    assert_same_maps(live, offline)


def test_held_frames_give_back_every_frame_and_drop_all_over_the_budget():
    rng = np.random.default_rng(0)
    frames = [(rng.random(FRAME) < 0.02).astype(np.uint32) * rng.integers(1, 9, FRAME, dtype=np.uint32)
              for _ in range(5)]
    held = HeldFrames()
    for k, frame in enumerate(frames):
        assert held.add({"index": k, "eta": 0.1 * k, "phi": 0.0, "nu": 0.0, "delta": 30.0}, frame)
    back = [(h["index"], h["eta"], h["monitor"], frame.copy()) for h, frame in held.frames()]
    assert [b[:3] for b in back] == [(k, 0.1 * k, None) for k in range(5)]
    for (_, _, _, got), sent in zip(back, frames):
        np.testing.assert_array_equal(got, sent)
    two = HeldFrames()
    two.add({}, frames[0]), two.add({}, frames[1])
    small = HeldFrames(budget=two.nbytes)                 # room for the first two
    assert [small.add({}, frame) for frame in frames] == [True, True, False, False, False]
    assert small.overflowed and len(small) == 0 and list(small.frames()) == []


@pytest.mark.timeout(120)
def test_first_map_over_the_memory_budget_is_re_made_from_the_archive(tmp_path, monkeypatch):
    """Frames over the memory budget are dropped; the map is then re-made from the run's archive and
    equals `opmon process` on the archived frames."""
    from opmon.processors.live import LiveProcessor, held_frames

    from tests.processors.test_live_restart import _config, _maps_done, _send, _start_archiver, _wait

    monkeypatch.setattr(held_frames, "HELD_BYTES", 1)
    config, _ = _config(tmp_path)
    done, thread = _start_archiver(config)
    sink = ZmqFrameSink([config.endpoint("frames_archive"), config.endpoint("frames_live")], stall_timeout_s=90)
    processor = LiveProcessor(config.endpoint("frames_live"), None, config.endpoint("maps_archive"),
                              archive_dir=config.archive.dir)
    live = threading.Thread(target=processor.serve, daemon=True)
    live.start()
    try:
        run = sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
        sink.start_map(len(off_peak_start()))
        _send(sink, off_peak_start())
        sink.end_map()
        sink.stop_run()
        master = tmp_path / "archive" / run / "run.h5"
        assert _wait(lambda: _maps_done(master, 1), 90), "no final map archived"
    finally:
        processor.stopped = True
        live.join(30)
        sink.close()
        done.set()
        thread.join(10)
    with h5py.File(master, "r") as f:
        entry = f["entry0"]
        offline, offline_roi = process_entry(entry, ProcessOptions())
        assert tuple(int(v) for v in entry["maps"].attrs["roi"]) == offline_roi
        assert_same_maps(read_map_result(entry), offline)


def test_frames_before_their_map_start_are_sampled_as_opmon_process_samples():
    """Frames and documents travel on separate sockets, so a map's first frames can come before its map_start:
    the picks (what the map's ROI, bad pixels and powder spots are decided from) then summed every frame, not the
    frames `opmon process` samples, and the demo's first map found 8 powder spots where `opmon process` found 0.
    Once map_start gives the frame count, the picks are re-summed from the held frames; a map_start never seen
    (the demo's first map in a CI run: 12 spots against 0), at the map's end from the frames received."""
    from opmon.processors.live.engine import LiveRun
    from opmon.processors.offline import sample_picks

    n_frames = 400                                       # > 200: `opmon process` samples a subset
    rng = np.random.default_rng(2)
    frames = rng.poisson(0.05, (n_frames,) + FRAME).astype(np.uint32)
    start = {"run": "r", "energy_ev": 10000.0, "distance_m": 1.6, "pixel_size_m": [55e-6, 55e-6],
             "beam_center": [50.0, 30.0], "frame_shape": list(FRAME), "map_shape": [20, 20]}

    def picked(map_start_after: int | None) -> tuple[int, np.ndarray]:
        run = LiveRun.begin(start, None, (0, 96, 0, 64), threshold=0, background="auto", roi_quota=1, roi_wait_s=1.0,
                            powder_spots="auto")
        for f in range(n_frames):
            if f == map_start_after:
                run.map_started(0, (20, 20), n_frames)
            h = {"map": 0, "frame": f, "index": f, "eta": 10.0 + 0.01 * (f % 4), "phi": 0.0, "nu": 30.0, "delta": 5.0}
            run.sample_for_follow(run.accumulate(h, frames[f]), h, frames[f])
        run.map_plan(run.maps[0])                       # at the map's end: never seen, its frames are its count
        picks = run.maps[0].picks
        return picks.frames, picks.sample.total

    expected = sample_picks(n_frames)[0]
    in_order, late, never = picked(0), picked(7), picked(None)
    assert in_order[0] == late[0] == never[0] == expected.size < n_frames
    np.testing.assert_array_equal(late[1], frames[expected].sum(axis=0))
    np.testing.assert_array_equal(never[1], frames[expected].sum(axis=0))
