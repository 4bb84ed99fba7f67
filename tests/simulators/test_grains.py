"""The powder arcs' grains are at the cell's state of charge, not at the imaged particle's d (issue 13 item 2)."""
from __future__ import annotations

import h5py
import numpy as np

from opmon.commands.simulate import simulate
from opmon.simulators.grains import grain_spacings
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.optics import q_sample_area

WINDOW = (96, 416, 160, 352)  # the truth bench's rendered window: holds the Li0.9 and Li0.5 rings


def test_powder_spots_sit_at_their_own_grains_d_not_at_the_particles(tmp_path):
    """On the first plateau the electrode's grains are Li0.9 or Li0.5 (a spread around each): each
    spot sits on its grain's ring, so the spots' 2θ spread over both phases, and the truth says
    each spot's d (arcs at the particle's d flattered a processing that leaves spot photons in)."""
    path = tmp_path / "arcs.h5"
    simulate(path, ny=8, nx=8, angles=4, x_mean=0.8, seed=4, roi=WINDOW, effects="powder-arcs", progress=False)
    with h5py.File(path, "r") as f:
        t = f["entry/truth"]
        spots, spot_d = t["powder_spots"][()], t["powder_spot_d"][()]
        assert t["powder_spot_d"].attrs["units"] == "angstrom"
        d_particle = float(np.nanmedian(np.where(t["mask"][()] > 0, t["d_spacing"][()], np.nan)))
        setup = SxdmSetup(map_shape=(8, 8), roi=WINDOW, eta_step=float(t.attrs["eta_step"]),
                          eta_center=float(t.attrs["eta_center"]))
    assert spot_d.shape == (spots.shape[0],) and spots.shape[0] >= 30
    r0, _, c0, _ = setup.roi_window
    q = q_sample_area(setup.eta_center, setup.phi, setup.nu, setup.delta, energy_ev=setup.energy_ev,
                      distance_m=setup.distance_m, pixel_size_m=setup.pixel_size_m, beam_center=setup.beam_center,
                      frame_shape=setup.frame_shape, roi_origin=(r0, c0))
    rows = np.clip(np.round(spots[:, 0] - r0).astype(int), 0, setup.frame_shape[0] - 1)
    cols = np.clip(np.round(spots[:, 1] - c0).astype(int), 0, setup.frame_shape[1] - 1)
    d_seen = 2 * np.pi / np.linalg.norm(q[rows, cols], axis=-1)       # where each spot sits on the detector
    assert np.all(np.abs(d_seen - spot_d) < 2.5e-4)                   # on its own grain's ring (a pixel ~1.1e-4 A)
    assert np.sum(np.abs(d_seen - 2.0184) < 1.5e-3) >= 4              # Li0.5 grains ...
    assert np.sum(np.abs(d_seen - 2.0332) < 1.5e-3) >= 10             # ... and Li0.9 grains
    assert np.sum(np.abs(d_seen - d_particle) > 2.5e-4) >= 20         # most not on the particle's ring
    assert np.array_equal(grain_spacings("paper", 0.8, 40, 4), grain_spacings("paper", 0.8, 40, 4))   # seeded
