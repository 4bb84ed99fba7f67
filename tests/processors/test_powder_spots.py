"""Issue 13: powder-arc spots of other grains are found per map and replaced by the level around them.

A realistic simulated map with spotty arcs (`opmon simulate --effects powder-arcs`) through
`opmon process`: with ``--powder-spots off`` the spots' photons validate map points off the
particle and pull the tilt; with ``auto`` both meet the issue's targets. A map without spots
gives the same maps either way, and the spot search itself is checked on synthetic sums.
"""
import h5py
import numpy as np
import pytest

from opmon.benchmarks.bench_truth import score
from opmon.cli import main
from opmon.errors import OpmonError
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.powder_spots import SpotTable, find_spots
from opmon.processors.spot_level import OPENING, SMOOTH_SIGMA, binned_level, smooth_level
from opmon.streaming.archive.raw import RawMapWriter
from tests.processors.conftest import SHAPE
from tests.processors.conftest import simulate_effect


def process(raw, out, *options):
    assert main(["process", str(raw), "-o", str(out), "-q", "--force", *options]) == 0
    return out


@pytest.fixture(scope="module")
def arcs_map(tmp_path_factory):
    return simulate_effect(tmp_path_factory.mktemp("arcs"), "arcs", "powder-arcs", side=12)


@pytest.fixture(scope="module")
def arcs_auto(arcs_map):
    """`opmon process --powder-spots auto` of the powder-arcs map (shared: offline and live tests)."""
    return process(arcs_map, arcs_map.with_name("auto.h5"), "--powder-spots", "auto")


def test_powder_arc_spots_are_replaced_so_tilt_and_mask_meet_the_targets(arcs_map, arcs_auto, tmp_path):
    off = score(arcs_map, process(arcs_map, tmp_path / "off.h5", "--powder-spots", "off"))
    auto_maps = arcs_auto
    auto = score(arcs_map, auto_maps)
    assert off["tilt"] > 0.01 and off["mask"] < 0.6           # the spots pull the tilt and validate empty points
    assert auto["tilt"] <= 0.005 and auto["mask"] >= 0.95      # the targets
    assert auto["median"] <= 5e-5
    with h5py.File(auto_maps, "r") as f:
        assert f["entry/maps"].attrs["powder_spots"] == "auto"
        assert f["entry/maps"].attrs["powder_spots_rejected"] > 10


def test_a_map_without_spots_gives_the_same_maps_with_and_without_the_search(raw_file, tmp_path):
    """Compact peaks moving over the map (their summed image is itself compact): not taken for spots."""
    a = process(raw_file, tmp_path / "auto.h5", "--powder-spots", "auto")
    b = process(raw_file, tmp_path / "off.h5", "--powder-spots", "off")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["entry/maps"].attrs["powder_spots_rejected"] == 0
        for name in ("d_spacing", "tilt_altitude", "mask", "intensity"):
            np.testing.assert_array_equal(fa["entry/maps"][name][()], fb["entry/maps"][name][()])


def spotted_raw(path, spot=True, seed=0):
    """A 4 x 4 map, 8 eta scans: a peak (sigma 3 px) moving with the map pixel, and (spot=True) a
    compact powder spot (sigma 1 px, 30 counts, clear of the peak) in eta scans 3 and 4 at every map point."""
    rng = np.random.default_rng(seed)
    side, etas = 4, 8
    n = side * side * etas
    index = np.tile(np.arange(side * side), etas)                # eta-outer, as a real map
    eta = np.repeat(19.0 + 0.016 * np.arange(etas), side * side)
    rows, cols = np.indices(SHAPE)
    frames = np.empty((n,) + SHAPE, np.uint32)
    for f in range(n):
        k = f // (side * side)
        r, c = 18 + 0.5 * (index[f] % side), 22 + 0.5 * (index[f] // side)
        lam = 20 * np.exp(-0.5 * ((k - 3.5) / 2) ** 2 - 0.5 * ((rows - r) ** 2 + (cols - c) ** 2) / 9) + 1e-3
        if spot and k in (3, 4):
            lam = lam + 30 * np.exp(-0.5 * ((rows - 8) ** 2 + (cols - 34) ** 2))
        frames[f] = rng.poisson(lam)
    with h5py.File(path, "w") as f:
        w = RawMapWriter(f.create_group("entry"), frame_shape=SHAPE, dtype=np.uint32, energy_ev=10000.0, distance_m=1.6,
                         pixel_size_m=(55e-6, 55e-6), beam_center=(200.0, 24.0), map_shape=(side, side))
        w.append(frames, index, eta, 0.0, 0.0, 35.0)
    return path


SPOT_ROI = ["--roi", "2", "36", "8", "44"]


def test_a_spot_off_the_peak_pulls_the_centre_unless_replaced(tmp_path):
    clean = spotted_raw(tmp_path / "clean.h5", spot=False)
    spotted = spotted_raw(tmp_path / "spotted.h5")
    truth = process(clean, tmp_path / "clean_maps.h5", *SPOT_ROI, "--powder-spots", "off")
    maps = {mode: process(spotted, tmp_path / f"{mode}.h5", *SPOT_ROI, "--powder-spots", mode) for mode in ("auto", "off")}
    with h5py.File(truth, "r") as f:
        q_true = f["entry/maps/q"][()]
    err = {}
    for mode, path in maps.items():
        with h5py.File(path, "r") as f:
            err[mode] = float(np.median(np.linalg.norm(f["entry/maps/q"][()] - q_true, axis=-1)))
            spots = f["entry/maps"].attrs["powder_spots_rejected"]
    assert err["off"] > 5 * err["auto"]      # the rest is the two files' different Poisson draws
    assert spots == 0  # the last one read: off


def broad_peak_sums(n_scans=6, shape=(40, 60)):
    """Expected per-scan sums of a broad summed particle peak (sigma 8 x 12 px) on a flat background."""
    rows, cols = np.indices(shape)
    return np.array([400 * np.exp(-0.5 * (k - 2.5) ** 2 / 4) * np.exp(-0.5 * (((rows - 20) / 8) ** 2 + ((cols - 30) / 12) ** 2))
                     + 2 for k in range(n_scans)])


def test_the_search_finds_compact_spots_on_a_broad_peak_and_nothing_without_them():
    rng = np.random.default_rng(3)
    lam = broad_peak_sums()
    rows, cols = np.indices(lam.shape[1:])
    roi, frame = (10, 50, 20, 80), (64, 100)
    eta = 19.0 + 0.016 * np.arange(lam.shape[0])
    assert find_spots(rng.poisson(lam).astype(float), eta, roi, frame).n_spots == 0
    spotted = lam.copy()
    spotted[3] += 300 * np.exp(-0.5 * ((rows - 22) ** 2 + (cols - 25) ** 2) / 1.5 ** 2)  # on the peak's flank, scan 3 only
    table = find_spots(rng.poisson(spotted).astype(float), eta, roi, frame)
    assert table.n_spots >= 1
    assert set(table.eta) <= set(np.round(eta[2:5], 5))          # its scan and the neighbours (the wings)
    centre = (22 + roi[0]) * frame[1] + 25 + roi[2]
    assert centre in table.core_pix[table.core_ptr[table.scan_ptr[list(table.eta).index(round(eta[3], 5))]]:]
    assert not np.isin(table.ring_pix, table.core_pix).any()       # the ring stands beside the spot


def test_spot_pixels_outside_the_roi_are_refused():
    geo = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (250.0, 260.0), (32, 32))
    one = np.array([0, 1], dtype=np.int64)
    table = SpotTable(np.array([19.0]), 32, one, one, np.array([5 * 32 + 5]), one, np.array([5 * 32 + 6]))
    with pytest.raises(OpmonError, match="outside the ROI"):
        MomentAccumulator(geo, (1, 1), roi=(10, 20, 10, 20), spots=table)


def test_replacing_a_spot_adds_the_level_of_its_ring_in_expectation():
    """A flat frame with a bright spot: after replacement Σ I is what the frame holds without the spot."""
    shape = (32, 32)
    geo = DetectorGeometry(10000.0, 1.6, (55e-6, 55e-6), (250.0, 260.0), shape)
    frame = np.full(shape, 3, dtype=np.uint32)
    frame[14:17, 14:17] = 50
    core = np.array([r * 32 + c for r in range(13, 18) for c in range(13, 18)])
    ring = np.array([r * 32 + c for r in range(11, 20) for c in range(11, 20) if r * 32 + c not in set(core)])
    table = SpotTable(np.array([19.0]), 32, np.array([0, 1]), np.array([0, core.size]), core, np.array([0, ring.size]), ring)
    sums = {}
    for name, spots, eta in (("kept", None, 19.0), ("replaced", table, 19.0), ("other scan", table, 19.016)):
        acc = MomentAccumulator(geo, (1, 1), roi=(4, 28, 4, 28), spots=spots, background=None)
        acc.process_frame(frame, 0, eta, 0.0, 30.0, 5.0)
        sums[name] = float(acc.sum_i[0])
    assert sums["replaced"] == pytest.approx(3 * 24 * 24)
    assert sums["kept"] == sums["other scan"] == 3 * 24 * 24 + 9 * 47


# -- the guard: compact spots that ARE the pattern are not powder spots ----------------------------------
def bragg_pattern(shape=(48, 48), n_spots=30, seed=5):
    """Expected counts of a frame of many compact Bragg spots of similar strength (sigma 1 px) on a
    faint flat background, no broad peak: what the tickit-devices EIGER2 recording shows."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    lam = np.full(shape, 0.02)
    for r, c in rng.uniform(4, shape[0] - 4, (n_spots, 2)):
        lam += rng.uniform(40, 60) * np.exp(-0.5 * ((rows - r) ** 2 + (cols - c) ** 2))
    return lam


def test_the_guard_tells_a_powder_spot_from_a_pattern_of_many_bragg_spots():
    rng = np.random.default_rng(4)
    eta = 19.0 + 0.016 * np.arange(6)
    roi, frame = (10, 50, 20, 80), (64, 100)
    lam = broad_peak_sums()
    spotted = lam.copy()
    spotted[3] += 300 * np.exp(-0.5 * ((np.indices(lam.shape[1:])[0] - 22) ** 2 + (np.indices(lam.shape[1:])[1] - 25) ** 2)
                               / 1.5 ** 2)
    table = find_spots(rng.poisson(spotted).astype(float), eta, roi, frame)
    assert table.n_spots >= 1 and table.note == ""                   # a powder spot beside the broad peak: replaced
    bragg = np.stack([bragg_pattern((40, 60))] * eta.size)            # the same spots at every eta, no broad peak
    table = find_spots(rng.poisson(bragg).astype(float), eta, roi, frame)
    assert table.n_spots == 0 and table.note.startswith("not powder spots")


def test_a_frame_of_many_bragg_spots_keeps_its_maps_with_the_search_on(tmp_path):
    """The tickit finding (`opmon process --powder-spots auto` moved d by 4 % on the recorded EIGER2
    frame): a map whose frames are the same many-Bragg-spot pattern gives the maps of `off`, and says why."""
    rng = np.random.default_rng(6)
    lam = bragg_pattern(SHAPE)
    side, etas = 3, 4
    index = np.tile(np.arange(side * side), etas)
    eta = np.repeat(19.0 + 0.016 * np.arange(etas), side * side)
    with h5py.File(tmp_path / "bragg.h5", "w") as f:
        w = RawMapWriter(f.create_group("entry"), frame_shape=SHAPE, dtype=np.uint32, energy_ev=10000.0, distance_m=1.6,
                         pixel_size_m=(55e-6, 55e-6), beam_center=(200.0, 24.0), map_shape=(side, side))
        w.append(rng.poisson(lam, (index.size, *SHAPE)).astype(np.uint32), index, eta, 0.0, 0.0, 35.0)
    a = process(tmp_path / "bragg.h5", tmp_path / "auto.h5", "--powder-spots", "auto")
    b = process(tmp_path / "bragg.h5", tmp_path / "off.h5", "--powder-spots", "off")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["entry/maps"].attrs["powder_spots_rejected"] == 0
        assert "not powder spots" in fa["entry/maps"].attrs["powder_spots_note"]
        for name in ("d_spacing", "tilt_altitude", "mask", "intensity"):
            np.testing.assert_array_equal(fa["entry/maps"][name][()], fb["entry/maps"][name][()])


def test_live_maps_with_powder_spots_auto_equal_opmon_process_with_auto(arcs_map, arcs_auto, tmp_path, capsys):
    """The live processor finds a map's spots in the frames `opmon process` samples (summed per eta scan
    as they arrive) and re-makes the map at its end with them replaced: live = offline per map, and
    the spots no longer pull the tilt nor validate empty map points (`off`: tilt > 0.01°, mask < 60 %).
    The ROI is given (the one `opmon process` found): the map is re-made for its spots alone (a first
    map's provisional auto ROI is re-made anyway, `test_live_first_map`)."""
    from opmon.processors.maps import read_map_result
    from tests.processors.conftest import assert_same_maps

    with h5py.File(arcs_auto, "r") as g:
        roi = [str(int(v)) for v in g["entry/maps"].attrs["roi"]]
    live = tmp_path / "live.h5"
    assert main(["replay", str(arcs_map), "-o", str(live), "--powder-spots", "auto", "--roi", *roi]) == 0
    assert "frames lost 0" in capsys.readouterr().out
    with h5py.File(live, "r") as f, h5py.File(arcs_auto, "r") as g:
        assert g["entry/maps"].attrs["powder_spots_rejected"] > 10
        assert_same_maps(read_map_result(f["entry0"]), read_map_result(g["entry"]))
    auto = score(arcs_map, live)
    assert auto["tilt"] <= 0.005 and auto["mask"] >= 0.95


def test_the_auto_roi_leaves_out_spots_of_grains_at_another_two_theta():
    """Grains at another state of charge than the particle put their spots on other rings (Li0.5 grains ~140
    rows from a Li0.9 peak): with the spot search on, the auto ROI is decided without them, so it holds the
    particle's peak and the rows beside it measure the background (from the plain sum it ran to row 0)."""
    from opmon.processors.bad_pixels import BadPixelFinder
    from opmon.processors.offline import MapSample, plan_of_sample
    from opmon.processors.powder_spots import ScanSums
    rng = np.random.default_rng(4)
    frame = (120, 60)
    sums = np.full((6, *frame), 2.0)
    sums[:, 60:100, :] = broad_peak_sums()          # the particle's peak, rows 60-100
    rows, cols = np.indices(frame)
    for scan, col in ((1, 12), (3, 30), (4, 47)):   # spots of other grains on a ring at row 10, one scan each
        sums[scan] += 300 * np.exp(-0.5 * ((rows - 10) ** 2 + (cols - col) ** 2) / 1.5 ** 2)
    counts = rng.poisson(sums).astype(np.float32)
    scans = ScanSums(frame, n_scans=6)
    scans.add(counts, 19.0 + 0.016 * np.arange(6))
    plan = plan_of_sample(MapSample(counts.sum(axis=0, dtype=np.float64), BadPixelFinder(), scans), None, frame,
                          find_bad_pixels=False)
    assert plan.roi[0] > 30 and plan.roi[1] > 100


def test_a_chain_of_spots_beside_a_faded_particle_is_still_found():
    """Late on the first plateau the imaged phase has faded (one phase in the detector window) while the Li0.9
    grains' spots stay: a chain of them holding ~30 % of the signal is spots, not the particle's own peak (a
    compact particle peak holds most of it); at a 20 % share the chain was kept and validated the map around."""
    lam = broad_peak_sums()
    rows, cols = np.indices(lam.shape[1:])
    spotted = lam.copy()
    for c in range(8, 54, 4):      # one scan's chain of spots along a ring at row 8, beside the peak
        spotted[3] += 1600 * np.exp(-0.5 * ((rows - 8) ** 2 + (cols - c) ** 2) / 1.5 ** 2)
    signal = np.clip(spotted - np.median(spotted, axis=(1, 2), keepdims=True), 0.0, None).sum()
    assert 0.25 < (spotted - lam).sum() / signal < 0.4
    eta = 19.0 + 0.016 * np.arange(lam.shape[0])
    table = find_spots(np.random.default_rng(6).poisson(spotted).astype(float), eta, (10, 50, 20, 80), (64, 100))
    assert table.n_spots >= 10 and not table.note


def per_image_level(image, good):
    """`binned_level` of one image as it was before the stack (scipy `map_coordinates` upsampling): the reference."""
    from scipy import ndimage
    rows, cols = image.shape
    pad = ((0, rows % 2), (0, cols % 2))
    summed = np.pad(np.where(good, image, 0.0), pad, mode="edge")
    counted = np.pad(good.astype(float), pad, mode="edge")
    summed, counted = (a.reshape(a.shape[0] // 2, 2, -1, 2).sum(axis=(1, 3)) for a in (summed, counted))
    binned = smooth_level(summed / np.maximum(counted, 1.0), counted > 0, SMOOTH_SIGMA / 2, scale=4.0, radius=OPENING // 2)
    r = np.clip((np.arange(rows) - 0.5) / 2.0, 0, binned.shape[0] - 1)
    c = np.clip((np.arange(cols) - 0.5) / 2.0, 0, binned.shape[1] - 1)
    return ndimage.map_coordinates(binned, np.meshgrid(r, c, indexing="ij"), order=1, mode="nearest")


def test_the_stacked_level_is_each_scans_own_level():
    """The spot search levels all eta scans in one call per filter: each scan must get the level of its own
    image and mask, as one image at a time (a filter reaching across scans, or one mask for all, would not)."""
    rng = np.random.default_rng(7)
    lam = broad_peak_sums(shape=(41, 57))                     # odd sides: the binning pads
    lam[:, 20:, :] *= np.arange(1, 7)[:, None, None]        # scans unlike each other
    rows, cols = np.indices(lam.shape[1:])
    lam[2] += 300 * np.exp(-0.5 * ((rows - 22) ** 2 + (cols - 25) ** 2) / 1.5 ** 2)
    sums = rng.poisson(lam).astype(float)
    good = rng.random(lam.shape[1:]) > 0.05                  # one mask for every scan ...
    per_scan = rng.random(lam.shape) > 0.1                   # ... or one per scan (the shape under the spots)
    for mask in (good, per_scan):
        stacked = binned_level(sums, mask)
        for k in range(sums.shape[0]):
            np.testing.assert_allclose(stacked[k], per_image_level(sums[k], mask if mask.ndim == 2 else mask[k]),
                                       rtol=1e-12, atol=1e-12)


def test_the_roi_search_takes_the_whole_frames_only_for_the_same_sums_and_mask():
    """With the ROI the whole frame, `ScanSums.spots` takes the spots the auto ROI's search found on the same sums;
    with another mask, or more frames since, it searches again."""
    from opmon.processors.powder_spots import ScanSums
    rng = np.random.default_rng(5)
    lam = broad_peak_sums()
    rows, cols = np.indices(lam.shape[1:])
    lam[3] += 300 * np.exp(-0.5 * ((rows - 22) ** 2 + (cols - 25) ** 2) / 1.5 ** 2)
    eta = 19.0 + 0.016 * np.arange(lam.shape[0])
    frame, whole = lam.shape[1:], (0, lam.shape[1], 0, lam.shape[2])
    counts = rng.poisson(lam).astype(np.float32)
    scans = ScanSums(frame, n_scans=lam.shape[0])
    scans.add(counts, eta)
    mask = np.zeros(frame, np.uint8)
    other = mask.copy()
    other[20:25, 23:28] = 1                                   # the spot's middle masked
    fresh = {id(m): find_spots(counts.astype(float), eta, whole, frame, m) for m in (mask, other)}

    def same(a, b):
        return all(np.array_equal(x, y) for x, y in zip(a.arrays(), b.arrays()))

    assert not same(fresh[id(mask)], fresh[id(other)])
    scans.without_spots(mask)
    assert same(scans.spots(whole, mask), fresh[id(mask)])
    assert same(scans.spots(whole, other), fresh[id(other)])
    scans.without_spots(mask)
    scans.add(counts[3:4], eta[3:4])                          # the spot's scan again: its sum doubles
    doubled = counts.astype(float)
    doubled[3] *= 2
    again = find_spots(doubled, eta, whole, frame, mask)
    assert not same(again, fresh[id(mask)])
    assert same(scans.spots(whole, mask), again)


def test_each_spot_pieces_ring_is_what_growing_the_piece_gives():
    """A spot piece's ring: the good pixels outside every spot that RING-pixel cross dilations of the piece reach,
    widened (up to RING_TRIES times) while it holds fewer than MIN_RING_PIXELS. A blob spanning several tiles has
    pieces enclosed by its other pieces (they look further); one at the window's corner is cut by the edge."""
    from scipy import ndimage
    from opmon.processors.powder_spots import MIN_RING_PIXELS, RING, RING_TRIES, _table
    rows, cols = np.indices((50, 70))
    spots = np.zeros((2, 50, 70), dtype=bool)
    spots[0] = np.hypot(rows - 25, cols - 30) <= 17                 # a blob over several TILE x TILE tiles
    spots[1] = (np.hypot(rows, cols - 69) <= 5) | (np.hypot(rows - 40, cols - 10) <= 2)
    good = np.random.default_rng(2).random((50, 70)) > 0.3         # masked pixels never in a ring
    roi, frame_cols = (10, 60, 5, 75), 80
    table = _table(spots, np.array([19.0, 19.016]), roi, frame_cols, good, np.ones(spots.shape))
    widened = 0
    for s in range(2):
        for k in range(table.scan_ptr[s], table.scan_ptr[s + 1]):
            core = np.zeros((50, 70), dtype=bool)
            pix = table.core_pix[table.core_ptr[k]:table.core_ptr[k + 1]]
            core[pix // frame_cols - roi[0], pix % frame_cols - roi[2]] = True
            grow = core
            for tries in range(1, RING_TRIES + 1):
                grow = ndimage.binary_dilation(grow, iterations=RING)
                ring = grow & ~spots[s] & good
                if ring.sum() >= MIN_RING_PIXELS:
                    break
            widened += tries > 1
            rr, cc = np.nonzero(ring)
            np.testing.assert_array_equal(table.ring_pix[table.ring_ptr[k]:table.ring_ptr[k + 1]],
                                          (rr + roi[0]) * frame_cols + cc + roi[2])
    assert widened >= 2 and table.scan_ptr[-1] - table.scan_ptr[1] == 2
