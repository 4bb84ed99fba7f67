"""Moments summed per eta scan, so the scans of a drifting sample can be registered before they add up.

A map is taken one eta (rocking angle) at a time, over minutes each, and the sample creeps in
between: map pixel m of eta scan i saw the particle at m − shift[i]. `EtaScanAccumulator` is a
`MomentAccumulator` whose sums have one slot per eta scan (frames are told apart by their eta),
so at the end each scan's background-corrected moments are moved back by its shift (bilinear,
photons conserved: `registration.resample`) and only then added into the map's moments. The
mask and the intensity map come from the Σ I the shifted scans imply unblurred
(`scan_combine.sharp_intensity`: the move back blurs a sharp particle edge a second time, which
lifted outside pixels over the 20 % line). Pixels of the reference frame that some scan with
signal never measured (it drifted off the grid there) are masked. Partial maps (`finalize(partial=True)`,
the live previews) add the scans unmoved. A registration that moves no scan (it declined: no drift
seen) makes the map `--register off` makes.

Shifts are found from the scans' intensity maps (`registration.register_eta_scans`, "auto") or
from their maps of the tilt that rocking does not move (`registration.register_eta_scans_by_tilt`,
"tilt"), given per
scan (`ManualShifts`, e.g. a TOML file as XSOCS lets users edit its shifts), or switched off.
The state carries the scans' eta values (``scan_eta``) beside the usual sums, so accumulators
that met the scans in different orders (fan-out workers, Dask tasks) still merge.

Frames whose eta is read back per frame (an encoder's jitter) or swept are not eta scans
(`holds_eta_scans`). `opmon process` sees that before any frame; the live processor learns a map's
frames as they come, so a registering accumulator adds its scans into one set of sums (a plain
`MomentAccumulator`'s, from then on) once its eta values pass what eta scans of the map's frame count
can take (`expect_frames`), or, the count unknown (the bluesky path's map_start carries none), once
its per-scan sums would pass SCAN_SUMS_BYTES, and at the latest at the map's end: the map is then
the one `opmon process` makes of the archived file, unregistered.
"""
from __future__ import annotations

import copy
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError, MapIndexError, OpmonError
from opmon.processors.accumulate import PER_PIXEL_KEYS, SHIPPED_KEYS, MomentAccumulator
from opmon.processors.maps import FLAG_EDGE, MapResult, derive_maps, map_flags
from opmon.processors.peak_fit import PeakFitModel, fit_gauss
from opmon.processors.registration import coverage, register_eta_scans, register_eta_scans_by_tilt, resample
from opmon.processors.registration_model import register_eta_scans_by_model
from opmon.processors.roi_cut import EdgeCut
from opmon.processors.scan_combine import registered_sums, sharp_intensity

F64 = npt.NDArray[np.float64]

ETA_DECIMALS = 5          # frames whose eta agrees to 1e-5 deg belong to one eta scan
COVERED = 0.999           # a pixel is kept only if the scans covering it hold this share of Σ I
SCAN_ETA = "scan_eta"     # state key: eta (deg) of each scan slot
#: per-scan sums a registering accumulator keeps while its map's frame count is unknown; past them, with more eta
#: values than eta scans of its frames so far take, they are taken for eta per frame (a 100 x 100 map: ~235 scans)
SCAN_SUMS_BYTES = 1 << 30
SLOT_GROWTH = 1.5         # the per-scan sums grow by this factor: a scan at a time copies them O(log n) times, not n

log = logging.getLogger(__name__)
_ETA_SCALE = 10.0 ** ETA_DECIMALS


def eta_key(eta: float) -> float:
    """`np.round(eta, ETA_DECIMALS)` of one float, as numpy computes it (scaled, `rint`, scaled back: the same
    float) without numpy's scalar overhead: the live path rounds every frame's eta (3.5 µs -> 0.15 µs)."""
    return round(eta * _ETA_SCALE) / _ETA_SCALE


@dataclass(frozen=True)
class ManualShifts:
    """Shifts (dy, dx) in map pixels given per eta scan, in increasing eta, and where they came from."""

    shifts: F64
    source: str
    eta: F64 | None = None    # the scans' eta values, when given: checked against the map's

    def describe(self) -> str:
        return f"manual ({self.source})"


Registration = Literal["auto", "tilt", "off"] | ManualShifts


def holds_eta_scans(eta: npt.ArrayLike, map_pixels: int) -> bool:
    """Are the frames eta scans of the map (each eta value, to `ETA_DECIMALS`, shared by about a scan's worth of
    map points), so that they can be registered? Eta read back per frame (an encoder's jitter) or swept through
    the map gives nearly every frame its own value: one scan slot each, reallocated as each appears (3,000 frames
    of a 40 x 40 map: ~4x slower than the map itself, and 13 doubles per slot and map pixel)."""
    values = np.round(np.asarray(eta, dtype=np.float64).reshape(-1), ETA_DECIMALS)
    if values.size == 0:
        return True
    return np.unique(values).size <= scan_limit(values.size, map_pixels)


def scan_limit(n_frames: int, map_pixels: int) -> int:
    """The most distinct eta values `n_frames` frames of a map of `map_pixels` points take as eta scans (each
    value shared by about a scan's worth of map points, half of them at least): `holds_eta_scans`' rule."""
    return max(2, 2 * int(n_frames) // max(int(map_pixels), 1))


def summed_over_scans(state: dict[str, np.ndarray], n_pixels: int) -> dict[str, np.ndarray]:
    """A per-scan state (`EtaScanAccumulator.state`) with its scans added together: a plain `MomentAccumulator`'s."""
    n = np.asarray(state[SCAN_ETA]).size
    out = {key: value for key, value in state.items() if key != SCAN_ETA}
    for key in PER_PIXEL_KEYS:
        if key in out:
            sums = np.asarray(out[key])
            out[key] = sums.reshape((n, n_pixels) + sums.shape[1:]).sum(axis=0, dtype=sums.dtype)
    return out


def read_shifts_file(path: str | Path) -> ManualShifts:
    """A TOML file of shifts per eta scan: ``shifts = [[dy, dx], ...]`` in map pixels, one per eta
    scan in increasing eta (optionally ``eta = [...]``, deg, checked against the map's scans).

    Raises
    ------
    ConfigError
        naming the file and what is wrong (missing, not TOML, wrong shape, not finite).
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"--register {p}: no such file (give auto, tilt, off or a TOML file of shifts)") from exc
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--register {p}: not a readable TOML file ({exc})") from exc
    try:
        shifts = np.asarray(data["shifts"], dtype=np.float64)
    except KeyError as exc:
        raise ConfigError(f"--register {p}: no 'shifts' key (shifts = [[dy, dx], ...], map pixels, one per eta scan)") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--register {p}: 'shifts' must be a list of [dy, dx] number pairs") from exc
    if shifts.ndim != 2 or shifts.shape[1] != 2 or shifts.shape[0] < 1 or not np.isfinite(shifts).all():
        raise ConfigError(f"--register {p}: 'shifts' must be a non-empty list of finite [dy, dx] pairs, "
                          f"got shape {shifts.shape}")
    eta = None
    if "eta" in data:
        try:
            eta = np.asarray(data["eta"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--register {p}: 'eta' must be a list of numbers (deg)") from exc
        if eta.shape[0] != shifts.shape[0]:
            raise ConfigError(f"--register {p}: {eta.shape[0]} eta values for {shifts.shape[0]} shifts")
    return ManualShifts(shifts, str(p), eta)


def parse_registration(value: str) -> Registration:
    """`auto`, `tilt`, `off`, or the path of a TOML file of shifts (`read_shifts_file`)."""
    if value in ("auto", "tilt", "off"):
        return value  # type: ignore[return-value]
    return read_shifts_file(value)


def check_manual_shifts(registration: Registration, eta: npt.ArrayLike, label: str) -> None:
    """Before any frame is read: given shifts must be one per eta scan of the map (and match its eta values).

    Raises
    ------
    ConfigError
        naming the file, the map and the counts.
    """
    if not isinstance(registration, ManualShifts):
        return
    scans = np.unique(np.round(np.asarray(eta, dtype=np.float64), ETA_DECIMALS))
    if registration.shifts.shape[0] != scans.size:
        raise ConfigError(f"--register {registration.source}: {registration.shifts.shape[0]} shifts for the "
                          f"{scans.size} eta scans of {label} (one [dy, dx] per eta scan, in increasing eta)")
    if registration.eta is not None and not np.allclose(np.sort(registration.eta), scans, atol=5 * 10.0 ** -ETA_DECIMALS):
        raise ConfigError(f"--register {registration.source}: its eta values do not match the eta scans of {label} "
                          f"({scans[0]:.5f}..{scans[-1]:.5f} deg)")


def add_states(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Two accumulators' states added (per-scan states matched by their scans' eta), without an accumulator."""
    if SCAN_ETA not in a and SCAN_ETA not in b:
        return {key: a[key] + b[key] for key in SHIPPED_KEYS if key in a and key in b}
    if SCAN_ETA not in a or SCAN_ETA not in b:
        raise OpmonError("cannot add a per-eta-scan state to a plain one")
    ea, eb = (np.round(np.asarray(s[SCAN_ETA], dtype=np.float64), ETA_DECIMALS) for s in (a, b))
    if ea.size == 0 or eb.size == 0:
        return {key: np.array(value) for key, value in (b if ea.size == 0 else a).items()}
    n_pixels = a["sum_i"].shape[0] // ea.size
    eta = np.unique(np.concatenate([ea, eb]))
    out: dict[str, np.ndarray] = {SCAN_ETA: eta}
    for key in SHIPPED_KEYS:
        if key not in PER_PIXEL_KEYS:       # not per map pixel (background image, angle sums): plain addition
            if key in a and key in b:
                out[key] = a[key] + b[key]
            continue
        tail = a[key].shape[1:]
        total = np.zeros((eta.size, n_pixels) + tail, dtype=a[key].dtype)
        for e, s in ((ea, a), (eb, b)):
            total[np.searchsorted(eta, e)] += s[key].reshape((e.size, n_pixels) + tail)
        out[key] = total.reshape((eta.size * n_pixels,) + tail)
    return out


def describe(registration: Registration) -> str:
    """How the eta scans were registered, for the maps' attributes."""
    return registration.describe() if isinstance(registration, ManualShifts) else str(registration)


class EtaScanAccumulator(MomentAccumulator):
    """A `MomentAccumulator` with one slot of sums per eta scan; `finalize` registers the scans.

    Takes the options of `MomentAccumulator` plus `registration` ("auto", a `ManualShifts`; "off"
    only with a peak fit, which needs the per-scan sums) and `peak_fit` ("gauss": the final map
    also gets `MapResult.fit`, `peak_fit.fit_gauss` of the registered scans). Registering ("auto"
    or "tilt") without a fit, frames that turn out not to be eta scans are added into one set of
    sums (`per_scan` False, see the module's docstring): the map `opmon process` makes of them.
    """

    def __init__(self, *args: Any, registration: Registration = "auto", peak_fit: PeakFitModel = "off",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if registration == "off" and peak_fit == "off":
            raise OpmonError("EtaScanAccumulator registers eta scans: use MomentAccumulator when registration is off")
        self.registration = registration
        self.peak_fit = peak_fit
        self.n_pixels = self.map_shape[0] * self.map_shape[1]
        self.guarded = registration in ("auto", "tilt") and peak_fit == "off"   # may give the scans up (else needs them)
        self.per_scan = True             # sums kept per eta scan (False: the frames are not eta scans)
        self.expected_frames = 0         # the map's frame count, once known (0: not yet)
        self.scan_eta = np.zeros(0)
        self._slot_of: dict[float, int] = {}
        self._buffers: dict[str, np.ndarray] = {}   # the sums' storage, grown geometrically; the sums are views of it
        self._row_bytes = sum(getattr(self, key).nbytes for key in PER_PIXEL_KEYS) // self.n_pixels
        self._resize(0)

    # -- slots ----------------------------------------------------------------------------------
    def _resize(self, n_slots: int) -> None:
        """Make the sums `n_slots` scans long (new scans start at zero): views of buffers that grow by SLOT_GROWTH,
        so eta scans met one at a time copy the sums a few times, not once per scan (O(n²) in all: a 100 x 100 map
        of 100 scans copied ~23 GB)."""
        rows = n_slots * self.n_pixels
        for key in PER_PIXEL_KEYS:
            used = getattr(self, key)
            buffer = self._buffers.get(key)
            if buffer is None or buffer.shape[0] < rows:
                size = max(rows, int(SLOT_GROWTH * (buffer.shape[0] if buffer is not None else 0)) // self.n_pixels
                           * self.n_pixels)
                buffer = self._buffers[key] = np.zeros((size,) + used.shape[1:], dtype=used.dtype)
                keep = min(rows, used.shape[0])
                buffer[:keep] = used[:keep]
            elif rows > used.shape[0]:
                buffer[used.shape[0]:rows] = 0      # rows left over from sums given up (`load_state(add=False)`)
            setattr(self, key, buffer[:rows])

    def _slots(self, eta: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """The scan slot of each eta, new scans added (all slot 0 once the frames are found not to be eta scans)."""
        keys = np.round(np.asarray(eta, dtype=np.float64).reshape(-1), ETA_DECIMALS)
        if not self.per_scan:
            return np.zeros(keys.size, dtype=np.int64)
        if keys.size and keys[0] == keys[-1] and float(keys[0]) in self._slot_of and (keys == keys[0]).all():
            return np.full(keys.size, self._slot_of[float(keys[0])], dtype=np.int64)   # a block inside one scan: no sort
        unique, inverse = np.unique(keys, return_inverse=True)
        slots = np.empty(unique.size, dtype=np.int64)
        new = [float(k) for k in unique if float(k) not in self._slot_of]
        if new:
            if self._too_many(len(self._slot_of) + len(new)):
                self._give_up_scans(len(self._slot_of) + len(new))
                return np.zeros(keys.size, dtype=np.int64)
            for k in new:
                self._slot_of[k] = len(self._slot_of)
            self.scan_eta = np.concatenate([self.scan_eta, new])
            self._resize(len(self._slot_of))
        for j, k in enumerate(unique):
            slots[j] = self._slot_of[float(k)]
        return slots[inverse.reshape(-1)]

    def expect_frames(self, n_frames: int) -> None:
        """The map's frame count is known (live: its map_start, or the map's end): the sums stop being kept per
        scan as soon as the eta values met pass what eta scans of that many frames take (`scan_limit`)."""
        self.expected_frames = max(int(n_frames), 0)
        if self.per_scan and self._too_many(self.scan_eta.size):
            self._give_up_scans(self.scan_eta.size)

    def _too_many(self, n_slots: int, n_frames: int = 0) -> bool:
        """Are `n_slots` eta values more than eta scans of the map's frames (its expected count, else `n_frames`)
        take? With no count: more per-scan sums than SCAN_SUMS_BYTES, and more values than eta scans of the frames
        so far take (scans met one at a time never are; a map rocking at each point, its scans all met at its
        first point, only past its first half). Never when the scans are needed (a peak fit)."""
        if not self.guarded:
            return False
        count = self.expected_frames or n_frames
        if count:
            return n_slots > scan_limit(count, self.n_pixels)
        return n_slots * self.n_pixels * self._row_bytes > SCAN_SUMS_BYTES and \
            n_slots > scan_limit(self.frames_seen, self.n_pixels)    # (summed only past the bytes: per new scan)

    def _give_up_scans(self, n_values: int) -> None:
        """The frames are not eta scans: the scans' sums added into one, where every later frame goes too."""
        count = self.expected_frames or self.frames_seen
        log.info("map %s: eta takes %d or more values over %s frames, not one per eta scan of the map: the scans are "
                 "not registered", self.map_shape, n_values,
                 count if self.expected_frames else f"{count} (so far)")
        summed = summed_over_scans({SCAN_ETA: self.scan_eta, **{k: getattr(self, k) for k in PER_PIXEL_KEYS}},
                                   self.n_pixels)
        for key in PER_PIXEL_KEYS:
            setattr(self, key, summed[key])
        self.per_scan, self.scan_eta, self._slot_of, self._buffers = False, np.zeros(0), {}, {}

    def _restart_scans(self) -> None:
        """Empty sums, kept per scan again (`load_state(add=False)`)."""
        if not self.per_scan:
            for key in PER_PIXEL_KEYS:
                setattr(self, key, getattr(self, key)[:0])
        self.per_scan, self.scan_eta, self._slot_of = True, np.zeros(0), {}
        self._resize(0)

    def _check_index(self, index: npt.NDArray[np.int64]) -> None:
        bad = (index < 0) | (index >= self.n_pixels)
        if bad.any():
            raise MapIndexError(f"map index {int(index[np.argmax(bad)])} outside 0..{self.n_pixels - 1} of map {self.map_shape}")

    # -- frames ---------------------------------------------------------------------------------
    def process_frame(self, frame: npt.NDArray[Any], map_index: int, eta: float, phi: float, nu: float, delta: float,
                      monitor: float | None = None) -> None:
        """Add one frame to map pixel `map_index` of its eta scan."""
        self._check_index(np.array([int(map_index)]))
        if not np.isfinite(eta):
            raise OpmonError(f"non-finite angle among eta/phi/nu/delta = {eta}, {phi}, {nu}, {delta}")
        slot = self._slot_of.get(eta_key(float(eta))) if self.per_scan else 0   # one dict look-up
        if slot is None:
            slot = int(self._slots([eta])[0])
        super().process_frame(frame, slot * self.n_pixels + int(map_index), eta, phi, nu, delta, monitor)

    def process_block(self, frames: npt.NDArray[Any], map_index: npt.ArrayLike, eta: npt.ArrayLike,
                      phi: npt.ArrayLike, nu: npt.ArrayLike, delta: npt.ArrayLike,
                      monitor: npt.ArrayLike | None = None) -> None:
        """Add a block of frames, each to its map pixel of its eta scan."""
        index = np.asarray(map_index, dtype=np.int64).reshape(-1)
        if frames.ndim != 3 or index.shape != (frames.shape[0],):
            super().process_block(frames, map_index, eta, phi, nu, delta, monitor)   # raises, naming the shapes
            return
        etas = np.broadcast_to(np.asarray(eta, dtype=np.float64), index.shape)
        self._check_index(index)
        if not np.isfinite(etas).all():
            raise OpmonError("non-finite angle among the frames' eta/phi/nu/delta")
        super().process_block(frames, self._slots(etas) * self.n_pixels + index, etas, phi, nu, delta, monitor)

    # -- state ----------------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """The sums of every scan slot, and each slot's eta (`SCAN_ETA`); the plain sums once the frames are found
        not to be eta scans (an accumulator given them adds its scans together too: `load_state`)."""
        if not self.per_scan:
            return super().state()
        return {**super().state(), SCAN_ETA: self.scan_eta.copy()}

    def collapsed_state(self) -> dict[str, np.ndarray]:
        """The sums with the scans added together: a plain `MomentAccumulator`'s state, all a
        partial map needs (partial maps are not registered), and n_scans times smaller: a fan-out
        worker ships its partial sums four times a second (100 x 100 pixels x 40 scans: 184 MB)."""
        state = MomentAccumulator.state(self)
        if not self.per_scan:
            return state
        n = self.scan_eta.size
        for key in PER_PIXEL_KEYS:
            sums = state[key]
            state[key] = sums.reshape((n, self.n_pixels) + sums.shape[1:]).sum(axis=0, dtype=sums.dtype)
        return state

    def load_state(self, state: dict[str, np.ndarray], add: bool = True) -> None:
        """Add (or replace with) another accumulator's sums, scan by scan (matched by eta); a plain state (its
        frames found not to be eta scans), or more scans than the map's frames take, adds the scans together."""
        if not add:
            self.reset()
            self._restart_scans()
        if SCAN_ETA not in state and (self.per_scan and not self.guarded):
            raise OpmonError("state without per-scan sums (scan_eta) cannot load into an eta-scan accumulator")
        theirs_eta = np.asarray(state.get(SCAN_ETA, ()), dtype=np.float64).reshape(-1)
        if self.per_scan and SCAN_ETA in state:
            keys = np.unique(np.round(theirs_eta, ETA_DECIMALS))
            merged = len(self._slot_of) + sum(float(k) not in self._slot_of for k in keys)
            if self._too_many(merged):
                self._give_up_scans(merged)
        elif self.per_scan:
            self._give_up_scans(self.scan_eta.size)
        if not self.per_scan:
            MomentAccumulator.load_state(self, summed_over_scans(state, self.n_pixels) if SCAN_ETA in state else state)
            return
        slots = self._slots(theirs_eta) if theirs_eta.size else np.zeros(0, dtype=np.int64)
        n = theirs_eta.size
        self._fold_angles()
        for key in SHIPPED_KEYS:
            mine = getattr(self, key)
            if key not in PER_PIXEL_KEYS:   # the background image, the angle sums: added as they are
                if key not in state:
                    continue
                theirs = np.asarray(state[key])
                if theirs.shape != mine.shape:
                    raise OpmonError(f"state {key!r} has shape {theirs.shape}, expected {mine.shape}")
                mine += theirs
                continue
            theirs = np.asarray(state[key])
            if theirs.shape != (n * self.n_pixels,) + mine.shape[1:]:
                raise OpmonError(f"state {key!r} has shape {theirs.shape}, expected {(n * self.n_pixels,) + mine.shape[1:]}")
            # the slot count given, not -1: a sum with no basis terms (a fixed background: (rows, 0, 3)) has size 0
            view = mine.reshape((mine.shape[0] // self.n_pixels, self.n_pixels) + mine.shape[1:])
            view[slots] += theirs.reshape((n, self.n_pixels) + mine.shape[1:])

    # -- results --------------------------------------------------------------------------------
    def finalize(self, partial: bool = False) -> MapResult:
        """The map: scans registered and added (final), or added as they are (partial); frames that are not eta
        scans of the map (`scan_limit` of its frames: `opmon process`'s rule) make the unregistered map."""
        if self.per_scan and not partial and self._too_many(self.scan_eta.size, self.frames_seen):
            self._give_up_scans(self.scan_eta.size)
        if not self.per_scan:
            return MomentAccumulator.finalize(self, partial)
        ny, nx = self.map_shape
        n = self.scan_eta.size
        flat_s0, flat_s1, flat_s2, per_frame, scale = self.corrected_sums()
        s0, s1, s2 = (a.reshape((n, ny, nx) + a.shape[1:]) for a in (flat_s0, flat_s1, flat_s2))
        background = self.measured_background(per_frame)
        frames = self.n_frames.reshape(n, ny, nx).sum(axis=0) if n else np.zeros((ny, nx), dtype=np.int64)
        order = np.argsort(self.scan_eta)
        if partial or n == 0:   # the scans added as they are
            result = derive_maps(s0.sum(axis=0), s1.sum(axis=0), s2.sum(axis=0), frames, background=background,
                                 require_signal=not partial, background_counts=per_frame * scale * frames)
            self._flagged(result, result.intensity, per_frame, scale)
            self.flag_truncated(result, s0.sum(axis=0), s2.sum(axis=0))
            return result
        shifts = self._shifts(s0[order], s1[order])
        if self.registration in ("auto", "tilt") and self.peak_fit == "off" and not shifts.any():
            return self._unmoved(shifts)
        t0, t1, t2 = registered_sums(s0[order], s1[order], s2[order], shifts)
        sharp = sharp_intensity(s0[order], shifts, t0)
        weights = np.clip(s0[order].sum(axis=(1, 2)), 0.0, None)
        covered = coverage((ny, nx), shifts, weights) >= COVERED
        result = derive_maps(t0, t1, t2, frames, background=background, background_counts=per_frame * scale * frames,
                             sharp_i=sharp)
        lost = (~covered) & (result.mask > 0)
        if lost.any():
            result.mask = np.where(covered, result.mask, 0).astype(np.uint8)
            for name in ("d_spacing", "tilt_altitude", "tilt_azimuth", "peak_width"):
                setattr(result, name, np.where(covered, getattr(result, name), np.nan))
            result.q = np.where(covered[..., None], result.q, np.nan)
        if self.registration != "off":      # scans kept apart for the peak fit only: no shifts to report
            result.eta_scans = self.scan_eta[order].copy()
            result.eta_shifts = shifts
        self._flagged(result, t0, per_frame, scale)
        self.flag_truncated(result, t0, t2)
        if self.peak_fit == "gauss":
            moved = [tuple(resample(s[slot], shifts[rank]) for s in (s0, s1, s2)) for rank, slot in enumerate(order)]
            counts = self.n_frames.reshape(n, ny, nx)[order] * per_frame * scale
            variance = np.stack([np.clip(m[0], 0.0, None) for m in moved]) + counts
            result.fit = fit_gauss(self.scan_eta[order], np.stack([m[0] for m in moved]), np.stack([m[1] for m in moved]),
                                   np.stack([m[2] for m in moved]), variance, result.mask > 0, self._edge_cut(result))
        return result

    def _unmoved(self, shifts: F64) -> MapResult:
        """The final map when registration moved no scan (it declined: no drift seen): the map `--register off`
        makes, from the scans' sums added together in a plain `MomentAccumulator` (its background fit picks the
        map points off the particle per map pixel; per scan here it moved the truth harness's maps without drift
        by up to 12 % in median |Δd|), with the zero shifts recorded."""
        state = self.collapsed_state()     # first: it folds the live path's angle sums, which the copy then shares
        plain = copy.copy(self)
        plain.__class__ = MomentAccumulator
        for key in PER_PIXEL_KEYS:
            setattr(plain, key, state[key])
        result = MomentAccumulator.finalize(plain)
        result.eta_scans = np.sort(self.scan_eta)
        result.eta_shifts = shifts
        return result

    def _edge_cut(self, result: MapResult) -> EdgeCut | None:
        """The map's window, mean angles and pixels flagged cut by it, for the fit's ROI-cut correction."""
        angles = self.mean_angles()
        if angles is None or result.flags is None:
            return None
        return EdgeCut(self.geometry, tuple(int(v) for v in self.roi), angles,  # type: ignore[arg-type]
                       (result.flags & FLAG_EDGE) > 0)

    def _flagged(self, result: MapResult, s0: F64, per_frame: float, scale: float) -> None:
        """The low-count and rocking-range flags, from the rocking sums of every scan added per map
        pixel (not moved: the rocking flag asks where each pixel's peak sits in eta)."""
        ny, nx = self.map_shape
        n = max(self.scan_eta.size, 1)

        def summed(values: np.ndarray) -> F64:
            return values.reshape(n, ny, nx).sum(axis=0) if self.scan_eta.size else np.zeros((ny, nx))
        eta_i = summed((self.eta_sum_i - per_frame * self.eta_sum) * scale)
        eta_i2 = summed((self.eta_sum_i2 - per_frame * self.eta_sum2) * scale)
        result.flags = map_flags(s0, eta_i, eta_i2, summed(self.eta_sum), summed(self.eta_sum2),
                                 result.frames, self.low_counts)

    def _shifts(self, stack: F64, centroids: F64) -> F64:
        """(n, 2) shifts of the scans (in increasing eta) from the data or as given: `stack` is
        Σ I per scan (n, ny, nx), `centroids` Σ I·q (n, ny, nx, 3)."""
        reg = self.registration
        if reg == "off":        # kept per scan for the peak fit only: nothing moves
            return np.zeros((stack.shape[0], 2))
        if isinstance(reg, ManualShifts):
            check_manual_shifts(reg, self.scan_eta, f"map {self.map_shape}")
            return np.asarray(reg.shifts, dtype=np.float64).copy()
        if reg == "tilt":
            angles = self.mean_angles()
            start = register_eta_scans_by_tilt(stack, centroids, angles[1] if angles is not None else 0.0)
            if not start.any():     # no drift seen: the model, tried from zero, found none on any truth map either
                return start        # (and costs 0.4-1.5 s on a 24 x 24 map)
            return register_eta_scans_by_model(stack, np.sort(self.scan_eta), start)   # refined, or `start` unchanged
        return register_eta_scans(stack)
