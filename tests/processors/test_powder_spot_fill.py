"""The powder-spot fill's shape: what replaces a spot's pixels is the particle's own peak there."""
import numpy as np
import pytest

from opmon.processors.powder_spots import find_spots
from tests.processors.test_powder_spots import broad_peak_sums


def test_the_fill_follows_the_peak_under_a_chain_of_spots_not_the_chain():
    """Spots along the Debye ring overlap into a band; the fill's shape under them must be the particle's own
    (read from around the spots), not the band (the band over-filled spots on the particle: the `all` case's tilt)."""
    rng = np.random.default_rng(5)
    lam = broad_peak_sums()
    rows, cols = np.indices(lam.shape[1:])
    roi, frame = (10, 50, 20, 80), (64, 100)
    eta = 19.0 + 0.016 * np.arange(lam.shape[0])
    spotted = lam.copy()
    for c in range(6, 58, 3):   # a chain of spots along row 14, across the peak's flank
        spotted[3] += 100 * np.exp(-0.5 * ((rows - 14) ** 2 + (cols - c) ** 2) / 2.5 ** 2)
    table = find_spots(rng.poisson(spotted).astype(float), eta, roi, frame)
    scan = list(table.eta).index(round(eta[3], 5))
    bias = []   # per piece: the shape's core-to-ring ratio over the particle's own
    for k in range(table.scan_ptr[scan], table.scan_ptr[scan + 1]):
        core = table.core_pix[table.core_ptr[k]:table.core_ptr[k + 1]]
        ring = table.ring_pix[table.ring_ptr[k]:table.ring_ptr[k + 1]]
        true = [lam[3][pix // frame[1] - roi[0], pix % frame[1] - roi[2]].sum() for pix in (core, ring)]
        bias.append(table.core_shape[table.core_ptr[k]:table.core_ptr[k + 1]].sum()
                    / table.ring_shape[table.ring_ptr[k]:table.ring_ptr[k + 1]].sum() / (true[0] / true[1]))
    assert len(bias) >= 4
    assert np.median(bias) == pytest.approx(1.0, abs=0.06)   # with the band in the shape: 1.13
