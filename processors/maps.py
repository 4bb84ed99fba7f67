"""Per-pixel maps derived from the accumulated moments (SCIENCE.md §3, FORMATS.md).

Pure numpy on (ny, nx) arrays: runs once per map (or a few times a second for a partial
map), so clarity beats speed here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import EmptyMapError
from opmon.streaming.archive.maps_file import MapsArrays, read_maps

if TYPE_CHECKING:
    from opmon.processors.peak_fit import PeakFitMaps

MASK_FRACTION = 0.2  # pixels below 20 % of the map's reference intensity are invalid
#: the reference is the k-th largest Σ I of the pixels seen, k = 1 % of them but at least MASK_RANK, so one or
#: two outlier pixels (a flash, a powder spot at one map point) cannot mask the particle
MASK_RANK = 3
#: the rule above in words, for figures and the dashboard (they state which pixels are masked and why)
#: ... and a pixel's Σ I must stand this many Poisson sigmas above the background subtracted from it
#: (a map whose imaged reflection has faded is otherwise "valid" noise at 20 % of a noise bright level)
MASK_SIGNIFICANCE = 5.0
MASK_RULE = (f"masked (grey): Σ I below {MASK_FRACTION:.0%} of the map's bright level "
             f"(its {MASK_RANK}rd largest Σ I, or 99th percentile), or less than {MASK_SIGNIFICANCE:g} σ "
             f"above the background")

F64 = npt.NDArray[np.float64]

#: bits of the per-pixel `flags` map (uint8): why a pixel's values deserve caution, masked or not
FLAG_EDGE = 1              # the peak is cut by the ROI or the detector edge
FLAG_LOW_COUNTS = 2        # Σ I below LOW_COUNTS counts: the centre of mass is noisy
FLAG_ROCKING = 4           # the peak is cut by the rocking range: its centre is pulled inward
LOW_COUNTS = 100.0         # counts (after background) below which FLAG_LOW_COUNTS is set
ROCKING_EDGE_STEPS = 1.0   # FLAG_ROCKING: intensity-weighted eta centre within this many steps of an end
ROCKING_EDGE_WIDTHS = 1.5  # ... or within this many rocking-curve widths (σ of the intensity over eta)
FLAGS_DESCRIPTION = (f"bit field: {FLAG_EDGE} = peak cut by the ROI or detector edge, {FLAG_LOW_COUNTS} = Σ I below "
                     f"{LOW_COUNTS:g} counts, {FLAG_ROCKING} = peak cut by the rocking range (eta centre within "
                     f"{ROCKING_EDGE_STEPS:g} step or {ROCKING_EDGE_WIDTHS:g} rocking widths of an end)")
FLAG_NAMES = {FLAG_EDGE: "roi_or_detector_edge", FLAG_LOW_COUNTS: "low_counts", FLAG_ROCKING: "rocking_range"}


@dataclass
class MapResult:
    """The maps of FORMATS.md, plus bookkeeping the processor knows (frames per pixel)."""

    d_spacing: F64
    tilt_altitude: F64
    tilt_azimuth: F64
    intensity: F64
    peak_width: F64
    q: F64
    mask: npt.NDArray[np.uint8]
    mean_q: F64
    frames: npt.NDArray[np.int64]
    background: float = 0.0
    eta_scans: F64 | None = None     # eta (deg) of each eta scan, when the scans were registered ...
    eta_shifts: F64 | None = None    # ... and the (n, 2) (dy, dx) drift, map pixels, each was moved back by
    flags: npt.NDArray[np.uint8] | None = None
    fit: PeakFitMaps | None = None   # the optional per-pixel peak fit (`--peak-fit gauss`), beside these maps

    def __post_init__(self) -> None:
        if self.flags is None:      # results and files from before the flags: nothing flagged
            self.flags = np.zeros(self.d_spacing.shape, dtype=np.uint8)

    @property
    def shape(self) -> tuple[int, int]:
        return self.d_spacing.shape  # type: ignore[return-value]

    def valid_d(self) -> F64:
        """d of valid pixels, for histograms and statistics."""
        return self.d_spacing[self.mask.astype(bool)]

    def d_histogram(self, bins: int | F64 = 100, d_range: tuple[float, float] | None = None) -> tuple[F64, F64]:
        """Histogram of d over valid pixels: (counts, edges). Two phases show as two peaks."""
        counts, edges = np.histogram(self.valid_d(), bins=bins, range=d_range)
        return counts.astype(np.float64), edges

    def arrays(self) -> dict[str, np.ndarray]:
        """All arrays by FORMATS.md name (for files and messages)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], background: float = 0.0) -> MapResult:
        """The inverse of `arrays` (e.g. of a decoded map message); names it does not know are dropped,
        and missing frames per pixel count as none."""
        known = {k: v for k, v in arrays.items() if k in cls.__dataclass_fields__ and k != "background"}
        known.setdefault("frames", np.zeros(arrays["d_spacing"].shape, dtype=np.int64))
        if "flags" in known:
            known["flags"] = np.asarray(known["flags"], dtype=np.uint8)
        return cls(**known, background=float(background))

    def maps_arrays(self) -> MapsArrays:
        """The arrays and background as the archive's maps layout takes them."""
        return MapsArrays(self.arrays(), self.background)


def read_map_result(parent: h5py.Group) -> MapResult:
    """``parent/maps`` of a maps file as a MapResult (checked: see `maps_file.read_maps`)."""
    maps = read_maps(parent)
    return MapResult.from_arrays(maps.arrays, maps.background)


def derive_maps(sum_i: F64, sum_iq: F64, sum_iqq: F64, frames: npt.NDArray[np.int64], background: float = 0.0,
                require_signal: bool = True, background_counts: F64 | None = None,
                sharp_i: F64 | None = None) -> MapResult:
    """Turn background-corrected moment sums of every map pixel into the maps.

    Parameters
    ----------
    sum_i : (ny, nx) Σ I.
    sum_iq : (ny, nx, 3) Σ I·q, sample frame, Å⁻¹.
    sum_iqq : (ny, nx, 3, 3) Σ I·q⊗q.
    frames : (ny, nx) number of frames seen per pixel.
    background : background rate already subtracted (counts per pixel per frame), recorded only.
    require_signal : raise EmptyMapError when no pixel has intensity (final maps); partial
        maps early in a scan pass False and get all-NaN maps instead.
    background_counts : (ny, nx) background counts subtracted from each pixel's Σ I, when known: a
        valid pixel's Σ I must then stand MASK_SIGNIFICANCE Poisson sigmas above it,
        Σ I ≥ k·sqrt(Σ I + background).
    sharp_i : (ny, nx) Σ I of eta scans registered without the blur of moving them back
        (`scan_combine.sharp_intensity`): when given, it decides the mask and is the intensity map;
        the moments' own Σ I (`sum_i`, blurred a little) stays what q and the width are taken from.
    """
    shape = sum_i.shape
    s0 = np.asarray(sum_i, dtype=np.float64)
    level = s0 if sharp_i is None else np.asarray(sharp_i, dtype=np.float64).reshape(shape)
    peak = float(np.nanmax(level)) if level.size else 0.0
    if not peak > 0:
        if require_signal:
            raise EmptyMapError(f"map of shape {shape} holds no intensity above background (max Σ I = {peak:g}); nothing to derive")
        valid = np.zeros(shape, dtype=bool)
    else:
        valid = (level >= MASK_FRACTION * bright_level(level, np.asarray(frames).reshape(shape) > 0)) & (level > 0) & (s0 > 0)
        if background_counts is not None:
            noise = np.clip(level + np.asarray(background_counts, dtype=np.float64).reshape(shape), 0.0, None)
            valid &= level >= MASK_SIGNIFICANCE * np.sqrt(noise)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = sum_iq / s0[..., None]
        second = sum_iqq / s0[..., None, None] - q[..., :, None] * q[..., None, :]
        width = np.sqrt(np.clip(np.trace(second, axis1=-2, axis2=-1), 0.0, None))
        qnorm = np.linalg.norm(q, axis=-1)
        d = 2.0 * np.pi / qnorm
    q = np.where(valid[..., None], q, np.nan)
    if valid.any():
        mean_q = q[valid].mean(axis=0)
        altitude, azimuth = tilt_angles(q, mean_q)
    else:
        mean_q = np.full(3, np.nan)
        altitude = azimuth = np.full(shape, np.nan)
    nan = np.nan
    return MapResult(
        d_spacing=np.where(valid, d, nan), tilt_altitude=np.where(valid, altitude, nan),
        tilt_azimuth=np.where(valid, azimuth, nan), intensity=level.copy(), peak_width=np.where(valid, width, nan),
        q=q, mask=valid.astype(np.uint8), mean_q=mean_q, frames=np.asarray(frames, dtype=np.int64).reshape(shape),
        background=float(background),
    )


def map_flags(sum_i: F64, eta_sum_i: F64, eta_sum_i2: F64, eta_sum: F64, eta_sum2: F64,
              frames: npt.NDArray[np.int64], low_counts: float = LOW_COUNTS) -> npt.NDArray[np.uint8]:
    """FLAG_LOW_COUNTS and FLAG_ROCKING of every map pixel with frames, from additive sums.

    A pixel's eta scan is known by Σ η, Σ η² and its frames n: for n evenly spaced steps its ends
    are mean ± std·sqrt(3(n−1)/(n+1)) and its step 2·half-range/(n−1). The rocking curve's centre
    and width are Σ I·η / Σ I and the spread from Σ I·η² (background-subtracted sums). A peak whose
    centre lies within ROCKING_EDGE_STEPS steps or ROCKING_EDGE_WIDTHS widths of an end is cut
    there, and its centre of mass pulled inward (a peak cut at its maximum has its centre 0.8
    widths inside the end, about 1.3 of the widths measured from what is left).
    """
    n = np.asarray(frames, dtype=np.float64)
    flags = np.zeros(sum_i.shape, dtype=np.uint8)
    seen = n > 0
    flags[seen & ~(sum_i >= low_counts)] |= FLAG_LOW_COUNTS
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = eta_sum / n
        std = np.sqrt(np.clip(eta_sum2 / n - mean * mean, 0.0, None))
        half = std * np.sqrt(3.0 * (n - 1.0) / (n + 1.0))
        step = 2.0 * half / (n - 1.0)
        centre = eta_sum_i / sum_i
        width = np.sqrt(np.clip(eta_sum_i2 / sum_i - centre * centre, 0.0, None))
        inside = half - np.abs(centre - mean)
        near_end = inside < np.maximum(ROCKING_EDGE_STEPS * step, ROCKING_EDGE_WIDTHS * width)
    flags[seen & (n >= 2) & (step > 0) & (sum_i > 0) & near_end] |= FLAG_ROCKING
    return flags


def bright_level(s0: F64, seen: npt.NDArray[np.bool_]) -> float:
    """The map's bright level for the mask rule: the k-th largest Σ I among the pixels seen
    (k = 1 % of them, at least MASK_RANK, at most all), so a few outliers do not set it."""
    values = s0[seen & np.isfinite(s0)] if seen.any() else s0[np.isfinite(s0)]
    k = min(values.size, max(MASK_RANK, values.size // 100))
    return float(np.partition(values, values.size - k)[values.size - k])


def tilt_angles(q: F64, mean_q: F64) -> tuple[F64, F64]:
    """Tilt altitude and azimuth (deg) of each Q relative to the mean direction u = Q̄/|Q̄|.

    Altitude uses atan2(|Q×u|, Q·u), which keeps precision at the 1e-3 deg tilts of a
    pristine crystal where arccos of a dot product would not. Azimuth is measured in the
    plane normal to u from e1 = normalize(x̂ − (x̂·u)u) toward e2 = u × e1, in [0, 360).
    """
    u = mean_q / np.linalg.norm(mean_q)
    x_hat = np.array([1.0, 0.0, 0.0])
    e1 = x_hat - np.dot(x_hat, u) * u
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    along = q @ u
    across = np.linalg.norm(np.cross(q, u), axis=-1)
    altitude = np.degrees(np.arctan2(across, along))
    azimuth = np.mod(np.degrees(np.arctan2(q @ e2, q @ e1)), 360.0)
    azimuth = np.where(azimuth >= 360.0, 0.0, azimuth)
    return altitude, azimuth
