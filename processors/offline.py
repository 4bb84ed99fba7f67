"""Offline runner behind `opmon process`: any source's map(s) in (opmon raw, ID01 BLISS, XSOCS), maps file out.

Frames are read block by block into reused buffers, so memory stays flat whatever the
file size; `accumulate_frames` reduces any frame range of a map into an accumulator, so a
map can be split into tasks whose accumulators merge. The output is written to a temporary file and renamed only when every map is
done, so a failure never leaves a half file behind.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon import __version__, interrupt
from opmon.errors import EmptyMapError, RawFileError
from opmon.processors.accumulate import Background, MomentAccumulator, Roi
from opmon.processors.bad_pixels import BadPixelFinder, merged_mask
from opmon.processors.eta_scans import EtaScanAccumulator, Registration, check_manual_shifts, describe, holds_eta_scans
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.maps import FLAGS_DESCRIPTION, LOW_COUNTS, MapResult
from opmon.processors.peak_fit import PeakFitModel, write_fit
from opmon.processors.powder_spots import ScanSums, SpotTable
from opmon.streaming.archive.layout import MAPS, MAPS_BAD_FRAMES, MAPS_ETA_SHIFTS, MAPS_FOUND_BAD_PIXELS
from opmon.streaming.archive.maps_file import grid_axes, write_axes, write_maps
from opmon.streaming.archive.raw import check_roi, map_entries, natural_key, open_hdf5
from opmon.streaming.archive.sources import Block, Source, SourceMap, SourceOptions, open_source
from opmon.streaming.archive.sources.raw_layout import entry_map
from opmon.streaming.archive.safe_writes import atomic_path, check_outputs

ROI_SAMPLE_FRAMES = 3000
ROI_SAMPLE_BLOCK = 64  # sampled frames read per call ...
ROI_SAMPLE_BYTES = 256 << 20  # ... and at most this many bytes of them (a 16M-pixel Eiger's 64 frames: 2.3 GB)
ROI_FRACTION = 0.01
ROI_MARGIN = 12
FINDER_FRAMES = 128  # sampled frames the bad-pixel finder looks at, at most
READ_BYTES = 256 << 20  # one block of frames read for the kernels, at most (two are held: read and add overlap)

log = logging.getLogger(__name__)


@dataclass
class ProcessOptions:
    """How frames are reduced; recorded in the output file so a map can be reproduced."""

    roi: Roi | str | None = "auto"
    threshold: int = 0
    background: Background = "auto"
    despeckle: bool = False
    block: int = 64
    exact_kernel: bool = False  # the per-pixel kernel even where kernels_rows' fitted q applies (comparisons)
    skip_bad_frames: bool = False  # corrupt frames: skip and list them (True) or stop with an error
    find_bad_pixels: bool = True  # hot/dead pixels found from sampled frames join the file's mask
    register: Registration = "tilt"  # eta scans registered before they add up: from each scan's tilt map (tilt, declined when no drift is seen), intensity maps (auto), given shifts, or off
    monitor: bool = True  # divide frames by the source's incident-beam monitor when it has one
    low_counts: float = LOW_COUNTS  # Σ I below this (counts) sets maps.FLAG_LOW_COUNTS
    background_source: str = ""  # where a given background image came from (file:dataset), recorded
    peak_fit: PeakFitModel = "off"  # gauss: also fit each pixel's rocking profile (maps/fit, processors/peak_fit.py)
    powder_spots: str = "auto"  # auto: powder-arc spots found per map and replaced by their surroundings (unless the frames are not powder); off: kept

    def attrs(self, roi: Roi) -> dict[str, Any]:
        background = f"image {self.background_source}".strip() if isinstance(self.background, np.ndarray) else str(self.background)
        return {"roi": np.asarray(roi), "threshold": self.threshold, "background": background,
                "despeckle": self.despeckle, "find_bad_pixels": self.find_bad_pixels, "monitor": self.monitor,
                "low_counts": self.low_counts, "register": describe(self.register), "peak_fit": self.peak_fit,
                "powder_spots": self.powder_spots,
                "opmon_version": __version__}


def find_entries(f: h5py.File, entry: str | None) -> list[str]:
    """Names of the raw map entries to process: the named one, or every group holding frames."""
    return map_entries(f, entry)


_natural_key = natural_key


@dataclass
class MapSample:
    """What evenly spaced frames of a map show: their sum (for the auto ROI) and bad-pixel counts."""

    total: npt.NDArray[np.float64]
    finder: BadPixelFinder
    scans: ScanSums | None = None   # the same frames summed per eta scan (powder-arc spots), when asked


def sample_picks(n_frames: int, sample: int = ROI_SAMPLE_FRAMES) -> tuple[npt.NDArray[np.int64], int]:
    """The frame numbers of a map of `n_frames` that the auto ROI sums (a tenth of the map, bounded), and
    `every`: the bad-pixel finder looks at every `every`-th of them. The live processor samples the same
    frames as they arrive, so its ROI of a whole map is the one `opmon process` takes."""
    count = int(np.clip(n_frames // 10, min(200, n_frames), sample))  # a tenth of the map, bounded
    picks = np.unique(np.linspace(0, n_frames - 1, count).astype(np.int64))
    every = -(-picks.size // FINDER_FRAMES)   # hot pixels shine in most frames: a hundred or so tell
    return picks, max(1, every)


def frames_within(frame_shape: tuple[int, int], dtype: npt.DTypeLike, most: int, budget: int) -> int:
    """`most` frames, fewer when they would take more than `budget` bytes (at least one)."""
    frame_bytes = int(frame_shape[0]) * int(frame_shape[1]) * np.dtype(dtype).itemsize
    return max(1, min(most, budget // max(frame_bytes, 1)))


def sample_block(frame_shape: tuple[int, int], dtype: npt.DTypeLike) -> int:
    """Sampled frames read per call: ROI_SAMPLE_BLOCK, fewer when they would take more than ROI_SAMPLE_BYTES
    (the buffer is held for the whole sample; one call per frame costs little on a large frame)."""
    return frames_within(frame_shape, dtype, ROI_SAMPLE_BLOCK, ROI_SAMPLE_BYTES)


def read_block(smap: SourceMap, block: int) -> int:
    """Frames per block read for the kernels: `block`, fewer when a block would take more than
    READ_BYTES (64 frames of a 16M-pixel Eiger are 4.3 GB as uint32, twice over with the overlap)."""
    return frames_within(smap.meta.frame_shape, smap.meta.frame_dtype, block, READ_BYTES)


def sample_map(smap: SourceMap, sample: int = ROI_SAMPLE_FRAMES, skip_bad: bool = False,
               per_scan: bool = False) -> MapSample:
    """Read evenly spaced frames of `smap` (a tenth of the map, bounded) once for the auto ROI, the
    bad-pixel finder and (`per_scan`) the powder-arc spot search."""
    meta = smap.meta
    rows, cols = meta.frame_shape
    picks, every = sample_picks(meta.n_frames, sample)
    frame_eta = np.asarray(meta.eta, dtype=np.float64).reshape(-1)
    scans = ScanSums((rows, cols), np.unique(np.round(frame_eta, 5)).size) if per_scan else None
    total = np.zeros((rows, cols), dtype=np.float64)
    finder = BadPixelFinder()
    buf = np.empty((min(sample_block(meta.frame_shape, meta.frame_dtype), picks.size), rows, cols), dtype=meta.frame_dtype)
    for lo in range(0, picks.size, buf.shape[0]):  # a block of picks at a time: one fetch and decode call each
        interrupt.check()
        chunk = picks[lo:lo + buf.shape[0]]
        view = buf[:chunk.size]
        bad = set(smap.read_frames(view, chunk))
        if bad and not skip_bad:
            raise smap.error(sorted(bad)[:1])  # the first, as when the sample was read frame by frame
        good = [k for k, frame_number in enumerate(chunk) if int(frame_number) not in bad]   # a skipped corrupt frame adds nothing
        if good:
            frames = view if len(good) == chunk.size else view[good]    # no copy unless a frame was corrupt
            total += frames.sum(axis=0, dtype=np.float64)
            if scans is not None:
                scans.add(frames, frame_eta[chunk[good]])
        for k in good:
            if (lo + k) % every == 0:
                finder.add(view[k])
    return MapSample(total, finder, scans)


def auto_roi(smap: SourceMap, sample: int = ROI_SAMPLE_FRAMES, skip_bad: bool = False,
             mask: npt.NDArray[np.uint8] | None = None) -> Roi:
    """Detector window holding the Bragg peak of every map pixel, found from evenly spaced frames.

    Sums a sample of frames (`sample_map`) and applies `roi_from_image` with `mask` (default: the
    file's), so domains whose peak sits elsewhere on the detector stay inside. The rest of the
    frame then measures the background.
    """
    return roi_of_sample(smap, sample_map(smap, sample, skip_bad), smap.meta.detector_mask if mask is None else mask)


def roi_of_sample(smap: SourceMap, taken: MapSample, mask: npt.NDArray[np.uint8] | None) -> Roi:
    """The auto ROI of a map's sample (full frame when no peak stands out)."""
    rows, cols = smap.meta.frame_shape
    roi = roi_from_image(taken.total, mask)
    return roi if roi is not None else (0, rows, 0, cols)


def roi_from_image(total: npt.NDArray[np.float64], mask: npt.NDArray[np.uint8] | None = None) -> Roi | None:
    """The auto-ROI rule on a sum of frames; None when no peak stands clearly above the background.

    Smooths out isolated background counts with a 5 x 5 box, keeps pixels clearly above the
    background level (the median: most of the detector sees only background) and pads their
    bounding box. Shared by `opmon process` and the live processor, so both pick alike.
    """
    rows, cols = total.shape
    if mask is not None:
        total = np.where(mask.astype(bool), 0.0, total)
    smooth = _box5(total)
    level = _background_plane(smooth, None if mask is None else _box5(mask.astype(np.float64)) == 0)
    excess = smooth - level
    # Poisson noise of a 25-pixel box sum is sqrt(level); 8 sigma keeps background out.
    cut = np.maximum(ROI_FRACTION * float(excess.max()), 8.0 * np.sqrt(np.maximum(level, 0.0) + 1.0))
    if not (excess > cut).any():
        return None
    rr, cc = np.nonzero(excess >= cut)
    pad_r = ROI_MARGIN + (rr.max() - rr.min()) // 4
    pad_c = ROI_MARGIN + (cc.max() - cc.min()) // 4
    return (max(0, int(rr.min() - pad_r)), min(rows, int(rr.max() + pad_r + 1)),
            max(0, int(cc.min() - pad_c)), min(cols, int(cc.max() + pad_c + 1)))


def _background_plane(smooth: npt.NDArray[np.float64], good: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.float64]:
    """The background level of the box-summed image as a plane over the detector, fitted to the pixels not
    clearly above it (the lower half first, then those within 3 Poisson sigmas, twice): a background gradient
    (fluorescence, air scatter) is not taken for a peak, where the median level let the ROI grow over the
    bright side (`all-drift` truth case: rows 120-320 of 320, within 2.5e-4 A 98.4 %; a tight ROI 100 %)."""
    rows, cols = smooth.shape
    r, c = np.meshgrid(np.linspace(-1.0, 1.0, rows), np.linspace(-1.0, 1.0, cols), indexing="ij")
    basis = np.stack([np.ones(smooth.size), r.ravel(), c.ravel()], axis=1)
    values = smooth.ravel()
    usable = np.ones(values.size, dtype=bool) if good is None else good.ravel()
    if usable.sum() < 3:
        usable = np.ones(values.size, dtype=bool)
    keep = usable & (values <= np.median(values[usable]))
    plane = np.full(values.size, float(np.median(values[usable])))
    for _ in range(3):
        if keep.sum() < 3:
            break
        coef = np.linalg.lstsq(basis[keep], values[keep], rcond=None)[0]
        plane = basis @ coef
        keep = usable & (values <= plane + 3.0 * np.sqrt(np.maximum(plane, 0.0) + 1.0))
    return plane.reshape(rows, cols)


def _box5(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    padded = np.pad(image, 2)
    c = padded.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    return c[5:, 5:] - c[:-5, 5:] - c[5:, :-5] + c[:-5, :-5]


@dataclass
class EntryResult:
    """One map's maps, the ROI used, the frames that were corrupt and skipped, and the detector
    pixels found bad from the data (added to the file's mask)."""

    result: MapResult
    roi: Roi
    bad_frames: list[int] = field(default_factory=list)
    found_bad_pixels: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    powder_spots: int = 0   # powder-arc spots (counted per eta scan) replaced by their surroundings
    powder_spots_note: str = ""   # why compact excess found was not taken for powder spots (`powder_spots.not_powder`)


def process_entry(entry: h5py.Group, options: ProcessOptions, progress: Callable[[int], None] | None = None,
                  label: str | None = None) -> tuple[MapResult, Roi]:
    """Reduce one raw map entry to its maps."""
    done = reduce_entry(entry, options, progress, label)
    return done.result, done.roi


def reduce_entry(entry: h5py.Group, options: ProcessOptions, progress: Callable[[int], None] | None = None,
                 label: str | None = None) -> EntryResult:
    """Reduce one raw map entry (opmon's layout); corrupt frames raise, or are skipped and listed."""
    smap = entry_map(entry)
    if label:
        smap.label = smap.segments[0].label = label
    return reduce_map(smap, options, progress)


@dataclass
class MapPlan:
    """How one map is reduced: its ROI and the detector mask (the file's, plus pixels found bad)."""

    roi: Roi
    mask: npt.NDArray[np.uint8] | None
    found: npt.NDArray[np.uint8] | None = None
    peak: bool = True      # an auto ROI found a peak (False: it settled for the full frame)
    spots: SpotTable | None = None   # powder-arc spots to replace (None: not searched)

    def found_pixels(self) -> npt.NDArray[np.int64]:
        """(n, 2) rows and columns of the pixels found bad from the data."""
        if self.found is None:
            return np.zeros((0, 2), dtype=np.int64)
        return np.argwhere(self.found).astype(np.int64)


def plan_map(smap: SourceMap, options: ProcessOptions) -> MapPlan:
    """The ROI and mask of a map: frames are sampled once when the auto ROI or the bad-pixel
    finder needs them; an explicit ROI is checked."""
    known = smap.meta.detector_mask
    find_spots = options.powder_spots == "auto"
    taken = (sample_map(smap, skip_bad=options.skip_bad_frames, per_scan=find_spots)
             if options.roi == "auto" or options.find_bad_pixels or find_spots else None)
    if options.roi == "auto":
        assert taken is not None
        plan = plan_of_sample(taken, known, smap.meta.frame_shape, options.find_bad_pixels)
    else:
        found, mask = found_mask(taken, known) if taken is not None and options.find_bad_pixels else (None, known)
        if options.roi is None:
            roi = (0, smap.meta.frame_shape[0], 0, smap.meta.frame_shape[1])
        else:
            roi = options.roi  # type: ignore[assignment]
            check_roi(roi, smap.meta.frame_shape, smap.label)
        plan = MapPlan(roi, mask, found)
    if taken is not None and taken.scans is not None:
        plan.spots = taken.scans.spots(plan.roi, plan.mask)
    return plan


def found_mask(taken: MapSample, known: npt.NDArray[np.uint8] | None) -> tuple[npt.NDArray[np.uint8] | None,
                                                                             npt.NDArray[np.uint8] | None]:
    """(pixels found bad from the sample or None, the mask to use: `known` with them added)."""
    found = taken.finder.mask(taken.total, known)
    if found.size == 0 or not found.any():
        return (found if found.size else None), known
    return found, merged_mask(known, found)


def plan_of_sample(taken: MapSample, known: npt.NDArray[np.uint8] | None, frame_shape: tuple[int, int],
                   find_bad_pixels: bool = True) -> MapPlan:
    """The auto-ROI plan of a map from its sample (`sample_map`, or the live processor's same frames):
    the mask with the bad pixels found, and the ROI the peak asks for (the full frame when none stands out);
    with powder spots searched, the ROI is taken without them (grains at another 2θ stretched it over the
    whole window: `--effects powder-arcs` size 24, within 2.5e-4 A 97.5 -> 100 %)."""
    found, mask = found_mask(taken, known) if find_bad_pixels else (None, known)
    spotless = taken.scans.without_spots(mask) if taken.scans is not None else None   # powder spots searched
    roi = roi_from_image(taken.total if spotless is None else spotless, mask)
    return MapPlan(roi if roi is not None else (0, frame_shape[0], 0, frame_shape[1]), mask, found,
                   peak=roi is not None)


def choose_roi(smap: SourceMap, options: ProcessOptions) -> Roi:
    """The ROI of a map: found from its frames (auto), the whole frame, or the one given (checked)."""
    return plan_map(smap, options).roi


def new_accumulator(smap: SourceMap, options: ProcessOptions, roi: Roi,
                    mask: npt.NDArray[np.uint8] | None = None, spots: SpotTable | None = None) -> MomentAccumulator:
    """An empty accumulator for `smap` with the options' reduction settings (what each task of a split map needs);
    `mask` replaces the file's detector mask (e.g. `MapPlan.mask`), `spots` the powder-arc spots to replace."""
    meta = smap.meta
    settings: dict[str, Any] = dict(roi=roi, exact_kernel=options.exact_kernel, detector_mask=meta.detector_mask if mask is None else mask,
                                    threshold=options.threshold, background=options.background, despeckle=options.despeckle,
                                    low_counts=options.low_counts, spots=spots)
    if options.register == "off" and options.peak_fit == "off":
        return MomentAccumulator(DetectorGeometry.from_meta(meta), meta.map_shape, **settings)
    if options.register in ("auto", "tilt") and options.peak_fit == "off" and \
            not holds_eta_scans(meta.eta, int(np.prod(meta.map_shape))):
        log.info("%s: eta takes a value per frame, not one per eta scan of the map: the scans are not registered",
                 smap.label)
        return MomentAccumulator(DetectorGeometry.from_meta(meta), meta.map_shape, **settings)
    acc = EtaScanAccumulator(DetectorGeometry.from_meta(meta), meta.map_shape, registration=options.register,
                             peak_fit=options.peak_fit, **settings)
    acc.expect_frames(meta.n_frames)     # eta scans by `holds_eta_scans`: never given up (nor by their bytes)
    return acc


def accumulate_frames(smap: SourceMap, acc: MomentAccumulator, options: ProcessOptions, start: int = 0,
                      stop: int | None = None, progress: Callable[[int], None] | None = None,
                      overlap: bool = True) -> list[int]:
    """Add frames start..stop of `smap` into `acc`; returns the corrupt frames skipped.

    Reading (h5py holds the GIL) overlaps with the previous block's kernels (numba releases
    it), so one call keeps up to two cores busy. `overlap=False` reads and adds in turn on the
    calling thread, one core: what a Dask worker given one thread may use (with the overlap, a
    worker reducing a read-heavy map took 1.2-1.4 cores, more than the scheduler gave it).
    Any frame range of any source can be reduced this way and the accumulators merged.

    Raises
    ------
    CorruptFrameError
        at the first corrupt frame, unless ``options.skip_bad_frames``.
    """
    def consume(block: Block, sel: slice | npt.NDArray[np.int64], frames: np.ndarray) -> None:
        monitor = block.monitor[sel] if options.monitor and block.monitor is not None else None
        acc.process_block(frames, block.map_index[sel], block.eta[sel], block.phi[sel], block.nu[sel], block.delta[sel],
                          monitor)

    skipped: list[int] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="opmon-accumulate") as pool:  # no thread until a submit
        pending: Future[None] | None = None
        for block in smap.blocks(read_block(smap, options.block), start, stop, buffers=2):
            interrupt.check()
            frames = block.frames
            sel: slice | npt.NDArray[np.int64] = slice(0, frames.shape[0])
            if block.bad:
                if not options.skip_bad_frames:
                    raise smap.error(block.bad)
                skipped += block.bad
                keep = np.setdiff1d(np.arange(block.start, block.stop), block.bad) - block.start
                sel, frames = keep, frames[keep]
            if pending is not None:
                pending.result()
            if progress is not None:
                progress(block.frames.shape[0])
            if frames.shape[0] and overlap:
                pending = pool.submit(consume, block, sel, frames)
            elif frames.shape[0]:
                consume(block, sel, frames)
        if pending is not None:
            pending.result()
    return skipped


def reduce_map(smap: SourceMap, options: ProcessOptions, progress: Callable[[int], None] | None = None) -> EntryResult:
    """Reduce one map of any source to its maps; corrupt frames raise, or are skipped and listed."""
    plan = plan_map(smap, options)
    acc = new_accumulator(smap, options, plan.roi, plan.mask, plan.spots)
    skipped = accumulate_frames(smap, acc, options, progress=progress)
    try:
        return EntryResult(acc.finalize(), plan.roi, skipped, plan.found_pixels(),
                           plan.spots.n_spots if plan.spots is not None else 0,
                           plan.spots.note if plan.spots is not None else "")
    except EmptyMapError as exc:
        raise EmptyMapError(f"{smap.label}: {exc}") from exc


def open_raw(raw: str | Path) -> h5py.File:
    """Open a raw file for reading, or say in one line why it cannot be (missing, not HDF5, truncated)."""
    return open_hdf5(raw, "raw SXDM HDF5 file")


RawPlan = Source  # what `plan_raw` returns: a source opened and checked, nothing read yet


def plan_raw(raw: str | Path | list[Path], options: ProcessOptions, entry: str | None = None, kind: str = "auto",
             source_options: SourceOptions | None = None) -> RawPlan:
    """Open `raw` (any source: sniffed, or `kind`) and check every map's metadata (and an explicit ROI) before any work.

    Raises
    ------
    RawFileError
        naming the file, entry and field that is missing, malformed, truncated or out of range.
    """
    source_options = source_options or SourceOptions()
    if entry is not None:
        source_options.entry = entry
    source = open_source(raw, kind, source_options)
    try:
        for smap in source.maps:
            if isinstance(options.roi, tuple):
                check_roi(options.roi, smap.meta.frame_shape, smap.label)
            check_manual_shifts(options.register, smap.meta.eta, smap.label)
        return source
    except BaseException:
        source.close()
        raise


def process_plan(plan: RawPlan, output: str | Path, options: ProcessOptions,
                 progress: Callable[[int], None] | None = None) -> dict[str, EntryResult]:
    """Reduce every entry of a checked plan, then write the maps file atomically."""
    results: dict[str, EntryResult] = {}
    by_name = {m.name: m for m in plan.maps}
    try:
        for name, smap in by_name.items():
            results[name] = reduce_map(smap, options, progress)
    except OSError as exc:
        raise RawFileError(f"{plan.path}: damaged HDF5 file ({str(exc).split('(')[0].strip()})") from exc
    write_results(output, plan, results, options)
    return results


def write_results(output: str | Path, plan: RawPlan, results: dict[str, EntryResult], options: ProcessOptions) -> None:
    """Write every entry's maps of `plan` to `output` atomically (one process or a Dask cluster reduced them)."""
    by_name = {m.name: m for m in plan.maps}
    with atomic_path(Path(output)) as tmp, h5py.File(tmp, "w") as out:
        out.attrs["default"] = next(iter(results))
        out.attrs["creator"] = f"opmon {__version__}"
        for name, done in results.items():
            group = out.create_group(name)
            group.attrs["NX_class"] = "NXentry"
            group.attrs["default"] = MAPS
            smap = by_name[name]
            source = f"{plan.path}:/{name}" if plan.kind == "raw" else smap.label
            maps = write_maps(group, done.result.maps_arrays(), {**options.attrs(done.roi), "source": source,
                                                         "source_format": str(smap.provenance.get("format", "")),
                                                         "bad_frames_count": len(done.bad_frames),
                                                         "found_bad_pixels_count": len(done.found_bad_pixels),
                                                         "powder_spots_rejected": done.powder_spots,
                                                         "powder_spots_note": done.powder_spots_note})
            if plan.kind != "raw" or "geometry" in smap.provenance:
                maps.attrs["provenance"] = json.dumps(smap.provenance)
            if MAPS_ETA_SHIFTS in maps:
                maps[MAPS_ETA_SHIFTS].attrs["long_name"] = ("drift (dy, dx) of each eta scan, map pixels, moved back "
                                                            "before the scans were added")
                maps[MAPS_ETA_SHIFTS].attrs["method"] = describe(options.register)
            maps.create_dataset(MAPS_BAD_FRAMES, data=np.asarray(done.bad_frames, dtype=np.int64))
            found = maps.create_dataset(MAPS_FOUND_BAD_PIXELS, data=done.found_bad_pixels.reshape(-1, 2))
            found.attrs["long_name"] = "detector pixels (row, column) found hot or dead from the data, masked"
            maps["flags"].attrs["long_name"] = FLAGS_DESCRIPTION
            maps.attrs["monitor_normalised"] = bool(options.monitor and smap.monitor is not None)
            axes = grid_axes(smap.meta.x_um, smap.meta.y_um, smap.meta.map_index, smap.meta.map_shape)
            if axes is not None:
                write_axes(maps, *axes)
            if done.result.fit is not None:
                write_fit(maps, done.result.fit, options.peak_fit)


def process_file(raw: str | Path, output: str | Path, options: ProcessOptions | None = None, entry: str | None = None,
                 progress: Callable[[int], None] | None = None, force: bool = False, kind: str = "auto",
                 source_options: SourceOptions | None = None) -> dict[str, MapResult]:
    """Process every raw map entry of `raw` into `output` (same entry names, `/<entry>/maps`).

    Everything is checked before the first frame is read: the raw file and its metadata, and
    that `output` is not an input (nor, without `force`, any existing file).
    """
    options = options or ProcessOptions()
    plan = plan_raw(raw, options, entry, kind, source_options)
    try:
        check_outputs([Path(output)], plan.inputs, force=force)
        return {name: done.result for name, done in process_plan(plan, output, options, progress).items()}
    finally:
        plan.close()
