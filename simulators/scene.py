"""What else reaches the detector besides the particle: other grains' powder arcs, the beam.

* Powder arcs: other LMNO grains near the particle diffract the same reflection, each into a
  compact spot on its Debye-Scherrer ring, over a narrow range of eta and only while the beam
  is on them (a disc of the map). Each grain has its own d (`grains`: the phases present at the
  cell's state of charge, with a spread), so its spot sits at its own 2θ, on the particle's
  peak or not. Spots are drawn on the part of each ring inside the rendered window.
* Incident intensity: a relative scale per frame (1 = nominal), a step down by ``drop`` from
  the middle of the acquisition on (a storage-ring event); the monitor records it as
  ``MONITOR_COUNTS`` × scale with Poisson noise.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.optics import q_sample_area

F64 = npt.NDArray[np.float64]
MONITOR_COUNTS = 1.0e5  # monitor counts per frame at nominal intensity


def powder_spots(setup: SxdmSetup, d_grains: npt.ArrayLike, seed: int, n_spots: int = 40,
                 amplitude: float = 30.0) -> F64:
    """(k, 10) spots for the renderer: row, col (full detector), peak counts per frame, size
    (px), eta centre, eta sigma (deg), map row, map column, map radius (pixels), and the grain's
    d (Å, the renderer ignores it).

    ``d_grains``: one d per grain (``n_spots`` of them, e.g. `grains.grain_spacings`), or one d
    for all; each spot sits on its own grain's ring, where |q| = 2π/d. A grain whose ring misses
    the rendered window is not seen: k ≤ ``n_spots``.
    """
    rng = np.random.default_rng([seed, 0xA5C])
    r0, r1, c0, c1 = setup.roi_window
    d = np.broadcast_to(np.asarray(d_grains, dtype=np.float64), (n_spots,))
    q = q_sample_area(setup.eta_center, setup.phi, setup.nu, setup.delta, energy_ev=setup.energy_ev,
                      distance_m=setup.distance_m, pixel_size_m=setup.pixel_size_m, beam_center=setup.beam_center,
                      frame_shape=setup.frame_shape, roi_origin=(r0, c0))
    qn = np.linalg.norm(q, axis=-1)
    rings = {dk: np.nonzero(np.abs(qn - 2 * np.pi / dk) < 0.5 * setup.pixel_dq) for dk in np.unique(d)}
    etas = setup.eta_values()
    ny, nx = setup.map_shape
    spots = np.empty((n_spots, 10))
    for k, dk in enumerate(d):
        rows, cols = rings[dk]
        spots[k, :2] = np.nan
        if rows.size:
            i = rng.integers(rows.size)
            spots[k, :2] = rows[i] + r0, cols[i] + c0
    spots[:, :2] += rng.uniform(-0.5, 0.5, (n_spots, 2))
    spots[:, 2] = amplitude * rng.uniform(0.2, 1.0, n_spots)
    spots[:, 3] = rng.uniform(1.0, 3.0, n_spots)
    spots[:, 4] = rng.uniform(etas.min(), etas.max(), n_spots)
    spots[:, 5] = np.maximum(rng.uniform(0.5, 3.0, n_spots) * setup.eta_step, 1e-3)
    spots[:, 6] = rng.uniform(0, ny, n_spots)
    spots[:, 7] = rng.uniform(0, nx, n_spots)
    spots[:, 8] = rng.uniform(0.15, 0.4, n_spots) * max(ny, nx)
    spots[:, 9] = d
    return spots[np.isfinite(spots[:, 0])]


def incident_scale(n_frames: int, drop: float) -> F64:
    """Relative incident intensity per frame: 1, then ``1 - drop`` from the middle on."""
    scale = np.ones(n_frames)
    if drop:
        scale[n_frames // 2:] = 1.0 - float(drop)
    return scale


def monitor_counts(scale: F64, seed: int) -> F64:
    """What an incident-beam monitor reads per frame for a relative intensity ``scale``."""
    rng = np.random.default_rng([seed, 0x10])
    return rng.poisson(MONITOR_COUNTS * scale).astype(np.float64)
