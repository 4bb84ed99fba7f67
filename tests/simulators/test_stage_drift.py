"""The simulated stage creep between maps, and the frame source that renders what the beam hits
at the piezo's position (a shifted scan region, a crept particle)."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.errors import ConfigError
from opmon.simulators.beamline import SimFrameSource
from opmon.simulators.cell import CellConfig, CellSimulator
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.render import FrameRenderer
from opmon.simulators.stage_drift import StageDrift

SETUP = SxdmSetup(map_shape=(6, 6), n_angles=3, roi=(300, 420, 200, 300), map_step_um=0.1)


def test_the_creep_is_seeded_smooth_and_at_most_the_largest_step():
    path = StageDrift(1.0, seed=4).path(12)
    assert np.array_equal(path, StageDrift(1.0, seed=4).path(12)) and not np.array_equal(path, StageDrift(1.0, 5).path(12))
    assert np.array_equal(path[0], [0.0, 0.0])
    steps = np.diff(path, axis=0)
    size = np.hypot(*steps.T)
    assert size.max() <= 1.0 and size.min() >= 0.8
    turn = np.degrees(np.abs(np.diff(np.unwrap(np.arctan2(steps[:, 1], steps[:, 0])))))
    assert turn.max() < 40                                  # a creep, not a random walk
    assert np.array_equal(StageDrift(0.0).path(3), np.zeros((3, 2)))
    with pytest.raises(ConfigError, match=">= 0"):
        StageDrift(-1.0)


def test_the_source_renders_the_particle_where_the_piezo_and_the_creep_put_it():
    particle = ParticleModel(SETUP, seed=2)
    source = SimFrameSource(FrameRenderer(SETUP, particle, seed=2), particle, CellSimulator(CellConfig()))
    idx, eta = SETUP.scan()
    at_rest = source.renderer.expected(idx, eta, SETUP.phi, SETUP.nu, SETUP.delta).sum(axis=(1, 2)).reshape(3, 6, 6)

    def seen(pixel: int, x_shift_um: float, creep_um: tuple[float, float]) -> float:
        """Expected counts of map pixel `pixel` (first angle) with the region moved by x_shift_um."""
        source.particle_offset_um = creep_um
        row, col = divmod(pixel, 6)
        source.follow_stage(pixel, {"x": col * 0.1 + x_shift_um, "y": row * 0.1})
        return float(source.renderer.expected([pixel], [eta[0]], SETUP.phi, SETUP.nu, SETUP.delta).sum())

    assert seen(14, 0.2, (0.0, 0.0)) == pytest.approx(at_rest[0, 2, 4])       # region +2 px: pixel (2, 2) sees (2, 4)
    assert seen(14, 0.0, (0.0, 0.1)) == pytest.approx(at_rest[0, 1, 2])       # the particle crept +1 px in y
    assert seen(14, 0.3, (0.3, 0.0)) == pytest.approx(at_rest[0, 2, 2])       # re-centred: the same pixel again
