"""Offline runner behind `opmon process`: raw HDF5 map(s) in, maps file out.

Frames are read block by block into one reused buffer, so memory stays flat whatever the
file size. The output is written to a temporary file and renamed only when every map is
done, so a failure never leaves a half file behind.
"""
from __future__ import annotations

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
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.maps import MapResult
from opmon.streaming.archive.frames import FrameReader
from opmon.streaming.archive.layout import DATA, MAPS, MAPS_BAD_FRAMES
from opmon.streaming.archive.maps_file import write_maps
from opmon.streaming.archive.raw import (RawMeta, check_roi, entry_label, iter_checked_blocks, linked_files, map_entries,
                                        natural_key, open_hdf5, read_raw_meta)
from opmon.streaming.archive.safe_writes import atomic_path, check_outputs

ROI_SAMPLE_FRAMES = 3000
ROI_FRACTION = 0.01
ROI_MARGIN = 12


@dataclass
class ProcessOptions:
    """How frames are reduced; recorded in the output file so a map can be reproduced."""

    roi: Roi | str | None = "auto"
    threshold: int = 0
    background: Background = "auto"
    despeckle: bool = True
    block: int = 64
    skip_bad_frames: bool = False  # corrupt frames: skip and list them (True) or stop with an error

    def attrs(self, roi: Roi) -> dict[str, Any]:
        return {"roi": np.asarray(roi), "threshold": self.threshold, "background": str(self.background),
                "despeckle": self.despeckle,
                "opmon_version": __version__}


def find_entries(f: h5py.File, entry: str | None) -> list[str]:
    """Names of the raw map entries to process: the named one, or every group holding frames."""
    return map_entries(f, entry)


_natural_key = natural_key


def auto_roi(entry: h5py.Group, meta: RawMeta, sample: int = ROI_SAMPLE_FRAMES, skip_bad: bool = False,
             label: str | None = None) -> Roi:
    """Detector window holding the Bragg peak of every map pixel, found from evenly spaced frames.

    Sums a sample of frames, smooths out isolated background counts with a 5 x 5 box, keeps
    pixels clearly above the background level (the median: most of the detector sees only
    background) and pads their bounding box, so domains whose peak sits elsewhere on the
    detector stay inside. The rest of the frame then measures the background.
    """
    rows, cols = meta.frame_shape
    data = entry[DATA]
    count = int(np.clip(meta.n_frames // 10, min(200, meta.n_frames), sample))  # a tenth of the map, bounded
    picks = np.unique(np.linspace(0, meta.n_frames - 1, count).astype(np.int64))
    total = np.zeros((rows, cols), dtype=np.float64)
    buf = np.empty((1, rows, cols), dtype=data.dtype)
    reader = FrameReader(data, label or f"{data.file.filename}:{entry.name}")
    for i in picks:
        interrupt.check()
        bad = reader.read(buf, int(i))
        if bad and not skip_bad:
            raise reader.error(bad)
        total += buf[0]
    roi = roi_from_image(total, meta.detector_mask)
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
    level = float(np.median(smooth))
    peak = float(smooth.max())
    # Poisson noise of a 25-pixel box sum is sqrt(level); 8 sigma keeps background out.
    cut = level + max(ROI_FRACTION * (peak - level), 8.0 * np.sqrt(level + 1.0))
    if not peak > cut:
        return None
    rr, cc = np.nonzero(smooth >= cut)
    pad_r = ROI_MARGIN + (rr.max() - rr.min()) // 4
    pad_c = ROI_MARGIN + (cc.max() - cc.min()) // 4
    return (max(0, int(rr.min() - pad_r)), min(rows, int(rr.max() + pad_r + 1)),
            max(0, int(cc.min() - pad_c)), min(cols, int(cc.max() + pad_c + 1)))


def _box5(image: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    padded = np.pad(image, 2)
    c = padded.cumsum(0).cumsum(1)
    c = np.pad(c, ((1, 0), (1, 0)))
    return c[5:, 5:] - c[:-5, 5:] - c[5:, :-5] + c[:-5, :-5]


@dataclass
class EntryResult:
    """One map's maps, the ROI used and the frames that were corrupt and skipped."""

    result: MapResult
    roi: Roi
    bad_frames: list[int] = field(default_factory=list)


def process_entry(entry: h5py.Group, options: ProcessOptions, progress: Callable[[int], None] | None = None,
                  label: str | None = None) -> tuple[MapResult, Roi]:
    """Reduce one raw map entry to its maps."""
    done = reduce_entry(entry, options, progress, label)
    return done.result, done.roi


def reduce_entry(entry: h5py.Group, options: ProcessOptions, progress: Callable[[int], None] | None = None,
                 label: str | None = None) -> EntryResult:
    """Reduce one raw map entry; corrupt frames raise, or are skipped and listed with `skip_bad_frames`."""
    meta = read_raw_meta(entry)
    label = label or f"{entry.file.filename}:{entry.name}"
    geometry = DetectorGeometry.from_meta(meta)
    if options.roi == "auto":
        roi: Roi = auto_roi(entry, meta, skip_bad=options.skip_bad_frames, label=label)
    elif options.roi is None:
        roi = (0, meta.frame_shape[0], 0, meta.frame_shape[1])
    else:
        roi = options.roi  # type: ignore[assignment]
        check_roi(roi, meta.frame_shape, label)
    acc = MomentAccumulator(geometry, meta.map_shape, roi=roi, detector_mask=meta.detector_mask,
                            threshold=options.threshold, background=options.background, despeckle=options.despeckle)

    def consume(sel: slice | npt.NDArray[np.int64], frames: np.ndarray) -> None:
        acc.process_block(frames, meta.map_index[sel], meta.eta[sel], meta.phi[sel], meta.nu[sel], meta.delta[sel])

    skipped: list[int] = []
    # Reading (h5py holds the GIL) overlaps with the previous block's kernels (numba releases it).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="opmon-accumulate") as pool:
        pending: Future[None] | None = None
        for start, frames, bad in iter_checked_blocks(entry, options.block, buffers=2, label=label):
            interrupt.check()
            sel: slice | npt.NDArray[np.int64] = slice(start, start + frames.shape[0])
            if bad:
                if not options.skip_bad_frames:
                    raise FrameReader(entry[DATA], label).error(bad)
                skipped += bad
                keep = np.setdiff1d(np.arange(start, start + frames.shape[0]), bad)
                sel, frames = keep, frames[keep - start]
            if pending is not None:
                pending.result()
            if progress is not None:
                progress(frames.shape[0] + len(bad))
            if frames.shape[0]:
                pending = pool.submit(consume, sel, frames)
        if pending is not None:
            pending.result()
    try:
        return EntryResult(acc.finalize(), roi, skipped)
    except EmptyMapError as exc:
        raise EmptyMapError(f"{label}: {exc}") from exc


def count_frames(f: h5py.File, entries: list[str]) -> int:
    return sum(int(f[name][DATA].shape[0]) for name in entries if DATA in f[name])


def open_raw(raw: str | Path) -> h5py.File:
    """Open a raw file for reading, or say in one line why it cannot be (missing, not HDF5, truncated)."""
    return open_hdf5(raw, "raw SXDM HDF5 file")


@dataclass
class RawPlan:
    """A raw file opened and checked before any frame is read: what will be processed."""

    file: h5py.File
    raw: Path
    entries: list[str]
    inputs: list[Path]
    total_frames: int

    def close(self) -> None:
        self.file.close()


def plan_raw(raw: str | Path, options: ProcessOptions, entry: str | None = None) -> RawPlan:
    """Open `raw` and check every entry's metadata (and an explicit ROI) before any work.

    Raises
    ------
    RawFileError
        naming the file, entry and field that is missing, malformed, truncated or out of range.
    """
    raw = Path(raw)
    f = open_raw(raw)
    try:
        names = map_entries(f, entry)
        total = 0
        for name in names:
            meta = read_raw_meta(f[name])
            if isinstance(options.roi, tuple):
                check_roi(options.roi, meta.frame_shape, f"{raw}:/{name}")
            total += meta.n_frames
        return RawPlan(f, raw, names, [raw, *linked_files(f)], total)
    except OSError as exc:  # a truncated or damaged file fails while its metadata are read
        f.close()
        raise RawFileError(f"{raw}: damaged or truncated HDF5 file ({str(exc).split('(')[0].strip()})") from exc
    except BaseException:
        f.close()
        raise


def process_plan(plan: RawPlan, output: str | Path, options: ProcessOptions,
                 progress: Callable[[int], None] | None = None) -> dict[str, EntryResult]:
    """Reduce every entry of a checked plan, then write the maps file atomically."""
    results: dict[str, EntryResult] = {}
    try:
        for name in plan.entries:
            results[name] = reduce_entry(plan.file[name], options, progress,
                                         label=entry_label(plan.file[name], plan.raw))
    except OSError as exc:
        raise RawFileError(f"{plan.raw}: damaged HDF5 file ({str(exc).split('(')[0].strip()})") from exc
    write_results(output, plan, results, options)
    return results


def write_results(output: str | Path, plan: RawPlan, results: dict[str, EntryResult], options: ProcessOptions) -> None:
    """Write every entry's maps of `plan` to `output` atomically (one process or a Dask cluster reduced them)."""
    with atomic_path(Path(output)) as tmp, h5py.File(tmp, "w") as out:
        out.attrs["default"] = next(iter(results))
        out.attrs["creator"] = f"opmon {__version__}"
        for name, done in results.items():
            group = out.create_group(name)
            group.attrs["NX_class"] = "NXentry"
            group.attrs["default"] = MAPS
            maps = write_maps(group, done.result.maps_arrays(), {**options.attrs(done.roi), "source": f"{plan.raw}:/{name}",
                                                   "bad_frames_count": len(done.bad_frames)})
            maps.create_dataset(MAPS_BAD_FRAMES, data=np.asarray(done.bad_frames, dtype=np.int64))


def process_file(raw: str | Path, output: str | Path, options: ProcessOptions | None = None, entry: str | None = None,
                 progress: Callable[[int], None] | None = None, force: bool = False) -> dict[str, MapResult]:
    """Process every raw map entry of `raw` into `output` (same entry names, `/<entry>/maps`).

    Everything is checked before the first frame is read: the raw file and its metadata, and
    that `output` is not an input (nor, without `force`, any existing file).
    """
    options = options or ProcessOptions()
    plan = plan_raw(raw, options, entry)
    try:
        check_outputs([Path(output)], plan.inputs, force=force)
        return {name: done.result for name, done in process_plan(plan, output, options, progress).items()}
    finally:
        plan.close()
