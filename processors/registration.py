"""Sub-pixel registration of intensity maps: how far the sample moved between two images of it.

`register` is the one public primitive (used for the eta scans of a map, and for maps against
each other: `opmon.processors.drift_tracker`): scikit-image's `phase_cross_correlation` (upsampled DFT, Guizar-Sicairos 2008) on
images made comparable first (negative values clipped, each scaled to unit sum, so a scan that
sees less of the rocking curve weighs the same). Shifts are *displacements*, (dy, dx) in map
pixels: an image that shows the reference's content moved by +1 row gets (1, 0), the sign of
the simulator's truth (`/entry/truth/drift`). With ``pad=True`` the images are zero-padded to
twice their size first: a small map (8-60 pixels a side) that the particle fills would otherwise
correlate the particle's edge with the opposite edge through the FFT's wrap-around (median error
0.05 instead of 0.19 map pixel on simulated 8 x 8 maps, maps to maps).

`register_eta_scans` finds the drift between the eta scans of one map: each scan against the
Σ I-weighted sum of all scans moved back by the shifts found so far, for a few rounds (XSOCS
registers each scan against a reference in the same spirit). Scans with too little signal
(< `MIN_SIGNAL` of the brightest) take the shift of the nearest scan that has it: they add
nothing to the moments either way. The shifts are given in the frame where their Σ I-weighted
mean is zero (where the particle sat, on average, while the map was taken): no single scan's
frame can be told from the data when the first scans of the rocking curve see nothing.

Limit (measured, see the stop-20 report): this finds the drift to ~0.1 map pixel when every
eta scan shows the same particle, scaled. On a strained or bent particle the part in Bragg
condition moves across it with eta (0.3-0.5 map pixel per 0.016° step on the simulator's
paper maps), and intensity cross-correlation cannot tell that from drift: a linear drift and
a linear Bragg-angle gradient give the same scans except at the particle's edges. Tried and
no better there: scans against their neighbours' geometric mean (exact for Gaussian rocking
curves but blind to that linear mode), saturated or edge-filtered (Sobel, Laplace, DoG)
images, the per-scan q-centroid maps. Hence `opmon process --register off` by default and a
manual override (`ManualShifts`).

`register_eta_scans_by_tilt` (``--register tilt``) registers what moves WITH the sample and not
with eta: each scan's map of the centroid q's component along the eta axis (the lattice tilt
about the rocking direction, `rocking_free_field`). Turning eta moves a pixel's centroid
perpendicular to that axis only, so the component is the same in every scan (simulator's drift
maps: 7.6e-5 1/Å rms within a pixel over the registered scans, 2.6e-3 1/Å across the
particle). The q-centroid maps tried before took the whole centroid, whose rocking component
follows eta as the intensity does. Each scan is fitted onto the weighted mean field of the
other scans (least squares over its pixels with counts, a penalty for those that land off the
others' support), from a whole-pixel search then a halving pattern search, for a few rounds.
A particle of one tilt has no such map (`tilt_contrast` ~1 against 10-40 on bent ones): then
the intensity maps are registered instead, logged (DEBUG: `opmon -v`; since stop 24 registration is the default and a still map declining is the normal outcome).

Measured (`opmon bench truth --cases drift`, paper particles 24 x 24, seeds 4-8, scans with
≥ 2 % of the brightest scan's Σ I): tilt's shift error 0.10-0.25 map pixel Σ I-weighted mean
(intensity ``auto``: 0.64-2.2), the largest per scan 0.34-2.3 (the faint first and last scans;
``auto``: 2.0-4.5); the maps: median |Δd| 4-8e-6 Å (true shifts: 3-5e-6, off: 1.3-4.2e-5),
tilt 0.0006-0.0023° (true: 0.0006-0.0025, off: 0.0012-0.0032), mask 91-96 % (true: 93-97,
off: 89-97). What is left between tilt and the truth is mostly where a scan's bright band
mixes a pixel's neighbours by their counts (a small pull of each scan's map toward its band).
The 0.2-pixel goal is met on most scans, not on all, so `off` stays the default.

Stop 22: the scans' tilt maps are each the sample's blurred by the scan's own sub-pixel place (a
drifted beam sees its pixels' neighbours mixed: half a pixel off mixes two, a whole pixel none),
and the mean of the others moved back (`resample`) is blurred again: the fit was pulled by the
difference (from the TRUE shifts' mean, the brightest scan of seed 4 landed 0.36 pixel off; the
residual ±2e-4 1/Å along the tilt ramp against noise ~1e-5). So the shifts found as above are
refined (`_refined`, up to `SHARP_ROUNDS`): each scan is fitted onto the sharp field the other
scans imply, solved by least squares through each one's bilinear move (`_sharp_field`), the fit
moving it as the data were moved. Per-scan sums of the truth harness's ``drift`` maps (sizes 24
and 32, seeds 4-6; "≥ 10 %": scans with that share of the brightest scan's true Σ I): Σ I-weighted
shift error 0.09-0.25 → 0.02-0.09 map pixel, the largest over the ≥ 10 % scans 0.16-0.58 →
0.04-0.37 (within 0.2 on 4 of the 6 maps, 3 before); 24 x 24 seed 4 maps: median |Δd| 8.3e-6 →
5.2e-6 Å, tilt 0.0017 → 0.0014°, mask 91.2 → 93.2 %; 32 x 32: mask 90.6 → 95.7 %. Cost: ~1-2 s
more per 24-32 pixel map, ~23 s more on a 96 x 96 one (loaded machine; stop 24 made the whole tilt
registration 3-5x cheaper with the same shifts to the bit: `_LeaveOneOut`, `_pattern_search`). What is left are the
scans on the flanks of the rocking curve (10-25 % of the brightest: a band of the particle lit).
The cost's curvature gives 0.02-0.06 pixel per bright scan, far below the errors before the
refinement: it would not have flagged them, so no per-scan uncertainty is reported. Tried before
the refinement, none better on every map (each moved the weighted error by up to ±0.12 pixel):
the others' field interpolated count-weighted with a soft support, the scan's own intensity
mixing the reference, a free per-scan offset of the field, templates of the eta neighbours (±1:
up to 6x worse; ±3: better on 5 of 6 maps, but the strained particle of
tests/processors/test_registration_strained.py fails, its end scans having neighbours on one side
only), `MIN_SIGNAL` 0.1, `FIELD_FLOOR` 0.05-0.1, `FIELD_SUPPORT` 0.25-1.
On ``all`` tilt falls back to the intensity maps (contrast 1.3-3, even when only the true ≥ 10 %
scans are given) and is 1-3 pixels off: the simulator's powder-arc discs stay where they are on
the map while the particle drifts (`simulators.render` tests a spot's disc against the undrifted
map pixel), so the ``all`` scans hold a static pattern that locks the fit near zero shift; with
``--powder-spots auto`` the fields of the bright scans still disagree by 0.4-0.9 pixel pairwise.
`off` stays the default (the ≥ 10 % scans are not all within 0.2 pixel, and ``all`` fails).

Stop 22, broad peaks (`leak_free_axis`): on the truth harness's focused-beam maps tilt registration
was 1.65 map pixels off (weighted mean; worst scan 5.6), worse than none. Not the detector window's
cut, as first thought: the auto-ROI held those peaks whole (their centroids ≥ 5 sd inside its edges;
the truncated-normal inversion of each scan's slice, `roi_cut`, moved them by < 0.01 pixel and
changed nothing), but the anisotropic peak's slice centroid moves partly along the eta axis as eta
turns (each scan's field offset by up to ±2e-3 1/Å, linear in eta, against 2.4e-3 across the
particle). The field is now taken along the eta axis less its component along the centroids'
scan-to-scan motion. `opmon bench truth --size 24 --register tilt` (seed 4): drift+focused-beam
1.65/5.63 → 0.23/0.40 pixel (mean/worst), median |Δd| 1.0e-4 → 6.1e-6 Å, tilt 0.0097 → 0.0015°,
mask 73 → 93 % (true shifts: 5.0e-6 Å, 0.0014°, 93 %); drift+ring 1.63/5.7 → 0.27/0.38; drift
unchanged (0.07/0.56: its leak 0.004 < `MIN_LEAK`, the axis kept). Seeds 6 and 7: drift+focused-beam
0.84/3.21 → 0.11/0.19 and 1.02/2.50 → 0.12/0.44; seed 5 leaks less than `MIN_LEAK` (0.18/0.49 either way). ``all`` is unchanged (1.33/3.46):
its fields scatter between scans 1-3 times their spread over the particle with the true shifts
(contrast 0.4, the intensity fallback), which no axis fixes (tried: the least-moving direction, the
radial |q|, floors 0.02-0.3).

Stop 23, why ``all`` failed and why maps without drift got shifts (`opmon bench truth --size 24 --register
tilt --process "--powder-spots auto"`, seed 4): the broad rocking curves of ``all`` light 15 of its 30 scans with
2-10 % of the brightest scan's Σ I, on 6-50 lit pixels whose noisy tilt maps fit anywhere: 4-10 map pixel shifts
on the faint scans, a scatter that sank the tilt contrast to 4.3-4.7 (< 5), so the intensity maps were registered
instead, which on these strained particles invent 1.3-3.6 pixels even without drift (the moving lit band).
With the true shifts the bright scans agree (contrast 6.0 over the scans with ≥ 10 %). Now: scans with
< `FIT_SIGNAL` of the brightest Σ I are fitted as before but keep their shift only within `FAINT_REACH` of the
nearest brighter scan's (`_faint_checked`); the contrast is judged on the brighter scans; the shifts are kept only
if the scans' tilt maps fit each other `MIN_GAIN` times better moved than unmoved (`field_misfit`, over the pixels
that land on the others' support: drift maps 24/32 px seeds 4-7: 2.5-133, ``all`` 3.0; maps without drift 1.00-1.25,
``all`` without its drift 1.25: declined, zero shifts and a warning); the intensity fallback is kept only if the
scans moved back fit each other `INTENSITY_GAIN` times better than unmoved (`registered_intensity`: one image
drifting 19.5, the simulator's strained maps 1.4-2.8: declined). ``all``: shift error 1.25 → 0.34 map pixel
weighted mean, of which 0.30 is a common offset of the frame (the simulator centres its drift on the compact peak's rocking weights, narrower than the focused beam's real Σ I
per scan; the true shifts recentred on the measured Σ I still give mask 94.1 %): 0.15 with it removed. The
``drift`` maps (sizes 24/32, seeds 4-7) keep their errors (scans with ≥ 10 %: within 0.2 pixel on 6 of 8). A
declined registration (no scan moved) makes the map `--register off` makes (`EtaScanAccumulator._unmoved`).

Stop 23, after the honest powder arcs (``all`` declined again; same bench, seeds 4-7): the tilt contrast of ``all`` fell
to 3.1-4.3 (4.1 even with the true shifts: the scatter is the flank scans' and the particle edge's faint pixels, the
top 5 % of pixel-scans holding 2/3 of it), so the intensity fallback ran and declined (gain 2.3-3.0 < 5), while the
tilt fit itself was 0.23-0.38 map pixel off (weighted mean). And the decline test could not tell drift from none on
``all``: over every lit pixel any fit gains 1.3-1.4 from the faint pixels' noisy fields (``all`` without drift
1.32-1.43, seed 6 with drift 1.39). Now the decline test is measured over the pixels with ≥ `GAIN_FLOOR` of the
brightest count (drift-free maps: every single effect, none, low-signal, ``all`` without drift, seeds 4-7: 0.93-1.21;
``all`` with drift 1.68-6.3; ``drift`` 2.7-200), and a tilt contrast between `LOW_TILT_CONTRAST` and
`MIN_TILT_CONTRAST` registers on the tilt maps when the shifts pass it. ``all`` seed 4: d 8.5e-5 → 3.2e-5 Å, within
93.0 → 100 %, tilt 0.0070 → 0.0034°, mask 94.1 → 95.5 %. Seed 5 stays declined: its tilt map varies over the particle
about as much as its scatter (contrast 1.1, spread 4.5e-4 1/Å against 2.1e-3 on seed 4; gain 1.02 even with the true
shifts): nothing tells its drift from noise. Limit: on synthetic strained particles whose every scan carries a strong
tilt pattern of its own (tests/processors/test_registration_strained.py, amplitudes 1-1.5e-3 1/Å), contrasts 3.7-4.5
can pass the gain test with shifts worse than none (1.2-2.3 against 1.1 map pixels). With the auto ROI's background
plane (s23-arcsd-roiplane, measured merged): ``all`` seeds 4/6/7 contrast 5.6-6.8 and gain 6.3/3.2/4.0 (1.8-3.0 over
every lit pixel), without drift ≤ 1.14 (1.23-1.27): registered either way, the rules here keep the margin; seed 5
contrast 1.9, gain 1.1, declined.

Stop 24: with ``--register tilt`` the shifts found here are refined by a model of the sample
(`registration_model.register_eta_scans_by_model`, called from `eta_scans`): each pixel's rocking curve and each
scan's shift fitted together, which places the flank scans by where their band must be (``drift`` maps, sizes 24/32,
seeds 4-7: every scan with ≥ 10 % of the brightest within 0.09 map pixel, was 0.12-0.60). Declined, the shifts here
stand (``all``: a Gaussian curve per pixel does not describe its focused-beam peaks).
"""
from __future__ import annotations

import logging
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError
from opmon.processors.maps import bright_level

F64 = npt.NDArray[np.float64]

UPSAMPLE = 50          # 1/50 map pixel: well below the 0.2 pixel the maps need
MIN_SIGNAL = 0.02      # scans with less Σ I than this share of the brightest scan's are not registered
ROUNDS = 6             # rounds of registration against the registered sum at most ...
SETTLED_PX = 0.01      # ... or until no shift changes by more than this
FIELD_FLOOR = 0.02     # tilt registration: pixels below this share of the brightest (any scan) carry no centroid
FIELD_SUPPORT = 0.5    # ... the others' mean field is defined where their weight reaches this share of one lit pixel's
FIELD_SPAN = 4         # ... whole-pixel search over +-this many map pixels before the sub-pixel refinement
FIELD_ROUNDS = 8       # ... rounds against the other scans' registered field at most
SHARP_ROUNDS = 8       # ... rounds of the refinement against the sharp field the other scans imply (`_sharp_field`)
SHARP_SMOOTH = 1e-3    # ... its smoothness term, per unit of the median lit pixel's weight: ties pixels no scan sees
MIN_LEAK = 0.1         # ... the eta axis's share along the centroids' motion below which it is kept (`leak_free_axis`)
MIN_TILT_CONTRAST = 5.0  # ... the tilt map's spread over the particle / its scatter between registered scans,
                         # below which it cannot register (measured: 0.8 on a particle of one tilt, 10-40 bent) ...
LOW_TILT_CONTRAST = 2.5  # ... unless it is at least this and its shifts pass `MIN_GAIN` (``all`` seeds 4/6/7: 4.2/4.3/3.1;
                         # a particle of one tilt 0.5)
FIT_SIGNAL = 0.1       # ... scans with less Σ I than this share of the brightest: their fit alone is not trusted
                         # (few lit pixels, noisy fields: 4-10 pixel fits on `all`), see `FAINT_REACH`
FAINT_REACH = 1.5      # ... a fainter scan keeps its fitted shift only within this many map pixels of the nearest fitted one's
MIN_GAIN = 1.6         # ... the shifts are kept only if the scans' misfit unmoved is this many times their misfit moved ...
GAIN_FLOOR = 0.2       # ... over their pixels with at least this share of the brightest count (the faint pixels' noisy
                         # fields gain 1.3-1.4 from any fit: ``all`` without drift at 0.02; at 0.2 drift-free maps 0.93-1.21,
                         # ``all`` with drift 1.68-6.3 but seed 5, whose tilt map has no contrast, 1.02)
OUTLIER_RATIO = 2.0    # the brightest scan pixel is an outlier (a flash) when over this many times the bright level
MIN_OVERLAP = 0.5      # ... and only if, moved, their bright pixels land on each other's support at least this share as
                         # much as unmoved (`field_fit`)
INTENSITY_GAIN = 5.0   # the intensity fallback is kept only if the scans moved back fit each other this many times better
                         # than unmoved (`intensity_misfit`): one image drifting 19.5, strained particles without drift 1.4-2.8

log = logging.getLogger(__name__)


def comparable(image: npt.ArrayLike) -> F64:
    """An intensity map made comparable to others: finite, negative values (background
    over-subtracted) clipped to zero, scaled to unit sum (zero stays zero)."""
    a = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    a = np.clip(a, 0.0, None)
    total = a.sum()
    return a / total if total > 0 else a


def _padded(image: F64) -> F64:
    out = np.zeros((2 * image.shape[0], 2 * image.shape[1]))
    out[: image.shape[0], : image.shape[1]] = image
    return out


def has_intensity(image: npt.ArrayLike) -> bool:
    """Does the map hold anything to register (finite, positive Σ I somewhere)?"""
    return bool(comparable(image).sum() > 0)


def register(images: npt.ArrayLike, reference: npt.ArrayLike, upsample: int = UPSAMPLE, pad: bool = False) -> F64:
    """Displacement (dy, dx), map pixels, of each image relative to `reference`, sub-pixel.

    Parameters
    ----------
    images : (n, ny, nx) or one (ny, nx) intensity map (e.g. Σ I per map pixel).
    reference : (ny, nx) the image the shifts are measured from.
    upsample : sub-pixel precision is 1/upsample pixel.
    pad : zero-pad to twice the size first (no wrap-around; for maps the particle fills).

    Returns
    -------
    (n, 2) float array, or (2,) for one image: image ≈ reference moved by the shift (an image
    or reference without intensity gives (0, 0)). The images are not periodic: keep the
    object away from the edges by more than the shift, or pad them.
    """
    stack = np.asarray(images, dtype=np.float64)
    one = stack.ndim == 2
    stack = stack[None] if one else stack
    ref = comparable(reference)
    if stack.ndim != 3 or stack.shape[1:] != ref.shape:
        raise ConfigError(f"registration: images of shape {stack.shape[1:] if stack.ndim == 3 else stack.shape} do not match "
                         f"the reference's {ref.shape}")
    from skimage.registration import phase_cross_correlation   # scipy.fft and skimage: 0.26 s, only when registering

    shifts = np.zeros((stack.shape[0], 2))
    if pad:
        ref = _padded(ref)
    if ref.sum() > 0:
        for k, image in enumerate(stack):
            moving = _padded(comparable(image)) if pad else comparable(image)
            if moving.sum() > 0:
                found, _, _ = phase_cross_correlation(ref, moving, upsample_factor=upsample, normalization=None)
                shifts[k] = -np.asarray(found, dtype=np.float64)  # skimage: the shift that undoes the move
    return shifts[0] if one else shifts


def register_eta_scans(stack: npt.ArrayLike, upsample: int = UPSAMPLE) -> F64:
    """Drift (dy, dx), map pixels, of each eta scan of a map, from its intensity maps.

    Parameters
    ----------
    stack : (n_scans, ny, nx) Σ I per map pixel of each eta scan, in rocking (eta) order.

    Returns
    -------
    (n_scans, 2) displacements in the frame where their Σ I-weighted mean is zero. Each scan
    with signal is registered against the sum of all of them, each made comparable and weighted
    by its Σ I, moved back by the shifts found so far (a few rounds, until they settle).
    """
    scans, weight = _scans(stack)
    shifts = np.zeros((scans.shape[0], 2))
    if scans.shape[0] < 2 or not weight.max() > 0:
        return shifts
    signal = np.flatnonzero(weight >= MIN_SIGNAL * weight.max())
    for _ in range(ROUNDS):
        before = shifts.copy()
        reference = sum(weight[k] * comparable(resample(scans[k], shifts[k])) for k in signal)
        shifts[signal] = centred_shifts(register(scans[signal], reference, upsample), weight[signal])
        if np.abs(shifts - before).max() <= SETTLED_PX:
            break
    return filled_shifts(shifts, signal)


def _scans(stack: npt.ArrayLike) -> tuple[F64, F64]:
    """(n, ny, nx) Σ I per scan made finite and non-negative, and each scan's total."""
    scans = np.clip(np.nan_to_num(np.asarray(stack, dtype=np.float64)), 0.0, None)
    return scans, scans.sum(axis=(1, 2))


def centred_shifts(shifts: F64, weight: F64) -> F64:
    """`shifts` less their `weight`-weighted mean: the frame where the particle sat on average."""
    return shifts - (weight[:, None] * shifts).sum(axis=0) / weight.sum()


def filled_shifts(shifts: F64, signal: npt.NDArray[np.int64]) -> F64:
    """Scans without signal (not in `signal`) given the nearest registered scan's shift: they add
    nothing to the moments either way."""
    out = shifts.copy()
    for k in range(out.shape[0]):
        if k not in signal:
            out[k] = shifts[signal[np.argmin(np.abs(signal - k))]]
    return out


def resample(values: npt.ArrayLike, shift: npt.ArrayLike) -> F64:
    """Additive per-map-pixel sums (ny, nx, ...) moved by -shift: what each pixel of the
    reference frame holds when the sample sat `shift` (dy, dx) away. Each pixel's sums are split
    bilinearly over the four pixels around their new place (photons are conserved); what lands
    outside the grid is dropped (see `coverage`)."""
    a = np.asarray(values, dtype=np.float64)
    ny, nx = a.shape[:2]
    dy, dx = (float(v) for v in np.asarray(shift, dtype=np.float64).reshape(2))
    iy, fy = int(np.floor(-dy)), -dy - np.floor(-dy)
    ix, fx = int(np.floor(-dx)), -dx - np.floor(-dx)
    if a.ndim == 2:    # compiled: the registration rounds move every scan's maps each round (~500 calls a map)
        return _resampled_plane(np.ascontiguousarray(a), iy, fy, ix, fx)  # type: ignore[no-any-return]
    out = np.zeros_like(a)
    for oy, wy in ((iy, 1.0 - fy), (iy + 1, fy)):
        for ox, wx in ((ix, 1.0 - fx), (ix + 1, fx)):
            w = wy * wx
            if w == 0.0:
                continue
            src_y = slice(max(0, -oy), min(ny, ny - oy))
            src_x = slice(max(0, -ox), min(nx, nx - ox))
            dst_y = slice(max(0, oy), min(ny, ny + oy))
            dst_x = slice(max(0, ox), min(nx, nx + ox))
            if src_y.start < src_y.stop and src_x.start < src_x.stop:
                out[dst_y, dst_x] += w * a[src_y, src_x]
    return out


@numba.njit(cache=True, nogil=True)
def _resampled_plane(a: F64, iy: int, fy: float, ix: int, fx: float) -> F64:
    """`resample` of one (ny, nx) map: each pixel's value split over the four pixels at offsets (iy|iy+1, ix|ix+1) with
    weights (1-fy|fy) x (1-fx|fx), the four added in `resample`'s order (the same sums, bit for bit)."""
    ny, nx = a.shape
    out = np.zeros_like(a)
    for corner in range(4):
        oy, wy = (iy, 1.0 - fy) if corner < 2 else (iy + 1, fy)
        ox, wx = (ix, 1.0 - fx) if corner % 2 == 0 else (ix + 1, fx)
        w = wy * wx
        if w == 0.0:
            continue
        for y in range(max(0, -oy), min(ny, ny - oy)):
            for x in range(max(0, -ox), min(nx, nx - ox)):
                out[y + oy, x + ox] += w * a[y, x]
    return out


def coverage(map_shape: tuple[int, int], shifts: npt.ArrayLike, weights: npt.ArrayLike) -> F64:
    """(ny, nx) share, in [0, 1], of the scans' weight (e.g. Σ I per scan) whose frames cover each
    pixel of the reference frame: below 1 where a drifted scan never measured that place."""
    s = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    w = np.clip(np.asarray(weights, dtype=np.float64).reshape(-1), 0.0, None)
    total = w.sum()
    ones = np.ones(map_shape)
    covered = sum((wk * resample(ones, sk) for sk, wk in zip(s, w) if wk > 0), np.zeros(map_shape))
    return np.clip(covered / total, 0.0, 1.0) if total > 0 else ones


def eta_axis(phi_deg: float) -> F64:
    """The eta rotation axis in the sample frame of the accumulated q (eta about −y outer, phi about
    −z inner: `geometry.sample_matrix`): the q component along it is the lab's q_y, which turning
    eta does not change."""
    p = -np.deg2rad(phi_deg)
    return np.array([np.sin(p), np.cos(p), 0.0])


def leak_free_axis(s0: npt.ArrayLike, s1: npt.ArrayLike, phi_deg: float = 0.0, floor: float = FIELD_FLOOR) -> F64:
    """The eta axis less its component along the direction in which the pixels' centroids move from
    scan to scan (unit vector u: the principal axis of each pixel's centroids about their Σ I-weighted
    mean, pooled over the pixels with ≥ `floor` of the brightest count).

    Why: turning eta moves a slice through a pixel's peak along the rocking direction n, and the
    slice's centroid moves along Σn (Σ the peak's covariance in q): for a compact isotropic peak
    that is n, perpendicular to the eta axis, but a broad anisotropic (focused-beam) peak leaks
    part of it onto the eta axis, so each scan's field is offset by an amount linear in its eta
    (truth harness's drift+focused-beam: ±2e-3 1/Å between the end scans against 2.4e-3 across the
    particle) and the fit turns the offset into a shift along the tilt ramp (1.65 map pixels
    weighted mean, 5.6 the worst scan). The component of q along the eta axis with u projected out
    does not move with eta whatever the peak's shape; for an isotropic peak u ⟂ the eta axis and
    nothing changes. The sample's own tilt gradients and its drift also move the centroids
    between scans, and u leans toward the tilt ramp by their ratio (0.004 on the truth harness's
    drift map, 0.06 on the narrow rocking curves of tests/processors/test_registration_strained.py,
    where projecting that out costs 0.8 map pixel): below `MIN_LEAK` the eta axis is kept. Tried
    and worse: re-estimating u with the scans moved back by the shifts found (converges slowly,
    0.06 → 0.02 in four whole registrations), and the leak as a regression of the eta-axis
    component on the rocking one with a free offset per scan (biased by the same drift).
    """
    i0 = np.clip(np.nan_to_num(np.asarray(s0, dtype=np.float64)), 0.0, None)
    axis = eta_axis(phi_deg)
    if not i0.max() > 0:
        return axis
    w = np.where(i0 >= floor * i0.max(), i0, 0.0)
    q = np.nan_to_num(np.asarray(s1, dtype=np.float64)) / np.where(i0 > 0, i0, 1.0)[..., None]
    total = w.sum(axis=0)
    mean = (w[..., None] * q).sum(axis=0) / np.where(total > 0, total, 1.0)[..., None]
    dev = np.where((w > 0)[..., None], q - mean, 0.0)
    flat_w, flat_dev = w.reshape(-1), dev.reshape(-1, 3)
    scatter = (flat_w[:, None] * flat_dev).T @ flat_dev
    if not np.isfinite(scatter).all() or not scatter.any():
        return axis
    u = np.linalg.eigh(scatter)[1][:, -1]
    return axis - (axis @ u) * u if abs(axis @ u) >= MIN_LEAK else axis


def rocking_free_field(s0: npt.ArrayLike, s1: npt.ArrayLike, phi_deg: float = 0.0,
                       axis: npt.ArrayLike | None = None) -> F64:
    """(n, ny, nx) per-scan map of the centroid component that the rocking does not move.

    Parameters
    ----------
    s0 : (n, ny, nx) Σ I per map pixel of each eta scan.
    s1 : (n, ny, nx, 3) Σ I·q of the same (q in the sample frame, 1/Å).
    phi_deg : the map's phi (the eta axis in the sample frame depends on it).

    Turning eta moves a map pixel's centroid q along the eta axis × q only: the component along
    the eta axis (the lattice tilt about the rocking direction) belongs to the sample and moves
    only with it. Pixels without counts get 0 (their weight is zero). `axis` replaces the eta axis
    (e.g. `leak_free_axis`, for broad anisotropic peaks).
    """
    i0 = np.clip(np.nan_to_num(np.asarray(s0, dtype=np.float64)), 0.0, None)
    direction = eta_axis(phi_deg) if axis is None else np.asarray(axis, dtype=np.float64)
    along = np.nan_to_num(np.asarray(s1, dtype=np.float64)) @ direction
    return np.where(i0 > 0, along / np.where(i0 > 0, i0, 1.0), 0.0)


class _FieldCost:
    """Weighted mean square misfit of a scan's field against `reference` moved by a shift, lit
    pixels landing where the reference is undefined (off the other scans' support) costing
    `penalty` each (per unit weight). Only the scan's lit pixels (weight > 0) are interpolated:
    the others weigh nothing, and a tilt map's lit pixels are a fraction of the grid (the pattern
    search calls this ~100 times per scan and round)."""

    def __init__(self, field: F64, weight: F64, reference: F64, defined: F64, penalty: float) -> None:
        lit = weight > 0
        self.y, self.x = (a.astype(np.float64) for a in np.nonzero(lit))
        self.field, self.weight = field[lit], weight[lit]
        self.total = float(self.weight.sum())
        self.reference, self.defined, self.penalty = reference, defined, penalty

    def __call__(self, shift: npt.ArrayLike) -> float:
        dy, dx = shift
        return _field_cost(self.reference, self.defined, self.y, self.x, float(dy), float(dx), self.field, self.weight,
                           self.penalty) / self.total


@numba.njit(cache=True, nogil=True, inline="always")
def _corner(y: float, x: float, ny: int, nx: int) -> tuple[int, int, int, int, float, float]:
    """The pixel (y0, x0) left of and above (y, x), the one past it (y1, x1: itself on a grid one pixel wide) and the
    fractions (fy, fx) past (y0, x0), as scipy's ``map_coordinates(order=1, mode="constant", cval=0)`` weighs them
    inside the pixel grid (to ~1e-16): computed once per landing when two images are read at the same place
    (`_field_cost`). `int`, not `floor`: 0 <= y here, and a libm call per read was a third of the cost."""
    y0 = min(int(y), ny - 2) if ny > 1 else 0
    x0 = min(int(x), nx - 2) if nx > 1 else 0
    return y0, x0, min(y0 + 1, ny - 1), min(x0 + 1, nx - 1), y - y0, x - x0


@numba.njit(cache=True, nogil=True, inline="always")
def _weighed(image: F64, y0: int, x0: int, y1: int, x1: int, fy: float, fx: float) -> float:
    """`image` between the four pixels (y0|y1, x0|x1), weighed by the fractions (fy, fx) (`_corner`). All four terms
    always (a zero fraction adds an exact 0 to a finite image): skipping them by branch made `_field_cost` 3x slower."""
    return ((1.0 - fy) * (1.0 - fx) * image[y0, x0] + (1.0 - fy) * fx * image[y0, x1]
            + fy * (1.0 - fx) * image[y1, x0] + fy * fx * image[y1, x1])


@numba.njit(cache=True, nogil=True)
def _field_cost(reference: F64, defined: F64, y: F64, x: F64, dy: float, dx: float, field: F64, weight: F64,
                penalty: float) -> float:
    """Σ weight · misfit of the lit pixels (y, x) seen at (y - dy, x - dx): (field - reference)² where `defined` reads > 0.999 there,
    else `penalty`. One compiled pass: the pattern search calls it ~50 times per scan and round, and two scipy
    ``map_coordinates`` calls per cost were ~2/3 of a 20 x 28 map's registration (0.8 of 1.8 s)."""
    total = 0.0
    ny, nx = reference.shape
    for i in range(y.size):
        at_y, at_x = y[i] - dy, x[i] - dx
        if 0.0 <= at_y <= ny - 1 and 0.0 <= at_x <= nx - 1:
            y0, x0, y1, x1, fy, fx = _corner(at_y, at_x, ny, nx)   # once for both images (0 beyond the outermost pixel centres)
            if _weighed(defined, y0, x0, y1, x1, fy, fx) > 0.999:
                diff = field[i] - _weighed(reference, y0, x0, y1, x1, fy, fx)
                total += weight[i] * diff * diff
                continue
        total += weight[i] * penalty
    return total


def _fit_field(field: F64, weight: F64, reference: F64, defined: F64, start: F64 | None) -> F64:
    """The shift minimising `_FieldCost`: a whole-pixel search (no `start`), then a pattern search
    halving its step down to 1/64 map pixel (`_pattern_search`, compiled)."""
    penalty = float(reference[defined > 0].var()) if (defined > 0).any() else 0.0
    cost = _FieldCost(field, weight, reference, defined, penalty)
    begin = np.zeros(2) if start is None else np.asarray(start, dtype=np.float64).reshape(2)
    found = _pattern_search(np.ascontiguousarray(reference, dtype=np.float64), np.ascontiguousarray(defined, dtype=np.float64),
                            cost.y, cost.x, cost.field, cost.weight, cost.penalty, cost.total, float(begin[0]),
                            float(begin[1]), start is None, FIELD_SPAN, 1 / 64)
    return np.array(found, dtype=np.float64)


@numba.njit(cache=True, nogil=True)
def _pattern_search(reference: F64, defined: F64, y: F64, x: F64, field: F64, weight: F64, penalty: float,
                    total: float, start_y: float, start_x: float, whole: bool, span: int,
                    finest: float) -> tuple[float, float]:
    """`_fit_field`'s search on `_FieldCost` (`_field_cost` / `total`), in one compiled call: with `whole`, the first
    of the lowest whole-pixel shifts within ±`span` (row-major order), else `start`; then from there the first of
    the four moves (+dy, -dy, +dx, -dx) by `step` that lowers the cost, or the step halved, down to `finest`. Each
    shift's cost is computed once (the search steps back onto shifts it has tried: dyadic steps, the same floats;
    ~1/5 of its calls). Why compiled: ~20,000 cost calls per 20 x 28 map, whose Python overhead was as long as the
    costs themselves."""
    capacity = 4096
    seen_y, seen_x, seen_cost = np.empty(capacity), np.empty(capacity), np.empty(capacity)
    count = 0
    best_y, best_x = start_y, start_x
    best_cost = np.inf
    if whole:
        for a in range(-span, span + 1):
            for b in range(-span, span + 1):
                c = _field_cost(reference, defined, y, x, float(a), float(b), field, weight, penalty) / total
                if count < capacity:
                    seen_y[count], seen_x[count], seen_cost[count] = float(a), float(b), c
                    count += 1
                if a == -span and b == -span or c < best_cost:
                    best_y, best_x, best_cost = float(a), float(b), c
    else:
        best_cost = _field_cost(reference, defined, y, x, best_y, best_x, field, weight, penalty) / total
        seen_y[0], seen_x[0], seen_cost[0] = best_y, best_x, best_cost
        count = 1
    step = 0.5
    while step >= finest:
        moved = False
        for move in range(4):
            at_y = best_y + (step if move == 0 else -step if move == 1 else 0.0)
            at_x = best_x + (step if move == 2 else -step if move == 3 else 0.0)
            c = np.nan
            known = False
            for i in range(count):
                if seen_y[i] == at_y and seen_x[i] == at_x:
                    c, known = seen_cost[i], True
                    break
            if not known:
                c = _field_cost(reference, defined, y, x, at_y, at_x, field, weight, penalty) / total
                if count < capacity:
                    seen_y[count], seen_x[count], seen_cost[count] = at_y, at_x, c
                    count += 1
            if c < best_cost:
                best_y, best_x, best_cost = at_y, at_x, c
                moved = True
                break
        if not moved:
            step /= 2
    return best_y, best_x


def register_eta_scans_by_tilt(s0: npt.ArrayLike, s1: npt.ArrayLike, phi_deg: float = 0.0) -> F64:
    """Drift (dy, dx), map pixels, of each eta scan from its map of the tilt the rocking curve does not move.

    Parameters
    ----------
    s0 : (n_scans, ny, nx) Σ I per map pixel of each eta scan, in rocking (eta) order.
    s1 : (n_scans, ny, nx, 3) Σ I·q of the same (sample frame).
    phi_deg : the map's phi.

    Returns
    -------
    (n_scans, 2) displacements in the frame where their Σ I-weighted mean is zero (as
    `register_eta_scans`). Each scan with signal is fitted onto the mean field of the others,
    moved back by their shifts, for a few rounds, then onto the sharp field the others imply
    (`_refined`); scans without signal take the nearest one's, faint scans too when their fit is far from it
    (`_faint_checked`). All zero (declined, logged at DEBUG) when the tilt maps do not fit each other `MIN_GAIN`
    times better moved than unmoved, or when they cannot register and the intensity maps do not either
    (`registered_intensity`).
    """
    i0, total = _scans(s0)
    shifts = np.zeros((i0.shape[0], 2))
    if i0.shape[0] < 2 or not total.max() > 0:
        return shifts
    peak = bright_peak(i0)
    weight = np.where(i0 >= FIELD_FLOOR * peak, np.minimum(i0, peak), 0.0)
    signal = np.flatnonzero((total >= MIN_SIGNAL * total.max()) & (weight.sum(axis=(1, 2)) > 0))
    trusted = signal[total[signal] >= FIT_SIGNAL * total.max()]
    if trusted.size < 2:
        return shifts
    field = rocking_free_field(i0, s1, phi_deg, leak_free_axis(i0, s1, phi_deg))
    level = FIELD_SUPPORT * FIELD_FLOOR * peak
    bright = np.where(i0 >= GAIN_FLOOR * peak, np.minimum(i0, peak), 0.0)
    lit = {int(k): (*(a.astype(np.float64) for a in np.nonzero(bright[k] > 0)), bright[k][bright[k] > 0]) for k in trusted}
    unmoved = 0.0          # the trusted scans' bright weight landing on the others' mean field unmoved (round 0)
    for rounds in range(FIELD_ROUNDS):
        moved_w = {k: resample(weight[k], shifts[k]) for k in signal}
        moved_wf = {k: resample(weight[k] * field[k], shifts[k]) for k in signal}
        all_w, all_wf = sum(moved_w.values()), sum(moved_wf.values())
        found = shifts.copy()
        landed = 0.0       # ... and moved by this round's fits
        for k in signal:
            others_w, others_wf = all_w - moved_w[k], all_wf - moved_wf[k]
            defined = (others_w >= FIELD_SUPPORT * FIELD_FLOOR * peak).astype(np.float64)
            reference = np.where(defined > 0, others_wf / np.where(defined > 0, others_w, 1.0), 0.0)
            found[k] = _fit_field(field[k], weight[k], reference, defined, shifts[k] if rounds else None)
            if int(k) in lit:     # `_compared`'s second sum: the weight landing on the support (its misfit unused)
                ys, xs, w = lit[int(k)]
                landed += _compared(reference, defined, ys, xs, float(found[k][0]), float(found[k][1]), w, w)[1]
                unmoved += _compared(reference, defined, ys, xs, 0.0, 0.0, w, w)[1] if rounds == 0 else 0.0
        if _off_support(landed, unmoved, f"the other scans' mean field (round {rounds + 1})"):
            return np.zeros_like(shifts)    # the later rounds would only wander further (a map whose tilt is noise)
        found[signal] = centred_shifts(found[signal], total[signal])
        settled = np.abs(found - shifts).max() <= SETTLED_PX
        shifts = found
        if settled:
            break
    shifts = _refined(field, weight, total, shifts, signal, level)
    still, still_share = field_fit(field, bright, np.zeros_like(shifts), trusted, level)
    contrast = tilt_contrast(field[trusted], weight[trusted], shifts[trusted])
    moved, moved_share = field_fit(field, bright, shifts, trusted, level)
    gain = still / moved if moved > 0 else (float("inf") if still > 0 else 1.0)
    if _off_support(moved_share, still_share, "the sharp fields"):
        return np.zeros_like(shifts)
    if not contrast >= MIN_TILT_CONTRAST and not (contrast >= LOW_TILT_CONTRAST and gain >= MIN_GAIN):
        log.debug("tilt registration: the tilt map varies over the particle only %.1f times its scatter between "
                    "the registered scans (< %.0f) and the scans' tilt maps fit each other moved %.2f times better than "
                    "unmoved (< %.2f, or contrast < %.1f): nothing to register on; the intensity maps are registered "
                    "instead", contrast, MIN_TILT_CONTRAST, gain, MIN_GAIN, LOW_TILT_CONTRAST)
        return registered_intensity(i0)
    if not gain >= MIN_GAIN:
        log.debug("tilt registration declined: the scans' tilt maps fit each other moved by the shifts found only "
                    "%.2f times better than unmoved (< %.2f; tilt contrast %.1f): no drift seen, the scans are added as "
                    "they are", gain, MIN_GAIN, contrast)
        return np.zeros_like(shifts)
    log.info("tilt registration kept: tilt contrast %.1f, the scans' tilt maps fit each other %.2f times better moved",
             contrast, gain)
    return _faint_checked(filled_shifts(shifts, signal), trusted)


def _off_support(moved_share: float, still_share: float, fitted_on: str) -> bool:
    """Whether shifts found (fitted onto `fitted_on`) carry the scans' bright pixels so far off each other's support
    that they compare under `MIN_OVERLAP` of what they compare unmoved: nothing seen, the registration is declined
    (logged at DEBUG). Asked after each mean-field round too (the weight landing on the others' mean field, moved by
    the round's fits against unmoved): on a map whose tilt is noise (the bench map of `opmon bench process`) the fits
    wander off (64, 56, 49 % by the third round) and the later rounds and the refinement were most of a 0.18 s decline;
    on the truth harness's 38 registration inputs it never falls under 99.4 %."""
    if moved_share >= MIN_OVERLAP * still_share:
        return False
    log.debug("tilt registration declined: moved by the shifts found on %s, the scans' bright pixels land on each "
              "other's support %.0f %% as much as unmoved (< %.0f %%): the scans are added as they are",
              fitted_on, 100 * moved_share / still_share if still_share > 0 else 0.0, 100 * MIN_OVERLAP)
    return True


def bright_peak(i0: F64) -> float:
    """The scans' bright level the floors are shares of and the fits' weights are clipped at: the brightest Σ I, or
    when that stands over `OUTLIER_RATIO` times the mask rule's bright level (`maps.bright_level`, the k-th largest
    of each map point's brightest scan), that level: one flashing map point (10x the particle's Σ I in every scan)
    sank the rest of the particle below the floors (a handful of lit pixels, whose fit invented 1-3 map pixels of
    drift and masked 3/4 of the particle), and unclipped it alone outweighed the particle (2 map pixels invented).
    Without such an outlier nothing changes (`opmon bench truth --size 24 --seed 4 --cases drift,all`: to the digit;
    clipping at the level itself moved the `drift` map's mask 96.8 -> 94.4 %)."""
    brightest = i0.max(axis=0)
    level = bright_level(brightest, brightest > 0)
    top = float(brightest.max())
    return top if top <= OUTLIER_RATIO * level else level


def _faint_checked(shifts: F64, trusted: npt.NDArray[np.int64]) -> F64:
    """Shifts of the scans not in `trusted` (too faint to trust their fit alone) kept when within `FAINT_REACH`
    of the nearest trusted scan's, else replaced by it: the drift moves little from one scan to the next, and a
    faint scan's fit far from its neighbours' is noise (4-10 map pixels on `all`'s faint scans; within 0.6 on the
    faint scans of the ``drift`` maps, where keeping them halves the largest error)."""
    out = shifts.copy()
    for k in range(out.shape[0]):
        if k not in trusted:
            near = shifts[trusted[np.argmin(np.abs(trusted - k))]]
            if np.hypot(*(shifts[k] - near)) > FAINT_REACH:
                out[k] = near
    return out


def registered_intensity(i0: F64) -> F64:
    """`register_eta_scans` of the intensity maps, declined (zero shifts, logged at DEBUG) unless the scans moved back fit
    each other `INTENSITY_GAIN` times better than unmoved (`intensity_misfit`): one image drifting (the particle of
    one tilt of tests/processors/test_registration.py) gains 19.5; on a strained particle the part in Bragg condition
    moves with eta, which intensity registration takes for drift (1.3-3.6 map pixels, up to 12 on the background-only
    scans of the low-signal map, invented on the truth harness's maps without drift) for a gain of 1.4-2.8."""
    shifts = register_eta_scans(i0)
    moved, still = intensity_misfit(i0, shifts), intensity_misfit(i0, np.zeros_like(shifts))
    if not still >= INTENSITY_GAIN * moved:
        log.debug("intensity registration declined: the eta scans moved back fit each other only %.1f times better than "
                    "unmoved (< %.0f): not one image drifting, the scans are added as they are",
                    still / moved if moved > 0 else 1.0, INTENSITY_GAIN)
        return np.zeros_like(shifts)
    log.info("intensity registration kept: the eta scans moved back fit each other %.1f times better than unmoved",
             still / moved if moved > 0 else float("inf"))
    return shifts


def intensity_misfit(scans: F64, shifts: F64) -> float:
    """Median over the scans with ≥ `FIT_SIGNAL` of the brightest Σ I of each scan's χ² per pixel (Poisson) against
    the others' sum, all moved back by `shifts`, scaled to its Σ I (~1 when every scan shows one image moved and the
    counts are low; more where bilinear moves blur it: 3.0 on the one-tilt test particle)."""
    total = scans.sum(axis=(1, 2))
    signal = np.flatnonzero(total >= FIT_SIGNAL * total.max()) if total.max() > 0 else np.zeros(0, dtype=np.int64)
    if signal.size < 2:
        return 0.0
    moved = {int(k): resample(scans[k], shifts[k]) for k in signal}
    together, grand = sum(moved.values()), float(total[signal].sum())
    each = []
    for k, own in moved.items():
        expected = (together - own) * total[k] / (grand - total[k])
        seen = (own + expected) > 0
        each.append(float(((own - expected)[seen] ** 2 / (own + expected)[seen]).sum() / seen.sum()))
    return float(np.median(each))


def field_misfit(field: F64, weight: F64, shifts: F64, signal: npt.NDArray[np.int64], level: float) -> float:
    """`field_fit`'s misfit alone."""
    return field_fit(field, weight, shifts, signal, level)[0]


def field_fit(field: F64, weight: F64, shifts: F64, signal: npt.NDArray[np.int64], level: float) -> tuple[float, float]:
    """The scans' count-weighted mean square misfit at `shifts`, each against the sharp field the others imply
    (`_sharp_field`), over its lit pixels that land where that field is defined: how well the tilt maps fit each
    other so moved. Compared with zero shifts, the decline test of `register_eta_scans_by_tilt` (no off-support
    penalty as in `_FieldCost`: it favours zero shifts, whose pixels all land on the others' support, and declined
    real drift). Unmoved / moved: truth harness's maps without drift 1.00-1.25, drift maps 2.5-133, `all` 3.0.
    Also the share of the lit pixels' weight so compared: shifts that carry the scans off each other's support
    compare nothing and fit "perfectly" (a 4-pixel particle fitted 1.5-3 map pixels apart, misfit 0), which
    `MIN_OVERLAP` declines."""
    strength = SHARP_SMOOTH * float(np.median(weight[signal][weight[signal] > 0]))
    system = _LeaveOneOut(field, weight, shifts, signal, strength)
    cost, total, lit = 0.0, 0.0, 0.0
    for k in (int(k) for k in signal):
        sharp, defined = system.without(k, level)
        ys, xs = (a.astype(np.float64) for a in np.nonzero(weight[k] > 0))
        w = weight[k][weight[k] > 0]
        seen_cost, seen_weight = _compared(np.ascontiguousarray(sharp, dtype=np.float64),
                                           np.ascontiguousarray(defined, dtype=np.float64), ys, xs,
                                           float(shifts[k][0]), float(shifts[k][1]), field[k][weight[k] > 0], w)
        cost, total, lit = cost + seen_cost, total + seen_weight, lit + float(w.sum())
    return (cost / total if total > 0 else 0.0), (total / lit if lit > 0 else 0.0)


@numba.njit(cache=True, nogil=True)
def _compared(reference: F64, defined: F64, y: F64, x: F64, dy: float, dx: float, field: F64,
              weight: F64) -> tuple[float, float]:
    """(Σ weight · (field - reference)², Σ weight) over the lit pixels (y, x) that, seen at (y - dy, x - dx), land
    where `defined` reads > 0.999 (`field_fit`): `_field_cost` without its off-support penalty, in one compiled pass
    (scipy's ``map_coordinates`` here was the only scipy.ndimage use on a registration's path, whose import is
    ~0.15 s of every `opmon process`)."""
    cost, total = 0.0, 0.0
    ny, nx = reference.shape
    for i in range(y.size):
        at_y, at_x = y[i] - dy, x[i] - dx
        if 0.0 <= at_y <= ny - 1 and 0.0 <= at_x <= nx - 1:
            y0, x0, y1, x1, fy, fx = _corner(at_y, at_x, ny, nx)
            if _weighed(defined, y0, x0, y1, x1, fy, fx) > 0.999:
                diff = field[i] - _weighed(reference, y0, x0, y1, x1, fy, fx)
                cost += weight[i] * diff * diff
                total += weight[i]
    return cost, total


def _bilinear_rows(weight: F64, shift: F64) -> tuple[Any, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sparse (lit pixels, ny*nx) matrix B: a scan's lit pixel (y, x) sees the sample-frame field at
    (y - dy, x - dx), bilinearly between its four pixels (what `map_coordinates` order 1 does, and
    what a beam between pixels sees); and the lit pixels' rows and columns."""
    import scipy.sparse as sparse

    ny, nx = weight.shape
    ys, xs = np.nonzero(weight > 0)
    py, px = ys - float(shift[0]), xs - float(shift[1])
    y0, x0 = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    fy, fx = py - y0, px - x0
    rows, cols, vals = [], [], []
    for oy, wy in ((0, 1.0 - fy), (1, fy)):
        for ox, wx in ((0, 1.0 - fx), (1, fx)):
            yy, xx, w = y0 + oy, x0 + ox, wy * wx
            ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx) & (w > 0)
            rows.append(np.flatnonzero(ok))
            cols.append((yy * nx + xx)[ok])
            vals.append(w[ok])
    matrix = sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                               shape=(ys.size, ny * nx))
    return matrix, ys, xs


def _normal_terms(field: F64, weight: F64, shift: F64) -> tuple[Any, F64]:
    """One scan's terms of the normal equations of `_sharp_field`: BᵀWB and BᵀWf (W its counts)."""
    import scipy.sparse as sparse

    matrix, ys, xs = _bilinear_rows(weight, shift)
    w = weight[ys, xs]
    return (matrix.T @ sparse.diags(w) @ matrix).tocsc(), matrix.T @ (w * field[ys, xs])


def _smoothness(shape: tuple[int, int]) -> Any:
    """DᵀD of the differences between neighbouring pixels (rows and columns): the smoothness term."""
    import scipy.sparse as sparse

    n = shape[0] * shape[1]
    index = np.arange(n).reshape(shape)
    steps = []
    for high, low in ((index[1:, :], index[:-1, :]), (index[:, 1:], index[:, :-1])):
        m = high.size
        steps.append(sparse.csr_matrix((np.r_[np.ones(m), -np.ones(m)], (np.r_[np.arange(m), np.arange(m)],
                                        np.r_[high.ravel(), low.ravel()])), shape=(m, n)))
    d = sparse.vstack(steps).tocsr()
    return (d.T @ d).tocsc()


def _sharp_field(normal: Any, rhs: F64, smooth: Any, strength: float, shape: tuple[int, int],
                 level: float) -> tuple[F64, F64]:
    """The sample-frame field F that some scans imply, from the sums of their `_normal_terms`:
    least squares of each lit pixel's field against F moved by the scan's shift (bilinear,
    `_bilinear_rows`), weighted by its counts, plus `strength` × the smoothness term (ties the
    pixels no scan sees); and where F is defined (Σ weight·b² of what sees it ≥ `level`).

    Why not the mean of the scans moved back (`resample`): each scan's field is the sample's blurred
    by its own sub-pixel place (a half-pixel drift mixes two pixels, a whole one none), and moving
    it back blurs it again; a scan compared with such a mean is pulled by the difference in blur
    (0.2-0.6 map pixel on the bright scans of the truth harness's drift maps). F solved through the
    same bilinear moves is sharp, and the fit moves it as the data were moved.

    The registration solves this system for each scan left out through `_LeaveOneOut` (band terms, a compiled
    banded Cholesky: the same shifts, 3-5x faster); this sparse path is its fallback and its reference."""
    from scipy.sparse.linalg import spsolve

    cover = normal.diagonal().reshape(shape)
    solved = spsolve((normal + strength * smooth).tocsc(), rhs)
    return np.asarray(solved, dtype=np.float64).reshape(shape), (cover >= level).astype(np.float64)


class _LeaveOneOut:
    """The normal equations of `_sharp_field` for some scans at their shifts, each scan's own terms kept so that
    any one can be left out: the same least squares as `_normal_terms` summed then `_sharp_field`, built pixel by
    pixel (`_band_terms`) and solved by a banded Cholesky (`_band_solve`). Why: the bilinear moves couple a pixel
    only to its 8 neighbours, so the system is a band as wide as the map's shorter side; the sparse matrices and
    SuperLU spent ~3/4 of a 20 x 28 map's registration on building and factoring it (310 solves per map)."""

    def __init__(self, field: F64, weight: F64, shifts: F64, scans: npt.NDArray[np.int64], strength: float) -> None:
        ny, nx = self.shape = field.shape[1:]
        sy, sx = (nx, 1) if nx <= ny else (1, ny)       # pixels numbered along the longer side: the narrower band
        self.order = np.arange(ny)[:, None] * sy + np.arange(nx)[None, :] * sx
        self.offsets = np.array(sorted({0, sx, sy, sy + sx, abs(sy - sx)}), dtype=np.int64)
        slot = np.full(sy + sx + 1, -1, dtype=np.int64)
        slot[self.offsets] = np.arange(self.offsets.size)
        n = ny * nx
        self.terms = {int(k): np.zeros((self.offsets.size, n)) for k in scans}
        self.rhs = {int(k): np.zeros(n) for k in scans}
        for k in self.terms:
            _band_terms(np.ascontiguousarray(field[k], dtype=np.float64), np.ascontiguousarray(weight[k], dtype=np.float64),
                        float(shifts[k][0]), float(shifts[k][1]), sy, sx, slot, self.terms[k], self.rhs[k])
        self.all_terms, self.all_rhs = sum(self.terms.values()), sum(self.rhs.values())
        self.columns = sy + sx - self.offsets           # lower band, each row left to right: band[i, u - d] is entry (i, i - d)
        self.band = np.zeros((n, sy + sx + 1))
        self.band[:, self.columns] = (self.all_terms + strength * _smoothness_band(self.order, self.offsets)).T
        self.strength, self.smooth = strength, None
        # every scan's system: factored and forward-substituted once, its rows before a scan's first pixel are that
        # scan's too (a Cholesky row depends on the rows above it only)
        self.factor, self.forward = self.band.copy(), self.all_rhs.copy()
        self.shared = _band_solve(self.factor, self.forward, 0, False)

    def without(self, k: int, level: float) -> tuple[F64, F64]:
        """`_sharp_field` of every scan but `k`: the sharp field and where it is defined."""
        own, own_rhs = self.terms[k], self.rhs[k]
        cover = (self.all_terms[0] - own[0])[self.order]
        touched = np.flatnonzero(own[0])
        start = int(touched[0]) if self.shared and touched.size else 0
        band = np.concatenate((self.factor[:start], self.band[start:]))
        band[start:, self.columns] -= own.T[start:]
        solved = np.concatenate((self.forward[:start], (self.all_rhs - own_rhs)[start:]))
        if not _band_solve(band, solved, start, True):  # not positive definite (nothing left seen): SuperLU's answer
            return _sharp_field(self._sparse(self.all_terms - own), (self.all_rhs - own_rhs)[self.order.ravel()],
                                self._smoothness(), self.strength, self.shape, level)
        return solved[self.order], (cover >= level).astype(np.float64)

    def _sparse(self, terms: F64) -> Any:
        """Band terms as the sparse symmetric matrix `_sharp_field` takes, in the pixels' row-major order."""
        import scipy.sparse as sparse

        n = terms.shape[1]
        where = np.empty(n, dtype=np.int64)
        where[self.order.ravel()] = np.arange(n)     # band index -> row-major index
        rows, cols, vals = [], [], []
        for offset, values in zip(self.offsets, terms):
            j = np.arange(offset, n)
            for a, b in ((j - offset, j), (j, j - offset)) if offset else ((j, j),):
                rows.append(where[a]), cols.append(where[b]), vals.append(values[j])
        return sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))

    def _smoothness(self) -> Any:
        if self.smooth is None:
            self.smooth = _smoothness(self.shape)
        return self.smooth


def _smoothness_band(order: npt.NDArray[np.int64], offsets: npt.NDArray[np.int64]) -> F64:
    """`_smoothness` (DᵀD of neighbour differences) in the band rows of `offsets`, pixels numbered by `order`."""
    out = np.zeros((offsets.size, order.size))
    for high, low in ((order[1:, :], order[:-1, :]), (order[:, 1:], order[:, :-1])):
        np.add.at(out[0], high.ravel(), 1.0)
        np.add.at(out[0], low.ravel(), 1.0)
        hi, lo = np.maximum(high, low).ravel(), np.minimum(high, low).ravel()
        np.add.at(out, (np.searchsorted(offsets, hi - lo), hi), -1.0)
    return out


@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _band_solve(band: F64, rhs: F64, start: int, back: bool) -> bool:
    """Solves A x = rhs in place (x in `rhs`, A's Cholesky factor L in `band`) for a symmetric positive definite
    band matrix A of half-width u, stored by rows left to right (``band[i, u - d]`` = A[i, i - d]); False when A is
    not positive definite. Rows before `start` must hold L's already, and `rhs` there L⁻¹ rhs (another system's
    that shares those rows: `_LeaveOneOut`); without `back`, stops at L⁻¹ rhs. Rows left to right make every inner loop a run through contiguous memory, which the
    compiler vectorises (reassociated sums: ~1e-16 apart from the sequential order). Compiled rather than LAPACK's
    ``pbsv``: its blocked factorisation starts OpenBLAS's threads, which on a loaded machine made each 560-pixel
    solve ~40 ms instead of ~0.2 ms."""
    n, width = band.shape
    u = width - 1
    for i in range(start, n):
        first = max(i - u, 0)
        row_i = band[i, first - i + u:]                 # L[i, first:i + 1]
        for j in range(first, i + 1):
            row_j = band[j, first - j + u:]             # L[j, first:j + 1]
            value = row_i[j - first]
            for m in range(j - first):
                value -= row_i[m] * row_j[m]
            if j < i:
                row_i[j - first] = value / row_j[j - first]
            elif value > 0.0:
                row_i[j - first] = np.sqrt(value)
            else:
                return False
    for i in range(start, n):
        first = max(i - u, 0)
        value = rhs[i]
        for m in range(i - first):
            value -= band[i, first - i + u + m] * rhs[first + m]
        rhs[i] = value / band[i, u]
    if not back:
        return True
    for k in range(n - 1, -1, -1):
        rhs[k] /= band[k, u]
        first = max(k - u, 0)
        for m in range(k - first):
            rhs[first + m] -= band[k, first - k + u + m] * rhs[k]
    return True


@numba.njit(cache=True, nogil=True)
def _band_terms(field: F64, weight: F64, dy: float, dx: float, sy: int, sx: int, slot: npt.NDArray[np.int64],
                terms: F64, rhs: F64) -> None:
    """Adds one scan's BᵀWB (upper band: ``terms[slot[j - i], j]`` holds entry (i, j), i ≤ j) and BᵀWf to
    `terms` and `rhs`, pixel (y, x) numbered y·sy + x·sx: `_normal_terms` without building B (the bilinear move
    of `_bilinear_rows`, its four weights per lit pixel)."""
    ny, nx = weight.shape
    index = np.empty(4, dtype=np.int64)
    share = np.empty(4)
    for y in range(ny):
        for x in range(nx):
            w = weight[y, x]
            if not w > 0:
                continue
            py, px = y - dy, x - dx
            y0, x0 = np.floor(py), np.floor(px)
            fy, fx = py - y0, px - x0
            m = 0
            for oy in range(2):
                wy = fy if oy else 1.0 - fy
                for ox in range(2):
                    wx = fx if ox else 1.0 - fx
                    yy, xx, b = int(y0) + oy, int(x0) + ox, wy * wx
                    if 0 <= yy < ny and 0 <= xx < nx and b > 0:
                        index[m], share[m] = yy * sy + xx * sx, b
                        m += 1
            wf = w * field[y, x]
            for a in range(m):
                rhs[index[a]] += share[a] * wf
                for c in range(m):
                    if index[c] >= index[a]:
                        terms[slot[index[c] - index[a]], index[c]] += share[a] * w * share[c]


def _refined(field: F64, weight: F64, total: F64, shifts: F64, signal: npt.NDArray[np.int64], level: float) -> F64:
    """Shifts refined by fitting each scan with signal onto the sharp field of the others
    (`_sharp_field`), from `shifts`, for `SHARP_ROUNDS` rounds at most (Σ I-weighted mean zero)."""
    if signal.size < 3:
        return shifts
    strength = SHARP_SMOOTH * float(np.median(weight[signal][weight[signal] > 0]))
    for _ in range(SHARP_ROUNDS):
        system = _LeaveOneOut(field, weight, shifts, signal, strength)
        found = shifts.copy()
        for k in signal:
            sharp, defined = system.without(int(k), level)
            found[k] = _fit_field(field[k], weight[k], sharp, defined, shifts[k])
        found[signal] = centred_shifts(found[signal], total[signal])
        settled = np.abs(found - shifts).max() <= SETTLED_PX
        shifts = found
        if settled:
            break
    return shifts


def tilt_contrast(field: F64, weight: F64, shifts: F64) -> float:
    """How well a tilt map can register: its weighted spread over the particle (scans moved back
    by `shifts` and averaged) divided by the weighted rms scatter of the scans about that mean.
    A particle of one tilt gives ~1 (noise against noise), a bent one tens."""
    moved_w = np.stack([resample(w, s) for w, s in zip(weight, shifts)])
    moved_wf = np.stack([resample(w * f, s) for w, f, s in zip(weight, field, shifts)])
    total_w = moved_w.sum(axis=0)
    if not total_w.sum() > 0:
        return 0.0
    mean = moved_wf.sum(axis=0) / np.where(total_w > 0, total_w, 1.0)
    level = (total_w * mean).sum() / total_w.sum()
    spread = np.sqrt((total_w * (mean - level) ** 2).sum() / total_w.sum())
    each = moved_wf / np.where(moved_w > 0, moved_w, 1.0)
    scatter = np.sqrt((moved_w * (each - mean) ** 2).sum() / moved_w.sum())
    return float(spread / scatter) if scatter > 0 else float("inf")
