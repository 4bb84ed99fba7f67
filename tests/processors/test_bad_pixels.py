"""Hot and dead pixels found from the data (issue 13 item 1): found, reported, and needed."""
import logging

import h5py
import pytest
import numpy as np

from opmon.processors.bad_pixels import BadPixelFinder, merged_mask
from opmon.processors.offline import ProcessOptions, process_file
from tests.processors.conftest import simulate_effect as simulate


def d_error(raw, maps):
    """Median |d − d_true| over the pixels both masks keep."""
    with h5py.File(raw, "r") as f, h5py.File(maps, "r") as g:
        true_d, true_mask = f["entry/truth/d_spacing"][()], f["entry/truth/mask"][()] > 0
        d, mask = g["entry/maps/d_spacing"][()], g["entry/maps/mask"][()] > 0
    both = true_mask & mask
    assert both.sum() > 10
    return float(np.median(np.abs(d - true_d)[both]))


def test_unmasked_hot_pixels_are_found_reported_and_kept_out_of_the_maps(tmp_path):
    raw = simulate(tmp_path, "hot", "hot-unmasked")
    with h5py.File(raw, "r") as f:
        truth = {tuple(p) for p in f["entry/truth/unmasked_hot_pixels"][()]}
    found = process_file(raw, tmp_path / "found.h5")["entry"]
    blind = process_file(raw, tmp_path / "blind.h5", ProcessOptions(find_bad_pixels=False))["entry"]
    with h5py.File(tmp_path / "found.h5", "r") as g:
        listed = {tuple(p) for p in g["entry/maps/found_bad_pixels"][()]}
        assert g["entry/maps"].attrs["found_bad_pixels_count"] == len(truth)
    assert listed == truth
    assert d_error(raw, tmp_path / "found.h5") < 5e-5
    assert d_error(raw, tmp_path / "blind.h5") > 10 * d_error(raw, tmp_path / "found.h5")
    assert found.mask.sum() != blind.mask.sum()


def test_a_clean_map_loses_no_pixel_to_the_finder(tmp_path):
    """Bragg-peak pixels light their neighbours and only part of the frames: never flagged."""
    raw = simulate(tmp_path, "clean", "none")
    process_file(raw, tmp_path / "maps.h5")
    with h5py.File(tmp_path / "maps.h5", "r") as g:
        assert g["entry/maps/found_bad_pixels"].shape == (0, 2)


def test_hot_and_dead_pixels_of_a_flat_field_and_not_a_moving_spot_nor_a_sharp_edge():
    rng = np.random.default_rng(1)
    finder = BadPixelFinder()
    known = np.zeros((30, 30), dtype=np.uint8)
    known[0, 0] = 1
    total = np.zeros((30, 30))
    for k in range(40):
        frame = rng.poisson(2.0, (30, 30)).astype(np.uint32)
        frame[10, 10] = 0                       # dead
        frame[20, 5] += 500                     # hot
        frame[0, 0] += 900                      # hot, but already in the file's mask
        frame[5 + k % 10, 25] += 400            # a one-pixel spot that moves: lit in a tenth of the frames
        frame[22:, 20:] = 0                     # a shadow's sharp edge: its dark rim has bright neighbours
        frame[26:, 24:] = 50
        finder.add(frame)
        total += frame
    found = finder.mask(total, known)
    assert {tuple(p) for p in np.argwhere(found)} == {(10, 10), (20, 5)}
    merged = merged_mask(known, found)
    assert merged[0, 0] == merged[10, 10] == merged[20, 5] == 1 and merged.sum() == 3


def test_too_few_frames_decide_nothing():
    finder = BadPixelFinder()
    frame = np.zeros((8, 8), dtype=np.uint16)
    frame[3, 3] = 1000
    for _ in range(3):
        finder.add(frame)
    assert finder.mask(None).shape == (8, 8) and not finder.mask(None).any()
    other = BadPixelFinder()
    for _ in range(6):
        other.add(frame)
    finder.merge(other.standout, other.frames)
    assert finder.frames == 9 and finder.mask(None)[3, 3] == 1 and finder.mask(None).sum() == 1



@pytest.mark.parametrize("workers", [1, 2])
def test_live_processor_finds_the_same_hot_pixels_and_makes_the_offline_maps(tmp_path, workers, caplog):
    """One code path: the live ROI decision masks what `opmon process` masks (inline and fan-out)."""
    from opmon.cli import main
    from opmon.processors.maps import read_map_result

    from tests.processors.conftest import assert_same_maps

    caplog.set_level(logging.INFO, logger="opmon.processors.live.engine")
    raw = simulate(tmp_path, "hot", "hot-unmasked", side=6)
    out = tmp_path / "live.h5"
    assert main(["replay", str(raw), "-o", str(out), "--workers", str(workers)]) == 0
    with h5py.File(out, "r") as f:
        live = read_map_result(f["entry0"])
        roi = tuple(int(v) for v in f["entry0/maps"].attrs["roi"])   # live decides it from its first frames
    offline = process_file(raw, tmp_path / "offline.h5", ProcessOptions(roi=roi))["entry"]
    assert_same_maps(live, offline)
    assert "masked 2 hot/dead detector pixel(s)" in caplog.text
    with h5py.File(raw, "r") as f:
        hot = f["entry/truth/unmasked_hot_pixels"][()]
    inside = lambda r: ((hot[:, 0] >= r[0]) & (hot[:, 0] < r[1]) & (hot[:, 1] >= r[2]) & (hot[:, 1] < r[3])).any()  # noqa: E731
    process_file(raw, tmp_path / "blind.h5", ProcessOptions(find_bad_pixels=False))
    with h5py.File(tmp_path / "blind.h5", "r") as g:
        assert inside(g["entry/maps"].attrs["roi"])      # unmasked, the hot pixels pull the auto ROI ...
    assert not inside(roi)                              # ... the live one keeps them out


def test_pixels_at_the_detectors_invalid_mark_are_found_even_in_a_run_the_hot_rule_cannot_see():
    """An Eiger writes 2^bits - 1 where a pixel is invalid; a bad column of them has only bright
    neighbours (not 'far above all eight'), yet its counts are no data: found unless the file's
    mask already holds it (the gap line here)."""
    rng = np.random.default_rng(3)
    finder = BadPixelFinder()
    total = np.zeros((40, 50), dtype=np.float64)
    known = np.zeros((40, 50), dtype=np.uint8)
    known[:, 20] = 1                                   # the chip gap, in the file's mask
    for _ in range(12):
        frame = rng.poisson(30.0, (40, 50)).astype(np.uint16)
        frame[:, 20] = 65535                           # the gap
        frame[5:15, 33] = 65535                        # a bad column the mask misses
        frame[30, 8] = 900                             # a hot pixel
        finder.add(frame)
        total += frame
    found = finder.mask(total, known)
    assert found[5:15, 33].all() and found[30, 8]
    assert not found[:, 20].any()                      # already masked: not reported again
    assert found.sum() == 11
