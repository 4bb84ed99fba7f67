"""The one auto-ROI rule of the live processor (inline, fan-out workers and coordinator alike)."""
from __future__ import annotations

import numpy as np

from opmon.processors.live.roi import ROI_MAX_FRAMES, RoiDecider, roi_from_sum

SHAPE = (40, 48)


def _frames(n: int, peak: bool, seed: int = 0) -> list[np.ndarray]:
    """`n` photon-counting frames: faint background, with a Bragg spot at (20, 24) if `peak`."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    lam = 0.01 + (300 * np.exp(-((rows - 20) ** 2 + (cols - 24) ** 2) / 8.0) if peak else 0.0)
    return [rng.poisson(np.broadcast_to(lam, SHAPE)).astype(np.uint32) for _ in range(n)]


def test_waits_for_a_peak_then_decides_the_offline_rule_on_every_frame_summed():
    decider = RoiDecider(quota=10, wait_s=3600.0)
    dark, bright = _frames(10, peak=False), _frames(5, peak=True, seed=1)
    for frame in dark[:9]:
        decider.add(frame)
    assert not decider.due()                       # neither the quota nor the wait reached
    decider.add(dark[9])
    assert decider.due()
    assert decider.decide(None, SHAPE, settle=False) is None     # background only: wait for more
    assert decider.next == 20 and not decider.due()
    for frame in bright:
        decider.add(frame)
    roi = decider.decide(None, SHAPE, settle=False)
    assert roi == roi_from_sum(sum(f.astype(np.float64) for f in dark + bright))
    r0, r1, c0, c1 = roi
    assert r0 <= 18 and r1 >= 23 and c0 <= 22 and c1 >= 27 and roi != (0, SHAPE[0], 0, SHAPE[1])


def test_settles_for_the_full_frame_when_told_or_after_the_most_frames():
    decider = RoiDecider(quota=4, wait_s=3600.0)
    for frame in _frames(4, peak=False):
        decider.add(frame)
    assert decider.decide(None, SHAPE, settle=True) == (0, SHAPE[0], 0, SHAPE[1])
    patient = RoiDecider(quota=ROI_MAX_FRAMES, wait_s=3600.0)
    for frame in _frames(ROI_MAX_FRAMES, peak=False):
        patient.add(frame)
    assert patient.decide(None, SHAPE, settle=False) == (0, SHAPE[0], 0, SHAPE[1])


def test_shares_of_several_processes_merge_the_latest_of_each():
    frames = _frames(12, peak=True)
    whole = RoiDecider(quota=12, wait_s=3600.0)
    for frame in frames:
        whole.add(frame)
    coordinator = RoiDecider(quota=12, wait_s=3600.0)
    first = sum(f.astype(np.uint64) for f in frames[:3])
    coordinator.share(0, first, 3)
    coordinator.share(0, first + sum(f.astype(np.uint64) for f in frames[3:6]), 6)   # a later running sum
    coordinator.share(1, sum(f.astype(np.uint64) for f in frames[6:]), 6)
    assert coordinator.frames == 12 and coordinator.sources == 2
    np.testing.assert_array_equal(coordinator.sum.total, whole.sum.total)
    assert coordinator.decide(None, SHAPE, settle=False) == whole.decide(None, SHAPE, settle=False)


def test_the_roi_decision_and_the_runs_mask_look_for_bad_pixels_once(monkeypatch):
    """Deciding the ROI and then taking the run's mask ask the same frames for their bad pixels:
    one search (a 16M-pixel detector's took ~0.5 s), a new one once more frames are summed."""
    from opmon.processors.live.roi import RoiSum

    summed = RoiSum()
    rng = np.random.default_rng(1)
    for _ in range(4):
        summed.add(rng.poisson(0.5, (32, 40)).astype(np.uint32))
    calls = []
    search = summed.finder.mask
    monkeypatch.setattr(summed.finder, "mask", lambda *a: (calls.append(1), search(*a))[1])
    known = np.zeros((32, 40), dtype=np.uint8)
    summed.roi(known, (32, 40))
    first = summed.mask(known)
    assert len(calls) == 1
    summed.add(rng.poisson(0.5, (32, 40)).astype(np.uint32))
    again = summed.mask(known)
    assert len(calls) == 2 and again.shape == first.shape
