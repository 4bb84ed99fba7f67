"""The simulated ID01 SXDM instrument: one object that holds every number of the set-up.

The crystal model, the frame renderer, the `opmon simulate` command and the simulated
ophyd-async devices all read their geometry, scan and flux from one `SxdmSetup`, so they
cannot disagree about where a Bragg peak lands.

Choices (see the module docstrings of `crystal` and `render` for the physics):

* 10 keV, Maxipix 512 × 512 × 55 µm at 1.6 m (seed 000).
* ``nu = 0`` and ``delta = 2θ(d_ref)`` with ``d_ref = 2.0296 Å``, the middle of the (400)
  spacings met on a full first charge (2.0409 → 2.0184 Å); the direct beam pixel is the
  detector centre (256, 256), so the Bragg peak sits within ±105 rows of the centre over
  the whole charge (a fixed ``delta`` for d = 2.0409 Å would push charged peaks ~210 rows
  off-centre).
* The crystal is oriented so that (400) is at Bragg for ``d_ref`` at ``eta = 19°`` (the
  paper's incidence): its Q is tilted 1.2° from the sample normal, in the x–z plane.
* ``maxipix_2x2()``: the real 516 × 516 Maxipix, 2 × 2 chips of 256 pixels with 4 gap
  rows and columns between them (ESRF LImA's Maxipix reconstruction inserts them; here they
  read 0 and are in the detector mask), direct beam at (258, 258).
* Rocking scan: 30 angles; ``SxdmSetup`` keeps a compact 0.04° step at 19° (±0.6° holds
  every peak of a whole charge, with tilts up to 0.25°, ≥ 4σ inside the ends, so the
  compact-peak tests' centres are never truncated). The paper's 0.016° step (0.48° range)
  cannot hold a whole charge: ``opmon simulate`` in paper mode uses it centred on the
  imaged phase, with the detector window on one phase (`crystal`), as the paper did.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError
from opmon.simulators.optics import two_theta_deg, wavelength_angstrom, wavenumber

D_REF_ANGSTROM = 2.0296
ORDERS = ("eta-outer", "point-outer")
CHIP = 256  # Medipix2/Timepix chip side in pixels
MAXIPIX_GAP = 4  # a 2 x 2 Maxipix reads out 2 * 256 + 4 = 516 pixels a side (LImA's reconstruction)


@dataclass
class SxdmSetup:
    """Geometry, scan and flux of the simulated SXDM experiment (lengths in m, angles in deg).

    ``roi`` is ``(r0, r1, c0, c1)`` in full-detector pixels (half-open); frames then have
    shape ``(r1 - r0, c1 - c0)``. ``beam_center`` stays in full-detector pixels; files and
    processors get `frame_beam_center`, shifted into the cropped frame.
    """

    energy_ev: float = 10000.0
    distance_m: float = 1.6
    pixel_size_m: float = 55e-6
    detector_shape: tuple[int, int] = (512, 512)
    beam_center: tuple[float, float] = (256.0, 256.0)
    roi: tuple[int, int, int, int] | None = None
    nu: float = 0.0
    delta: float = field(default_factory=lambda: two_theta_deg(D_REF_ANGSTROM, 10000.0))
    phi: float = 0.0
    eta_center: float = 19.0
    eta_step: float = 0.04
    n_angles: int = 30
    map_shape: tuple[int, int] = (60, 60)
    map_step_um: float = 0.1
    # peak and flux
    peak_sigma_q: float = 1.25e-3  # Å⁻¹, Gaussian sigma of the 3D Bragg peak (isotropic)
    peak_counts: float = 2.0e4  # expected Bragg counts summed over all frames of the brightest map pixel
    background_rate: float = 1.0e-3  # diffuse counts per pixel per frame
    chip_gap: int = 0  # pixels between the 2 x 2 chips of 256 (4 on a 516 x 516 Maxipix), read as 0
    n_dead: int = 12
    n_hot: int = 6
    hot_mean_counts: float = 5.0e3

    def __post_init__(self) -> None:
        self.detector_shape = (int(self.detector_shape[0]), int(self.detector_shape[1]))
        self.map_shape = (int(self.map_shape[0]), int(self.map_shape[1]))
        self.beam_center = (float(self.beam_center[0]), float(self.beam_center[1]))
        for name in ("energy_ev", "distance_m", "pixel_size_m", "eta_step", "map_step_um", "peak_sigma_q", "peak_counts"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"SxdmSetup.{name}: must be a positive number, got {value!r}")
        if self.n_angles < 1:
            raise ConfigError(f"SxdmSetup.n_angles: must be >= 1, got {self.n_angles!r}")
        if min(self.map_shape) < 1:
            raise ConfigError(f"SxdmSetup.map_shape: must be positive, got {self.map_shape!r}")
        if self.background_rate < 0:
            raise ConfigError(f"SxdmSetup.background_rate: must be >= 0, got {self.background_rate!r}")
        if self.roi is not None:
            r0, r1, c0, c1 = (int(v) for v in self.roi)
            rows, cols = self.detector_shape
            if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
                raise ConfigError(f"SxdmSetup.roi: {self.roi!r} is not a non-empty window of the {rows}x{cols} detector")
            self.roi = (r0, r1, c0, c1)

        if self.chip_gap < 0 or (self.chip_gap and min(self.detector_shape) < 2 * CHIP + self.chip_gap):
            raise ConfigError(f"SxdmSetup.chip_gap: {self.chip_gap!r} does not fit 2 x 2 chips of {CHIP} "
                              f"on a {self.detector_shape} detector")

    # ---- derived quantities -------------------------------------------------------------
    @property
    def wavelength(self) -> float:
        """Wavelength in Å."""
        return wavelength_angstrom(self.energy_ev)

    @property
    def k(self) -> float:
        """|k| = 2π/λ in Å⁻¹."""
        return wavenumber(self.energy_ev)

    @property
    def roi_window(self) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)`` of the rendered window (the whole detector without ROI)."""
        if self.roi is None:
            return (0, self.detector_shape[0], 0, self.detector_shape[1])
        return self.roi

    @property
    def frame_shape(self) -> tuple[int, int]:
        """Shape of a rendered frame (the ROI if one is set)."""
        r0, r1, c0, c1 = self.roi_window
        return (r1 - r0, c1 - c0)

    @property
    def frame_beam_center(self) -> tuple[float, float]:
        """Direct-beam pixel (row0, col0) in the coordinates of a rendered (cropped) frame.

        This is what a raw file stores as ``beam_center_y/x``: readers index pixels of the
        frames they get, so an ROI shifts the centre (it may then lie outside the frame).
        """
        r0, _, c0, _ = self.roi_window
        return (self.beam_center[0] - r0, self.beam_center[1] - c0)

    @property
    def gap_rows(self) -> range:
        """Full-detector rows between the chips (empty without gaps)."""
        return range(CHIP, CHIP + self.chip_gap)

    @property
    def gap_cols(self) -> range:
        """Full-detector columns between the chips (empty without gaps)."""
        return range(CHIP, CHIP + self.chip_gap)

    @property
    def n_points(self) -> int:
        """Number of map pixels."""
        return self.map_shape[0] * self.map_shape[1]

    @property
    def n_frames(self) -> int:
        """Frames in one map."""
        return self.n_points * self.n_angles

    @property
    def pixel_dq(self) -> float:
        """q step (Å⁻¹) between neighbouring detector pixels near the detector axis."""
        return self.k * self.pixel_size_m / self.distance_m

    def eta_values(self, center: float | None = None) -> npt.NDArray[np.float64]:
        """The rocking angles of one map (deg), centred on ``center`` (default ``eta_center``)."""
        c = self.eta_center if center is None else float(center)
        return c + (np.arange(self.n_angles, dtype=np.float64) - 0.5 * (self.n_angles - 1)) * self.eta_step

    def scan(self, order: str = "eta-outer", center: float | None = None) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Frame order of a map as ``(map_index, eta)``, each of length ``n_frames``.

        ``"eta-outer"`` takes one eta at a time over the whole map (as ID01 does);
        ``"point-outer"`` takes all angles at one map point before moving on.
        """
        etas = self.eta_values(center)
        points = np.arange(self.n_points, dtype=np.int64)
        if order == "eta-outer":
            return np.tile(points, self.n_angles), np.repeat(etas, self.n_points)
        if order == "point-outer":
            return np.repeat(points, self.n_angles), np.tile(etas, self.n_points)
        raise ConfigError(f"scan order {order!r}: expected one of {', '.join(ORDERS)}")

    def map_positions_um(self, map_index: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Piezo (x, y) in µm of map pixels given by row-major index."""
        idx = np.asarray(map_index, dtype=np.int64)
        iy, ix = np.divmod(idx, self.map_shape[1])
        return ix * self.map_step_um, iy * self.map_step_um


def maxipix_2x2(**kwargs: object) -> SxdmSetup:
    """An `SxdmSetup` with the 516 × 516 Maxipix (2 × 2 chips of 256 and their gap pixels)."""
    side = 2 * CHIP + MAXIPIX_GAP
    values: dict[str, object] = dict(detector_shape=(side, side), beam_center=(side / 2, side / 2),
                                     chip_gap=MAXIPIX_GAP)
    values.update(kwargs)
    return SxdmSetup(**values)  # type: ignore[arg-type]
