"""What else reaches the detector besides the particle: other grains' powder arcs, the beam.

* Powder arcs: other LMNO grains near the particle diffract at the same 2θ as the imaged
  reflection, each into a compact spot on the Debye-Scherrer ring, over a narrow range of
  eta and only while the beam is on them (a disc of the map). Spots are drawn on the part
  of the ring inside the rendered window.
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


def powder_spots(setup: SxdmSetup, d_arc: float, seed: int, n_spots: int = 40,
                 amplitude: float = 30.0) -> F64:
    """(n, 9) spots for the renderer: row, col (full detector), peak counts per frame, size
    (px), eta centre, eta sigma (deg), map row, map column, map radius (pixels)."""
    rng = np.random.default_rng([seed, 0xA5C])
    r0, r1, c0, c1 = setup.roi_window
    q = q_sample_area(setup.eta_center, setup.phi, setup.nu, setup.delta, energy_ev=setup.energy_ev,
                      distance_m=setup.distance_m, pixel_size_m=setup.pixel_size_m, beam_center=setup.beam_center,
                      frame_shape=setup.frame_shape, roi_origin=(r0, c0))
    on_ring = np.abs(np.linalg.norm(q, axis=-1) - 2 * np.pi / d_arc) < 0.5 * setup.pixel_dq
    rows, cols = np.nonzero(on_ring)
    if rows.size == 0:
        return np.zeros((0, 9))
    pick = rng.choice(rows.size, size=n_spots, replace=True)
    etas = setup.eta_values()
    ny, nx = setup.map_shape
    spots = np.empty((n_spots, 9))
    spots[:, 0] = rows[pick] + r0 + rng.uniform(-0.5, 0.5, n_spots)
    spots[:, 1] = cols[pick] + c0 + rng.uniform(-0.5, 0.5, n_spots)
    spots[:, 2] = amplitude * rng.uniform(0.2, 1.0, n_spots)
    spots[:, 3] = rng.uniform(1.0, 3.0, n_spots)
    spots[:, 4] = rng.uniform(etas.min(), etas.max(), n_spots)
    spots[:, 5] = np.maximum(rng.uniform(0.5, 3.0, n_spots) * setup.eta_step, 1e-3)
    spots[:, 6] = rng.uniform(0, ny, n_spots)
    spots[:, 7] = rng.uniform(0, nx, n_spots)
    spots[:, 8] = rng.uniform(0.15, 0.4, n_spots) * max(ny, nx)
    return spots


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
