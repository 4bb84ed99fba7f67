"""Powder-arc spots: found per map, then replaced in every frame by what surrounds them.

Other grains beside the imaged particle diffract at the same 2θ into compact spots on the
Debye ring, each over a narrow range of eta and at the map points near it. The ring runs
through the particle's peak window, so no ROI leaves them out: their photons validate map
points off the particle and pull the tilt. Masking their detector pixels for every frame
cuts the particle's own peak where the ring crosses it.

Found (`find_spots`): each eta scan's sum of sampled frames over the ROI (the particle's peak,
summed over the map points in Bragg condition, is broad there; a spot is not) less a smooth
level of itself (`spot_level.smooth_level`: compact outliers removed, broad peaks kept), in Poisson
sigmas. Voxels (eta scan, row, column) standing GROW_SIGMA and MIN_CONTRAST above the level,
connected in eta and on the detector, are a spot when one of them stands SEED_SIGMA above it
and together they hold less than PARTICLE_SHARE of the map's signal (a compact particle peak,
e.g. a small uniform crystal, holds most of it); spots are widened by DILATE pixels and
ETA_WINGS scans for their faint wings.

Told apart from a pattern of many Bragg spots (`not_powder`, the guard): powder spots stand beside
a particle's broad peak, over part of the eta range, holding part of the photons. Compact spots
with no broad peak beside them (the level above its median under MIN_BROAD_SHARE of the signal),
or standing at nearly every eta scan (EVERY_ETA), or holding most of the signal (MAX_SPOT_SHARE)
are the pattern itself (the tickit-devices EIGER2 frame: taken for powder spots, d moved 4 %):
then no spot is replaced and the maps record why (``maps@powder_spots_note``). Not used: "at a
subset of map points" (the per-scan sums do not keep the map point; a powder spot of a grain lit
by the beam everywhere shows at every point), "on one ring at the imaged 2θ" (the ROI holds a band
of 2θ only a few tenths of a degree wide: every spot in it is on "one ring").

Removed in expectation (`correct_block`): in a frame of a scan holding spots, each spot piece's
pixels' counts are taken out of the frame's moments and replaced by the particle's local shape
there (the scan's smooth level with the spot pixels left out, read from around them) scaled to the
counts of a ring of pixels around the piece in that same frame. Linear in the counts, so it adds
what the piece would have held without the spot wherever the map point's peak has the shape of
the map's sum locally; no hole is cut in the peak. Tried and measured worse: the ring's mean,
then a plane fitted to the ring (both fill the band of the Debye ring, where the particle's own
peak is centred, from its tails: the `all` case lost 73 % of its Σ I and d went 3e-5 -> 6.6e-5 Å).
It runs beside the moment kernel (after it, on the same frames), a few hundred pixels per frame
with spots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from opmon.processors.kernels import sample_matrix
from opmon.processors.spot_level import binned_level

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Voxels = tuple[npt.NDArray[np.bool_] | None, F64, str]   # `spot_voxels`: (spot voxels or None, shape under them, why none)

ETA_DECIMALS = 5        # frames whose eta agrees to 1e-5 deg belong to one eta scan (as eta_scans.py)
SEED_SIGMA = 8.0        # Poisson sigmas above the smooth image a spot's brightest voxel stands
GROW_SIGMA = 2.5        # ... and each voxel of it
MIN_CONTRAST = 0.75     # a spot voxel holds at least this share more than the smooth level
PARTICLE_SHARE = 0.4    # a compact excess holding this share of the map's signal is the particle's peak, not a spot
                        # (0.2 before: at x = 0.6 the imaged phase has faded to 32 pixels and a chain of spots of
                        # Li0.9 grains held 34 % of the ROI's signal: kept, mask 25 %, tilt 0.08 deg; 0.4: 100 %, 0.0002)
DILATE = 4              # px added around each spot (its faint wings) ...
ETA_WINGS = 1           # ... and eta scans on either side
TILE = 16               # px: spot pixels are replaced piece by piece, each piece by the ring beside it
MIN_RING_PIXELS = 8     # a piece's ring holds at least this many pixels (else it looks further out)
RING = 2                # px: width of the ring of pixels whose counts stand in for a spot's
RING_TRIES = 4          # ... widened up to this many times while it holds fewer than MIN_RING_PIXELS
FRAME_SIGMA = 3.0       # a piece is replaced only in frames where it stands this many sigmas above its fill (0: in all)
                        # (measured, size-24 `all` case, 3 vs 0: d 4.5e-5 vs 3.1e-5 Å, tilt 0.0094 vs 0.0083 deg,
                        # mask 91 vs 85 %; size-12 powder-arcs map: tilt 0.0036 vs 0.0060 deg, mask 100 vs 93 %)
# The guard (`not_powder`): compact excess that is the pattern itself, not a powder ring beside a particle
MIN_BROAD_SHARE = 0.2   # the smooth level (the particle's broad peak) above its median holds at least this share of the signal
EVERY_ETA = 0.9         # powder spot pixels stand out in at most this share of the eta scans (excess-weighted mean)
MAX_SPOT_SHARE = 0.8    # powder spots hold at most this share of the ROI's signal (Bragg spots that are the signal: most)
MAX_SAMPLE_BYTES = 256 * 2**20   # per-scan sample sums kept while sampling a map (else no spot search)


@dataclass(frozen=True)
class SpotTable:
    """Spot pixels per eta scan, flat for the numba correction.

    ``eta`` (n_scans,) increasing, the scans holding spots; spots of scan s are
    ``scan_ptr[s]:scan_ptr[s+1]``; spot k's pixels (flat frame indices) are
    ``core_pix[core_ptr[k]:core_ptr[k+1]]``, its ring's ``ring_pix[ring_ptr[k]:ring_ptr[k+1]]``.
    """

    eta: F64
    cols: int
    scan_ptr: I64
    core_ptr: I64
    core_pix: I64
    ring_ptr: I64
    ring_pix: I64
    core_shape: F64 = field(default_factory=lambda: np.zeros(0))   # the particle's local shape at each spot pixel ...
    ring_shape: F64 = field(default_factory=lambda: np.zeros(0))   # ... and ring pixel (ones: a flat level)
    note: str = ""          # why compact excess found was not taken for powder spots (`not_powder`), else ""

    def __post_init__(self) -> None:
        if self.core_shape.size != self.core_pix.size or self.ring_shape.size != self.ring_pix.size:
            object.__setattr__(self, "core_shape", np.ones(self.core_pix.size))
            object.__setattr__(self, "ring_shape", np.ones(self.ring_pix.size))

    @property
    def n_spots(self) -> int:
        """Spots found, counted once per eta scan they show in."""
        return int(self.core_ptr.size - 1)

    @classmethod
    def empty(cls, note: str = "") -> "SpotTable":
        """No spot to replace (`note`: why the compact excess found is not powder spots)."""
        zero = np.zeros(1, dtype=np.int64)
        return cls(np.zeros(0), 1, zero, zero, np.zeros(0, dtype=np.int64), zero, np.zeros(0, dtype=np.int64), note=note)

    def arrays(self) -> list[npt.NDArray[Any]]:
        """The table as arrays (to ship to another process: `from_arrays`)."""
        return [self.eta, self.scan_ptr, self.core_ptr, self.core_pix, self.ring_ptr, self.ring_pix, self.core_shape,
                self.ring_shape]

    @classmethod
    def from_arrays(cls, cols: int, arrays: list[npt.NDArray[Any]]) -> "SpotTable":
        """Inverse of `arrays` for frames of `cols` columns."""
        eta, scan_ptr, core_ptr, core_pix, ring_ptr, ring_pix, core_shape, ring_shape = arrays
        return cls(np.asarray(eta, np.float64), cols, *(np.asarray(a, np.int64) for a in (scan_ptr, core_ptr, core_pix,
                                                                                             ring_ptr, ring_pix)),
                   np.asarray(core_shape, np.float64), np.asarray(ring_shape, np.float64))

    def scans_of(self, eta: npt.ArrayLike) -> I64:
        """The scan index of each frame's eta in this table, -1 where its scan holds no spot."""
        keys = np.round(np.asarray(eta, dtype=np.float64).reshape(-1), ETA_DECIMALS)
        if self.eta.size == 0:
            return np.full(keys.shape, -1, dtype=np.int64)
        at = np.clip(np.searchsorted(self.eta, keys), 0, self.eta.size - 1)
        return np.where(np.abs(self.eta[at] - keys) < 0.5 * 10.0 ** -ETA_DECIMALS, at, -1).astype(np.int64)


def find_spots(sums: F64, eta: npt.ArrayLike, roi: tuple[int, int, int, int], frame_shape: tuple[int, int],
               mask: npt.NDArray[np.uint8] | None = None) -> SpotTable:
    """Spots in the per-eta-scan sums (n_scans, rows, cols) of a map's sampled frames over the ROI window.

    ``eta`` (n_scans,) the scans' eta (deg); ``roi`` (r0, r1, c0, c1) the window the sums cover in
    the frame of ``frame_shape``; ``mask`` (frame) 1 = dead/hot pixel (never a spot pixel, never read).
    """
    r0, r1, c0, c1 = roi
    sums = np.asarray(sums, dtype=np.float64)
    eta = np.round(np.asarray(eta, dtype=np.float64).reshape(-1), ETA_DECIMALS)
    if sums.ndim != 3 or sums.shape[1:] != (r1 - r0, c1 - c0) or sums.shape[0] != eta.size:
        raise ValueError(f"per-scan sums of shape {sums.shape} do not match {eta.size} scans of ROI {roi}")
    order = np.argsort(eta)
    sums, eta = sums[order], eta[order]
    good = np.ones(sums.shape[1:], dtype=bool) if mask is None else mask[r0:r1, c0:c1] == 0
    sums = np.where(good, sums, 0.0)
    return spot_table(spot_voxels(sums, good), eta, roi, frame_shape, good)


def spot_table(found: Voxels, eta: F64, roi: tuple[int, int, int, int], frame_shape: tuple[int, int],
               good: npt.NDArray[np.bool_]) -> SpotTable:
    """The SpotTable of what `spot_voxels` found over the ROI window (scans in increasing ``eta``, ``good`` the
    window's pixels not masked)."""
    spots, shape, note = found
    if spots is None:
        return SpotTable.empty(note)
    return _table(spots, eta, roi, frame_shape[1], good, shape + 1.0 / (spots.shape[0] * int(good.sum())))


def spot_voxels(sums: F64, good: npt.NDArray[np.bool_]) -> Voxels:
    """(spot voxels (n_scans, rows, cols) widened for their wings, the particle's local shape in the scans holding
    them (zero in the others), "") of per-scan sums in increasing eta (masked pixels zero); (None, empty, why not)
    when there is none to replace."""
    none = np.zeros(0)
    level = binned_level(sums, good)
    grow, seed = _standing(sums, level, good)
    if not seed.any():     # the usual map: nothing to label
        return None, none, ""
    from scipy import ndimage   # here: its ~0.15 s import only for maps with candidate spots (`image_filters`)
    grown, n = ndimage.label(grow)    # 6-connected in (eta, row, column)
    if n == 0:
        return None, none, ""
    signal = float(np.clip(sums - np.median(sums, axis=(1, 2), keepdims=True), 0.0, None)[:, good].sum())
    labelled = grown > 0      # each label's excess summed in the array's order, as ndimage.sum's bincount did
    excess = np.bincount(grown[labelled], weights=sums[labelled] - level[labelled], minlength=n + 1)
    keep = ((np.bincount(grown[seed], minlength=n + 1) > 0)    # a significant peak ...
            & (excess < PARTICLE_SHARE * signal))                         # ... not the particle's own
    keep[0] = False
    spots = keep[grown]
    if not spots.any():
        return None, none, ""
    verdict = not_powder(sums, level, spots, good, signal)
    if verdict:
        return None, none, verdict
    # the faint wings: DILATE px on the detector and the neighbouring eta scans
    spots = ndimage.maximum_filter(spots, size=(1, 1 + 2 * DILATE, 1 + 2 * DILATE), mode="constant", cval=False)  # a
    # (2 DILATE + 1)-pixel square: DILATE 3 x 3 dilations in one (a third of the time)
    wings = spots.copy()
    for w in range(1, ETA_WINGS + 1):
        wings[w:] |= spots[:-w]
        wings[:-w] |= spots[w:]
    spots = wings & good
    # the particle's local shape under each spot: its scan's level with the spot pixels left out (read from around
    # them); with them in, the chain of spots along the Debye ring survives as a band the fill over-filled (`all` case,
    # register truth: d 1.9e-5 -> 9.5e-6 A, tilt 0.0062 -> 0.0027 deg, mask 92.2 -> 94.2 %)
    shape = np.zeros(sums.shape)
    held = spots.any(axis=(1, 2))         # (the shape is read only under spots: the scans without are not levelled)
    shape[held] = binned_level(sums[held], good & ~spots[held])
    return spots, shape, ""


@numba.njit(cache=True, nogil=True)
def _standing(sums, level, good):  # type: ignore[no-untyped-def]
    """(voxels standing GROW_SIGMA, voxels standing SEED_SIGMA) Poisson sigmas and MIN_CONTRAST above the `level`
    of (n_scans, rows, cols) `sums` on `good` (rows, cols) pixels: one pass (numpy's six took a quarter of the search)."""
    grow = np.zeros(sums.shape, dtype=np.bool_)
    seed = np.zeros(sums.shape, dtype=np.bool_)
    for k in range(sums.shape[0]):
        for i in range(sums.shape[1]):
            for j in range(sums.shape[2]):
                s = sums[k, i, j]
                v = level[k, i, j]
                if good[i, j] and s - v > MIN_CONTRAST * v:
                    z = (s - v) / np.sqrt(v + 1.0)
                    grow[k, i, j] = z > GROW_SIGMA
                    seed[k, i, j] = z > SEED_SIGMA
    return grow, seed


def not_powder(sums: F64, level: F64, spots: npt.NDArray[np.bool_], good: npt.NDArray[np.bool_], signal: float) -> str:
    """Why the candidate spot voxels `spots` (n_scans, rows, cols) of the per-scan `sums` over their
    smooth `level` are not a powder ring's beside a particle's broad peak; "" when they are.

    A powder ring of other grains crosses a particle's peak window as compact spots, each over part
    of the eta range, beside the particle's broad peak (the smooth level). A pattern whose compact
    spots ARE the signal (many Bragg spots of a crystal or a powder filling the window, e.g. the
    tickit-devices EIGER2 frame, the same at every eta) fails one of, in this order:
    - no broad peak: the level above its median holds less than MIN_BROAD_SHARE of the ROI's
      signal (measured: tickit frame 0.5 %; size-12/24 powder-arcs maps 54 %/47 %);
    - present at every eta (3 scans or more): a spot pixel is a spot pixel in more than EVERY_ETA
      of the scans on average, weighted by its excess (tickit 100 %; powder-arcs 38 %/51 %: the
      simulated grains' spots rock over a fifth to a half of a 30-step scan);
    - most photons: the spots' excess holds more than MAX_SPOT_SHARE of the signal (tickit 13 %:
      its ROI holds much diffuse signal; powder-arcs 57 %/63 %).
    The signal is the per-scan sums above their median, over the ROI's good pixels."""
    signal = max(signal, 1e-12)
    broad = float(np.clip(level - np.median(level, axis=(1, 2), keepdims=True), 0.0, None)[:, good].sum()) / signal
    if broad < MIN_BROAD_SHARE:
        return (f"not powder spots: no broad peak beside the compact spots (the smooth level holds {broad:.1%} of the "
                f"ROI's signal, a particle's peak at least {MIN_BROAD_SHARE:.0%})")
    excess = np.where(spots, np.clip(sums - level, 0.0, None), 0.0)
    n_scans = sums.shape[0]
    if n_scans >= 3:
        persistence = float((excess * (spots.sum(axis=0) / n_scans)[None]).sum() / max(float(excess.sum()), 1e-12))
        if persistence > EVERY_ETA:
            return (f"not powder spots: the compact spots stand at {persistence:.0%} of the eta scans (a powder spot "
                    f"rocks over part of the scan, here at most {EVERY_ETA:.0%})")
    share = float(excess.sum()) / signal
    if share > MAX_SPOT_SHARE:
        return (f"not powder spots: the compact spots hold {share:.0%} of the ROI's signal (powder spots beside a "
                f"particle's peak: at most {MAX_SPOT_SHARE:.0%})")
    return ""


def _table(spots: npt.NDArray[np.bool_], eta: F64, roi: tuple[int, int, int, int], cols: int,
           good: npt.NDArray[np.bool_], shape: F64) -> SpotTable:
    """The SpotTable of spot voxels (n_scans, rows, cols) over the ROI window: each scan's spot pixels cut
    into TILE x TILE pieces, each with the ring of non-spot pixels around it (so a chain of spots along
    the arc is replaced by the level beside each piece, not by one mean along the chain)."""
    from scipy import ndimage
    r0, _, c0, _ = roi
    scans: list[float] = []
    scan_ptr, core_ptr, ring_ptr = [0], [0], [0]
    cores: list[I64] = []
    rings: list[I64] = []
    core_shapes: list[F64] = []
    ring_shapes: list[F64] = []
    rows_idx, cols_idx = np.indices(spots.shape[1:])
    tile = (rows_idx // TILE) * (spots.shape[2] // TILE + 1) + cols_idx // TILE
    for s in range(spots.shape[0]):
        here = spots[s]
        if not here.any():
            continue
        labels, _ = ndimage.label(here)
        spot_rows, spot_cols = np.nonzero(here)     # row-major, as each piece's pixels are listed
        pieces, piece_of = np.unique(labels[here] * (tile.max() + 1) + tile[here], return_inverse=True)
        by_piece = np.argsort(piece_of, kind="stable")
        core_r, core_c = spot_rows[by_piece], spot_cols[by_piece]
        sizes = np.bincount(piece_of, minlength=pieces.size)
        starts = np.concatenate(([0], np.cumsum(sizes)))
        reach = RING * RING_TRIES           # the farthest a ring may lie from its piece
        spans = np.stack([np.maximum(np.minimum.reduceat(core_r, starts[:-1]) - reach, 0),
                          np.minimum(np.maximum.reduceat(core_r, starts[:-1]) + reach + 1, here.shape[0]),
                          np.maximum(np.minimum.reduceat(core_c, starts[:-1]) - reach, 0),
                          np.minimum(np.maximum.reduceat(core_c, starts[:-1]) + reach + 1, here.shape[1])], axis=1)
        ring_r, ring_c, ring_at = _rings(here, good, core_r, core_c, starts, spans)
        ringed = np.diff(ring_at) > 0      # a piece without a ring (no good pixel near) is left as it is
        if not ringed.any():
            continue
        core_r, core_c = core_r[np.repeat(ringed, sizes)], core_c[np.repeat(ringed, sizes)]
        cores.append((core_r + r0) * cols + core_c + c0)
        core_shapes.append(shape[s, core_r, core_c])
        rings.append((ring_r + r0) * cols + ring_c + c0)
        ring_shapes.append(shape[s, ring_r, ring_c])
        core_ptr.extend((core_ptr[-1] + np.cumsum(sizes[ringed])).tolist())
        ring_ptr.extend((ring_ptr[-1] + np.cumsum(np.diff(ring_at)[ringed])).tolist())
        scans.append(float(eta[s]))
        scan_ptr.append(scan_ptr[-1] + int(ringed.sum()))
    if not scans:
        return SpotTable.empty()
    return SpotTable(np.array(scans), cols, np.array(scan_ptr, dtype=np.int64), np.array(core_ptr, dtype=np.int64),
                     np.concatenate(cores).astype(np.int64), np.array(ring_ptr, dtype=np.int64),
                     np.concatenate(rings).astype(np.int64), np.concatenate(core_shapes), np.concatenate(ring_shapes))


@numba.njit(cache=True, nogil=True)
def _rings(here, good, rows, cols, ptr, spans):  # type: ignore[no-untyped-def]
    """The ring of each spot piece of one scan's spot pixels `here` (rows, cols): piece k's pixels are
    ``rows[ptr[k]:ptr[k+1]]``, ``cols[...]``, its ring looked for in the window ``spans[k]`` (row from, to, column
    from, to: RING x RING_TRIES around it); the ring is the good non-spot pixels within RING (city-block) of the
    piece, within 2 RING, ... up to RING_TRIES RING until it holds MIN_RING_PIXELS (what RING-step cross dilations
    of the piece give). Returns (ring rows, ring cols, ring_ptr), each ring row-major; empty: no good pixel near."""
    n = ptr.size - 1
    room = 0
    for k in range(n):
        room += (spans[k, 1] - spans[k, 0]) * (spans[k, 3] - spans[k, 2])
    ring_r = np.empty(room, dtype=np.int64)
    ring_c = np.empty(room, dtype=np.int64)
    ring_ptr = np.zeros(n + 1, dtype=np.int64)
    m = 0
    for k in range(n):
        ra = spans[k, 0]
        ca = spans[k, 2]
        h = spans[k, 1] - ra
        w = spans[k, 3] - ca
        dist = np.full((h, w), h + w + 1)       # city-block distance to the piece: two raster passes
        for j in range(ptr[k], ptr[k + 1]):
            dist[rows[j] - ra, cols[j] - ca] = 0
        for i in range(h):
            for jj in range(w):
                d = dist[i, jj]
                if i > 0:
                    d = min(d, dist[i - 1, jj] + 1)
                if jj > 0:
                    d = min(d, dist[i, jj - 1] + 1)
                dist[i, jj] = d
        for i in range(h - 1, -1, -1):
            for jj in range(w - 1, -1, -1):
                d = dist[i, jj]
                if i < h - 1:
                    d = min(d, dist[i + 1, jj] + 1)
                if jj < w - 1:
                    d = min(d, dist[i, jj + 1] + 1)
                dist[i, jj] = d
        limit = 0
        for t in range(1, RING_TRIES + 1):
            limit = RING * t
            count = 0
            for i in range(h):
                for jj in range(w):
                    if dist[i, jj] <= limit and good[ra + i, ca + jj] and not here[ra + i, ca + jj]:
                        count += 1
            if count >= MIN_RING_PIXELS:
                break
        for i in range(h):
            for jj in range(w):
                if dist[i, jj] <= limit and good[ra + i, ca + jj] and not here[ra + i, ca + jj]:
                    ring_r[m] = ra + i
                    ring_c[m] = ca + jj
                    m += 1
        ring_ptr[k + 1] = m
    return ring_r[:m], ring_c[:m], ring_ptr


class ScanSums:
    """Sums of sampled frames per eta scan (full frames), the input of `find_spots` once the ROI is known.

    `n_scans` None (the live processor: a map's scans are known only as its frames come): the sums
    stop (`enabled` False) when one more scan would take them over MAX_SAMPLE_BYTES."""

    def __init__(self, frame_shape: tuple[int, int], n_scans: int | None = None) -> None:
        self.frame_shape = frame_shape
        self.enabled = (n_scans or 0) * frame_shape[0] * frame_shape[1] * 4 <= MAX_SAMPLE_BYTES
        self._sums: dict[float, npt.NDArray[np.float32]] = {}
        self._whole: tuple[npt.NDArray[np.uint8] | None, Voxels] | None = None   # the whole frame's search: (mask, found)

    def _scan(self, key: float) -> npt.NDArray[np.float32] | None:
        """The running sum of scan `key` (begun when new), None once over the memory budget."""
        total = self._sums.get(key)
        if total is None:
            if (len(self._sums) + 1) * self.frame_shape[0] * self.frame_shape[1] * 4 > MAX_SAMPLE_BYTES:
                self.enabled, self._sums = False, {}
                return None
            total = self._sums[key] = np.zeros(self.frame_shape, dtype=np.float32)
        return total

    def add(self, frames: npt.NDArray[np.generic], eta: npt.ArrayLike) -> None:
        """Add frames (k, rows, cols) taken at eta (k,)."""
        self._whole = None
        keys = np.round(np.asarray(eta, dtype=np.float64).reshape(-1), ETA_DECIMALS)
        edges = np.flatnonzero(keys[1:] != keys[:-1]) + 1     # frames come in runs of one eta scan
        for a, b in zip([0, *edges.tolist()], [*edges.tolist(), keys.size]):
            total = self._scan(float(keys[a])) if self.enabled else None
            if total is None:
                return
            total += frames[a:b].sum(axis=0, dtype=np.float32)

    def arrays(self) -> tuple[F64, npt.NDArray[np.float32]]:
        """(eta (n,), sums (n, rows, cols)) to ship to another process (`merge`); empty when disabled."""
        eta = np.array(sorted(self._sums)) if self.enabled else np.zeros(0)
        stack = np.stack([self._sums[e] for e in eta]) if eta.size else np.zeros((0, *self.frame_shape), np.float32)
        return eta, stack

    def merge(self, eta: npt.ArrayLike, sums: npt.NDArray[np.generic], enabled: bool = True) -> None:
        """Add another process's sums of the same map's frames (`arrays`); `enabled` False: it gave up on them."""
        self._whole = None
        if not enabled:
            self.enabled, self._sums = False, {}
        for e, image in zip(np.asarray(eta, dtype=np.float64).reshape(-1), sums):
            total = self._scan(float(e)) if self.enabled else None
            if total is None:
                return
            total += image

    def without_spots(self, mask: npt.NDArray[np.uint8] | None) -> F64 | None:
        """The sums added over the scans with the spots found on the whole frame replaced by the level around
        them (the particle's local shape), for the auto ROI: a grain's spot at another 2θ than the particle's
        would stretch the ROI to it (none when no spot is found or the sums were not kept)."""
        if not self.enabled or not self._sums:
            return None
        good = np.ones(self.frame_shape, dtype=bool) if mask is None else mask == 0
        sums = np.where(good, np.stack([self._sums[e] for e in sorted(self._sums)]), 0.0)
        found = spot_voxels(sums, good)
        self._whole = (None if mask is None else mask.copy(), found)
        spots, shape, _ = found
        return None if spots is None else np.where(spots, shape, sums).sum(axis=0)

    def spots(self, roi: tuple[int, int, int, int], mask: npt.NDArray[np.uint8] | None) -> SpotTable:
        """The spots these sums show inside `roi` (none when the sums were too large to keep)."""
        if not self.enabled:
            return SpotTable.empty(f"not searched: the map's per-eta-scan sums would exceed {MAX_SAMPLE_BYTES >> 20} MiB")
        if not self._sums:
            return SpotTable.empty()
        r0, r1, c0, c1 = roi
        eta = np.array(sorted(self._sums))
        found = self._searched(roi, mask)
        if found is not None:
            return spot_table(found, eta, roi, self.frame_shape, np.ones(self.frame_shape, bool) if mask is None else mask == 0)
        stack = np.stack([self._sums[e][r0:r1, c0:c1] for e in eta]).astype(np.float64)
        return find_spots(stack, eta, roi, self.frame_shape, mask)

    def _searched(self, roi: tuple[int, int, int, int], mask: npt.NDArray[np.uint8] | None) -> Voxels | None:
        """What `without_spots` found when `roi` is the whole frame and the mask the same (the same search: the
        full-frame ROI of a map whose peak fills its frames, e.g. the bench map), else None."""
        if self._whole is None or roi != (0, self.frame_shape[0], 0, self.frame_shape[1]):
            return None
        searched, found = self._whole
        same = (mask is None and searched is None) or (mask is not None and searched is not None
                                                        and np.array_equal(mask != 0, searched != 0))
        return found if same else None


@numba.njit(cache=True, nogil=True)
def _spot_moments(frame, scan, scan_ptr, core_ptr, core_pix, ring_ptr, ring_pix, core_shape, ring_shape, q_lab, r0, c0,
                  threshold, frame_sigma, out):  # type: ignore[no-untyped-def]
    """Lab moments (10) of (level − kept count) over the spot pixels of one frame of scan `scan`, the
    level being the particle's local shape scaled to the ring's counts; returns the counts taken out."""
    for k in range(10):
        out[k] = 0.0
    cols = frame.shape[1]
    removed = 0.0
    for s in range(scan_ptr[scan], scan_ptr[scan + 1]):
        ring = 0.0
        ring_level = 0.0
        for j in range(ring_ptr[s], ring_ptr[s + 1]):
            v = frame[ring_pix[j] // cols, ring_pix[j] % cols]
            if v >= threshold:
                ring += v
            ring_level += ring_shape[j]
        scale = ring / ring_level
        if frame_sigma > 0.0:     # replace only where this frame shows the spot: elsewhere the fill's bias is all it adds
            held = 0.0
            expected = 0.0
            for j in range(core_ptr[s], core_ptr[s + 1]):
                v = frame[core_pix[j] // cols, core_pix[j] % cols]
                held += np.float64(v) if v >= threshold else 0.0
                expected += scale * core_shape[j]
            if held - expected < frame_sigma * np.sqrt(expected + 1.0):
                continue
        for j in range(core_ptr[s], core_ptr[s + 1]):
            r = core_pix[j] // cols
            c = core_pix[j] % cols
            v = frame[r, c]
            kept = np.float64(v) if v >= threshold else 0.0
            removed += kept
            w = scale * core_shape[j] - kept
            q = q_lab[r - r0, c - c0]
            qx, qy, qz = q[0], q[1], q[2]
            out[0] += w
            out[1] += w * qx
            out[2] += w * qy
            out[3] += w * qz
            out[4] += w * qx * qx
            out[5] += w * qx * qy
            out[6] += w * qx * qz
            out[7] += w * qy * qy
            out[8] += w * qy * qz
            out[9] += w * qz * qz
    return removed


@numba.njit(cache=True, nogil=True)
def correct_block(frames, scans, etas, phis, pixels, monitors, scan_ptr, core_ptr, core_pix, ring_ptr, ring_pix,
                  core_shape, ring_shape, q_lab, r0, c0, threshold, frame_sigma, sum_i, sum_iq, sum_iqq, pixel_sums):  # type: ignore[no-untyped-def]
    """Replace the spot pixels of each frame (k, rows, cols) whose scan (k,) holds spots (-1: none) by
    their ring's level, in the sums the moment kernel filled (`MomentAccumulator.state()` arrays):
    Σ I, Σ I·q, Σ I·q⊗q (rotated into the sample frame as the kernel does) and the Σ I·η, Σ I·η²
    columns of `pixel_sums`. Returns the counts taken out (monitor-normalised)."""
    moments = np.empty(10)
    s1 = np.empty(3)
    s2 = np.empty((3, 3))
    removed = 0.0
    for f in range(frames.shape[0]):
        scan = scans[f]
        if scan < 0:
            continue
        weight = 1.0 / monitors[f]
        removed += weight * _spot_moments(frames[f], scan, scan_ptr, core_ptr, core_pix, ring_ptr, ring_pix, core_shape,
                                          ring_shape, q_lab, r0, c0, threshold, frame_sigma, moments)
        m = sample_matrix(etas[f], phis[f])
        s1[0], s1[1], s1[2] = moments[1], moments[2], moments[3]
        s2[0, 0], s2[0, 1], s2[0, 2] = moments[4], moments[5], moments[6]
        s2[1, 0], s2[1, 1], s2[1, 2] = moments[5], moments[7], moments[8]
        s2[2, 0], s2[2, 1], s2[2, 2] = moments[6], moments[8], moments[9]
        p = pixels[f]
        sum_i[p] += weight * moments[0]
        for a in range(3):      # q_sample = Mᵀ q_lab: Σ w q_s = Mᵀ Σ w q_l, Σ w q_s q_sᵀ = Mᵀ (Σ w q_l q_lᵀ) M
            acc = 0.0
            for k in range(3):
                acc += m[k, a] * s1[k]
            sum_iq[p, a] += weight * acc
            for b in range(3):
                acc = 0.0
                for k in range(3):
                    for l in range(3):
                        acc += m[k, a] * s2[k, l] * m[l, b]
                sum_iqq[p, a, b] += weight * acc
        pixel_sums[p, 1] += weight * moments[0] * etas[f]
        pixel_sums[p, 2] += weight * moments[0] * etas[f] * etas[f]
    return removed
