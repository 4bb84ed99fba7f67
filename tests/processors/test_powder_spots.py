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
from tests.processors.conftest import simulate_effect


def process(raw, out, *options):
    assert main(["process", str(raw), "-o", str(out), "-q", "--force", *options]) == 0
    return out


@pytest.fixture(scope="module")
def arcs_map(tmp_path_factory):
    return simulate_effect(tmp_path_factory.mktemp("arcs"), "arcs", "powder-arcs", side=12)


def test_powder_arc_spots_are_replaced_so_tilt_and_mask_meet_the_targets(arcs_map, tmp_path):
    off = score(arcs_map, process(arcs_map, tmp_path / "off.h5", "--powder-spots", "off"))
    auto_maps = process(arcs_map, tmp_path / "auto.h5")
    auto = score(arcs_map, auto_maps)
    assert off["tilt"] > 0.01 and off["mask"] < 0.6           # the spots pull the tilt and validate empty points
    assert auto["tilt"] <= 0.005 and auto["mask"] >= 0.95      # the targets
    assert auto["median"] <= 5e-5
    with h5py.File(auto_maps, "r") as f:
        assert f["entry/maps"].attrs["powder_spots"] == "auto"
        assert f["entry/maps"].attrs["powder_spots_rejected"] > 10


def test_a_map_without_spots_gives_the_same_maps_with_and_without_the_search(tmp_path):
    raw = simulate_effect(tmp_path, "plain", "none", side=8)
    a = process(raw, tmp_path / "auto.h5")
    b = process(raw, tmp_path / "off.h5", "--powder-spots", "off")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert fa["entry/maps"].attrs["powder_spots_rejected"] == 0
        for name in ("d_spacing", "tilt_altitude", "mask", "intensity"):
            np.testing.assert_array_equal(fa["entry/maps"][name][()], fb["entry/maps"][name][()])


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
    table = SpotTable(np.array([19.0]), one, one, np.array([5 * 32 + 5]), one, np.array([5 * 32 + 6]))
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
    table = SpotTable(np.array([19.0]), np.array([0, 1]), np.array([0, core.size]), core, np.array([0, ring.size]), ring)
    sums = {}
    for name, spots, eta in (("kept", None, 19.0), ("replaced", table, 19.0), ("other scan", table, 19.016)):
        acc = MomentAccumulator(geo, (1, 1), roi=(4, 28, 4, 28), spots=spots, background=None)
        acc.process_frame(frame, 0, eta, 0.0, 30.0, 5.0)
        sums[name] = float(acc.sum_i[0])
    assert sums["replaced"] == pytest.approx(3 * 24 * 24)
    assert sums["kept"] == sums["other scan"] == 3 * 24 * 24 + 9 * 47
