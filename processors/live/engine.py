"""The live engine: one run's bookkeeping around the accumulator, the same in every executor.

`LiveRun` is what the inline processor, each fan-out worker and the fan-out coordinator know
of a run: its start (geometry, mask), the options recorded with every map (ROI, threshold,
background), the auto-ROI decision still to make, and its maps (`LiveMap`), each with the
additive sums of a `MomentAccumulator`. Executors differ only in who feeds it: the inline
processor `accumulate`s every frame, a worker the frames it was dealt, the coordinator
`merged`s the workers' sums (LiberTEM's UDF/executor split). Stream checks and loss by
sequence number stay with the receiver (`opmon.streaming.receiver`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.errors import ConfigError
from opmon.processors.accumulate import MomentAccumulator, Roi
from opmon.processors.dose import DoseLedger, DoseSettings
from opmon.processors.eta_scans import EtaScanAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.live.held_frames import HeldFrames
from opmon.processors.live.roi import MapPicks, RoiDecider
from opmon.processors.offline import MapPlan
from opmon.processors.powder_spots import SpotTable
from opmon.streaming.receiver import RunShapes

log = logging.getLogger(__name__)

#: the next map keeps the ROI while the one its peak asks for sticks out of it by at most this many pixels
FOLLOW_SLACK = 2


def holds(roi: Roi, wanted: Roi, slack: int = FOLLOW_SLACK) -> bool:
    """`roi` holds `wanted` but for at most `slack` pixels on any side."""
    r0, r1, c0, c1 = roi
    w0, w1, v0, v1 = wanted
    return w0 >= r0 - slack and w1 <= r1 + slack and v0 >= c0 - slack and v1 <= c1 + slack


def geometry_of(start: dict[str, Any]) -> DetectorGeometry:
    """DetectorGeometry from a run's start header (protocol field names)."""
    return DetectorGeometry(float(start["energy_ev"]), float(start["distance_m"]), tuple(start["pixel_size_m"]),
                            tuple(start["beam_center"]), tuple(start["frame_shape"]))


def initial_roi(setting: Any, start: dict[str, Any]) -> Roi | None:
    """A run's ROI before any frame: the configured one, the full frame (None), the one its start
    metadata names, or None when it is to be decided from the first frames ("auto")."""
    if setting == "auto":
        return tuple(start.get("metadata", {}).get("roi") or ()) or None  # type: ignore[return-value]
    if setting is None:
        rows, cols = start["frame_shape"]
        return (0, rows, 0, cols)
    return setting  # type: ignore[no-any-return]


def accumulator_options(options: dict[str, Any]) -> dict[str, Any]:
    """MomentAccumulator keyword options from the options recorded with every map."""
    roi = options.get("roi")
    return {"roi": tuple(roi) if roi is not None else None, "threshold": int(options.get("threshold", 0)),
            "background": options.get("background", "auto")}


def make_accumulator(geometry: DetectorGeometry, map_shape: tuple[int, int], mask: npt.NDArray[np.uint8] | None,
                     options: dict[str, Any], spots: SpotTable | None = None, n_frames: int = 0) -> MomentAccumulator:
    """An empty accumulator for a map with the options recorded with every map: per eta scan when
    ``register`` is auto or tilt (registered at the map's end, as `opmon process --register`) or
    ``peak_fit`` is gauss (each pixel's rocking profile fitted at the map's end, as `opmon process
    --peak-fit gauss`; the final map carries `MapResult.fit`); `spots` the powder-arc spots it
    replaces (a map re-made at its end, `remake`); `n_frames` the map's frame count when known
    (its eta scans are given up as soon as its eta values pass what that many frames take)."""
    register, peak_fit = options.get("register", "off"), options.get("peak_fit", "off")
    if register != "off" or peak_fit != "off":
        acc = EtaScanAccumulator(geometry, map_shape, detector_mask=mask, registration=register, peak_fit=peak_fit,
                                 spots=spots, **accumulator_options(options))
        acc.expect_frames(n_frames)
        return acc
    return MomentAccumulator(geometry, map_shape, detector_mask=mask, spots=spots, **accumulator_options(options))


def frame_count(lm: LiveMap) -> int:
    """`lm`'s frame count as far as known: its map_start's, else its map_end's (0: not known yet)."""
    return lm.n_expected or lm.n_sent or 0


def shipped_state(acc: MomentAccumulator, partial: bool = False) -> dict[str, np.ndarray]:
    """`acc`'s sums to ship to another process: a partial map's per-scan sums with the scans added
    together (`EtaScanAccumulator.collapsed_state`), the final ones whole (registration, fit)."""
    if partial and isinstance(acc, EtaScanAccumulator):
        return acc.collapsed_state()
    return acc.state()


def _with_states(acc: MomentAccumulator, states: list[dict[str, np.ndarray] | None]) -> MomentAccumulator:
    """`acc` with each given state's sums added (None or empty: a process that has none)."""
    for state in states:
        if state:
            acc.load_state(state)
    return acc


def spot_options(plan: MapPlan | None) -> dict[str, Any]:
    """What a map's maps record of its powder-spot search (as `opmon process` writes them)."""
    spots = plan.spots if plan is not None else None
    if spots is None:
        return {}
    return {"powder_spots_rejected": spots.n_spots, "powder_spots_note": spots.note}


@dataclass
class LiveMap:
    """One map being built, from frames (inline, worker) or from the workers' sums (coordinator)."""

    number: int
    map_shape: tuple[int, int]
    shape_known: bool = False        # its map_start was seen (else the run's map shape is a guess)
    acc: MomentAccumulator | None = None
    received: int = 0                # frames in the sums (the coordinator: reported by workers or filled in)
    n_expected: int = 0              # from map_start (0: unknown)
    n_sent: int | None = None        # from map_end
    ended: bool = False              # no more frames are taken: its final maps are being made
    done: bool = False               # final maps made (a worker: its final sums handed in)
    dirty: bool = False              # frames added since the last partial map
    unpublished_t: list[float] = field(default_factory=list)   # send times of frames no map showed yet
    roi: Roi | None = None           # the ROI its sums are taken with (None: the run's, not yet begun)
    provisional: bool = False        # that ROI came from part of a map or is the full-frame fallback
    picks: MapPicks | None = None    # the frames `opmon process` samples for its ROI, summed (auto ROI)
    held: HeldFrames | None = None   # its frames, kept to re-make it with its own ROI (provisional ROI)
    roi_pending: bool = False        # fan-out worker: its ROI comes with the previous map's end


@dataclass
class LiveRun(RunShapes):
    """One run as the live processor knows it: its start, map options, ROI decision and maps.

    `options` is what every map records (`roi` None until decided, `threshold`, `background`);
    `roi_decider` is set while the auto ROI is still to be decided.
    """

    uid: str
    start: dict[str, Any]
    mask: npt.NDArray[np.uint8] | None
    options: dict[str, Any]
    adopted: bool = False            # joined mid-run: the start came from the archive
    roi_decider: RoiDecider | None = None
    held: list[tuple[dict[str, Any], npt.NDArray[Any]]] = field(default_factory=list)  # frames waiting for the ROI
    maps: dict[int, LiveMap] = field(default_factory=dict)
    recovered: int = 0               # frames read from the archive
    dose: DoseLedger | None = None   # photons per sample position over all maps (None: the start names no dose)
    follows: bool = False            # auto ROI: each map's own ROI is found from its frames and the next maps follow it
    provisional: bool = False        # the run's ROI came from a map's first frames (or is the full-frame fallback)
    known_mask: npt.NDArray[np.uint8] | None = None   # the start's detector mask (the pixels found bad added to `mask`)

    @classmethod
    def begin(cls, start: dict[str, Any], mask: npt.NDArray[np.uint8] | None, roi: Roi | None, *, threshold: int,
              background: Any, roi_quota: int, roi_wait_s: float, adopted: bool = False, register: str = "tilt",
              follows: bool | None = None, powder_spots: str = "auto", peak_fit: str = "off") -> LiveRun:
        """A run from its start header; `roi` None: decided from its first `roi_quota` frames;
        `register` auto: the eta scans of each final map are registered (partial maps are not);
        `follows` (default: `roi` is None) each map's own ROI is found and the next maps follow its peak;
        `powder_spots` auto: each map's powder-arc spots are found at its end and the map re-made without them;
        `peak_fit` gauss: each final map's pixels are also fitted (partial maps are not)."""
        options = {"roi": list(roi) if roi is not None else None, "threshold": threshold, "background": background,
                   "register": register, "powder_spots": powder_spots, "peak_fit": peak_fit}
        decider = RoiDecider(roi_quota, roi_wait_s) if roi is None else None
        try:
            settings = DoseSettings.from_start(start)
        except ConfigError as exc:        # a bad dose description must not cost the maps
            log.error("run %s: no dose map: %s", start["run"], exc)
            settings = None
        return cls(start["run"], start, mask, options, adopted=adopted, roi_decider=decider,
                   dose=DoseLedger(settings) if settings is not None else None,
                   follows=roi is None if follows is None else follows, known_mask=mask)

    def sample_for_follow(self, lm: LiveMap, header: dict[str, Any], frame: npt.NDArray[Any]) -> None:
        """Sum `frame` into its map's picks (the frames `opmon process` samples) and keep it while
        the map's ROI is provisional: its own ROI is decided at its end (`conclude_map`); searching
        powder spots, the picks are also summed per eta scan and every frame is kept (`finds_spots`)."""
        if not (self.follows or self.finds_spots):
            return
        if lm.picks is None:
            lm.picks = MapPicks(lm.n_expected, per_scan=self.finds_spots)
        lm.picks.add(int(header["frame"]), frame, float(header["eta"]))
        if lm.held is not None:
            lm.held.add(header, frame)

    @property
    def finds_spots(self) -> bool:
        """Each map's powder-arc spots are searched at its end (`powder_spots` auto)."""
        return self.options.get("powder_spots") == "auto"

    def map_plan(self, lm: LiveMap) -> MapPlan | None:
        """The ROI, mask (and powder spots) `opmon process` takes for `lm` (its own frames; its auto
        ROI, or the given one), None when not sampled."""
        if lm.picks is None:
            return None
        if lm.picks.picks is None:      # its frame count came too late (or never): the frames it had, as offline
            self._repick(lm, lm.n_expected or lm.n_sent or lm.received)
        given = None if self.follows else (lm.roi or self.roi)
        return lm.picks.plan(self.known_mask if self.known_mask is not None else self.mask, self.frame_shape, given)

    def misses_peak(self, roi: Roi, plan: MapPlan, provisional: bool) -> bool:
        """`roi` does not hold the ROI a map's peak asks for (`plan`, within FOLLOW_SLACK pixels), or,
        decided provisionally (from a map's first frames, or the full-frame fallback), it is not that
        ROI within FOLLOW_SLACK pixels on every side (a window much larger than the peak's takes in
        powder spots and more background, the full frame cannot measure its background)."""
        too_large = provisional and not holds(plan.roi, roi)
        return plan.peak and (not holds(roi, plan.roi) or too_large)

    def remake_wanted(self, lm: LiveMap, plan: MapPlan | None) -> bool:
        """`lm` was taken with a provisional ROI that misses the peak its whole map shows, or its frames
        hold powder-arc spots (then it is re-made with its whole plan: `opmon process --powder-spots auto`)."""
        if plan is not None and plan.spots is not None and plan.spots.n_spots > 0:
            return True
        return plan is not None and lm.provisional and lm.roi is not None and self.misses_peak(lm.roi, plan, True)

    def conclude_map(self, lm: LiveMap, plan: MapPlan | None) -> Roi | None:
        """After map `lm`: the maps to come take its own ROI (`plan`) when the current one misses its
        peak (`misses_peak`); a map showing no peak (a faded reflection) keeps the ROI, never the full
        frame. Returns the new ROI, None when it stays."""
        lm.held = None
        current = self.roi
        if plan is None or current is None:
            return None
        if not plan.peak:
            log.info("run %s: map %d shows no peak in its sampled frames; the ROI stays %s", self.uid, lm.number, current)
            return None
        was_provisional, self.provisional = self.provisional, False
        if not self.misses_peak(current, plan, was_provisional):
            return None
        if was_provisional:
            self.mask = plan.mask        # with the hot/dead pixels the whole map shows, as `opmon process`
        log.info("run %s: the peak of map %d asks for ROI %s (was %s): the maps that follow take it", self.uid,
                 lm.number, plan.roi, current)
        self.options = dict(self.options, roi=list(plan.roi))
        return plan.roi

    def count_dose(self, header: dict[str, Any]) -> None:
        """Add one received frame's exposure to the run's dose map (every frame, whatever the ROI)."""
        if self.dose is not None:        # never creates the map: its shape may still come from its map_start
            lm = self.maps.get(header["map"])
            self.dose.add(header, lm.map_shape if lm is not None else self.map_shape)

    @property
    def roi(self) -> Roi | None:
        roi = self.options.get("roi")
        return tuple(roi) if roi is not None else None  # type: ignore[return-value]

    @cached_property
    def geometry(self) -> DetectorGeometry:
        return geometry_of(self.start)

    def set_roi(self, roi: Roi, provisional: bool = False) -> None:
        """The ROI is decided: the maps of the run are accumulated with it (`provisional`: decided
        from a map's first frames, or the full frame: re-decided at the map's end)."""
        self.options = dict(self.options, roi=list(roi))
        self.roi_decider = None
        self.provisional = provisional and self.follows

    def decide_roi(self, settle: bool = True) -> Roi | None:
        """Try to decide the auto ROI from the frames summed so far (see `RoiDecider.decide`)."""
        if self.roi is not None or self.roi_decider is None:
            return self.roi
        mask = self.roi_decider.sum.mask(self.mask)      # with the hot/dead pixels the first frames show
        roi = self.roi_decider.decide(self.mask, self.frame_shape, settle=settle)
        if roi is not None:
            if mask is not self.mask:
                found = int(mask.sum()) - (int(self.mask.sum()) if self.mask is not None else 0)  # type: ignore[union-attr]
                log.info("run %s: masked %d hot/dead detector pixel(s) missing from its mask", self.uid, found)
                self.mask = mask
            self.set_roi(roi, provisional=True)
        return roi

    def map(self, number: int) -> LiveMap:
        """The map `number`, begun with the run's map shape if not known yet."""
        lm = self.maps.get(number)
        if lm is None:
            lm = self.maps[number] = LiveMap(number, self.map_shape)
        return lm

    def map_started(self, number: int, map_shape: tuple[int, int], n_expected: int = 0) -> LiveMap:
        """A map_start: the map's real shape and how many frames it should hold."""
        lm = self.map(number)
        lm.map_shape, lm.shape_known = tuple(map_shape), True  # type: ignore[assignment]
        lm.n_expected = n_expected or lm.n_expected
        if lm.n_expected:
            self.frames_counted(lm, lm.n_expected)
        return lm

    def frames_counted(self, lm: LiveMap, n_frames: int) -> None:
        """`lm` holds `n_frames` frames (its map_start; a fan-out worker: the coordinator's count at the map's end):
        its sums stop being kept per eta scan if its eta values are more than eta scans take, and picks summed
        from every frame (the count unknown when they came) are re-summed as `opmon process` samples them."""
        if isinstance(lm.acc, EtaScanAccumulator):
            lm.acc.expect_frames(n_frames)
        if lm.picks is not None and lm.picks.picks is None:
            self._repick(lm, n_frames)

    def _repick(self, lm: LiveMap, n_frames: int) -> None:
        """`lm`'s picks summed every frame, its frame count unknown when its first frames came (before its map_start:
        frames and documents travel on separate sockets; or its map_start never seen): re-sum the frames `opmon
        process` samples of a map of `n_frames` from its held frames (the powder spots found on every frame differed
        from the sample's: 8-12 against 0 on the demo's first map). Not held (over the budget): they stay every frame."""
        if lm.held is None or lm.held.overflowed:
            return
        log.info("run %s map %d: its frame count (%d) came after its first frames: the frames opmon process samples "
                 "re-summed from the %d held", self.uid, lm.number, n_frames, len(lm.held))
        lm.picks = MapPicks(n_frames, per_scan=self.finds_spots)
        for header, frame in lm.held.frames():
            lm.picks.add(int(header["frame"]), frame, float(header["eta"]))

    def accumulator(self, lm: LiveMap) -> MomentAccumulator:
        """An empty accumulator for `lm` with the run's geometry, mask and options (its ROI: the one
        `lm` began with, else the run's now)."""
        return make_accumulator(self.geometry, lm.map_shape, self.mask, self.map_options(lm), n_frames=frame_count(lm))

    def map_options(self, lm: LiveMap) -> dict[str, Any]:
        """The options `lm` is taken with (recorded with its maps)."""
        return dict(self.options, roi=list(lm.roi)) if lm.roi is not None else self.options

    def begin_sums(self, lm: LiveMap) -> None:
        """`lm`'s first frame: its sums begin with the run's ROI now (kept to the end of the map)."""
        if lm.roi is None:
            lm.roi = self.roi
            lm.provisional = self.provisional
        else:
            lm.provisional = lm.provisional and self.follows
        if (lm.provisional or self.finds_spots) and lm.held is None:
            lm.held = HeldFrames()
        lm.acc = self.accumulator(lm)

    def accumulate(self, header: dict[str, Any], frame: npt.NDArray[Any]) -> LiveMap:
        """Add one frame (the ROI must be known) into its map's sums."""
        lm = self.map(header["map"])
        if lm.done:     # its final maps are made (a frame late or re-sent after the map's end): counted, not summed
            lm.received += 1
            return lm
        if lm.acc is None:
            self.begin_sums(lm)
            assert lm.acc is not None
        lm.acc.process_frame(frame, header["index"], header["eta"], header["phi"], header["nu"], header["delta"],
                             header.get("monitor"))
        lm.received += 1
        lm.dirty = True
        return lm

    def merged(self, lm: LiveMap, states: list[dict[str, np.ndarray] | None]) -> MomentAccumulator:
        """`lm`'s own sums plus other processes' (the fan-out workers'), in a new accumulator."""
        return _with_states(self.accumulator(lm), [lm.acc.state() if lm.acc is not None else None, *states])

    def merged_partial(self, lm: LiveMap, states: list[dict[str, np.ndarray] | None]) -> MomentAccumulator:
        """`lm`'s sums so far plus the workers' partial ones, scans added together (`shipped_state`
        partial): a plain accumulator with the map's ROI, mask and reduction options, whose partial
        map is the per-scan one's (partial maps are not registered nor fitted)."""
        options = dict(self.map_options(lm), register="off", peak_fit="off")
        mine = shipped_state(lm.acc, partial=True) if lm.acc is not None else None
        return _with_states(make_accumulator(self.geometry, lm.map_shape, self.mask, options), [mine, *states])

    def current_map(self) -> LiveMap | None:
        """The newest map not yet final (the one the status reports on)."""
        return max((lm for lm in self.maps.values() if not lm.done), key=lambda m: m.number, default=None)
