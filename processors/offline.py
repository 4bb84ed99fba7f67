"""Offline runner behind `opmon process`: raw HDF5 map(s) in, maps file out.

Frames are read block by block into one reused buffer, so memory stays flat whatever the
file size. The output is written to a temporary file and renamed only when every map is
done, so a failure never leaves a half file behind.
"""
from __future__ import annotations

import os
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon import __version__
from opmon.errors import EmptyMapError, RawFileError
from opmon.formats import DATA, RawMeta, iter_frame_blocks, read_raw_meta
from opmon.processors.accumulate import Background, MomentAccumulator, Roi
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.mapfile import write_maps
from opmon.processors.maps import MapResult

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

    def attrs(self, roi: Roi) -> dict[str, Any]:
        return {"roi": np.asarray(roi), "threshold": self.threshold, "background": str(self.background),
                "despeckle": self.despeckle,
                "opmon_version": __version__}


def find_entries(f: h5py.File, entry: str | None) -> list[str]:
    """Names of the raw map entries to process: the named one, or every group holding frames."""
    if entry is not None:
        if entry not in f:
            raise RawFileError(f"{f.filename}: no entry {entry!r}; entries: {sorted(f.keys())}")
        return [entry]
    names = [name for name, obj in f.items() if isinstance(obj, h5py.Group) and DATA in obj]
    if not names:
        raise RawFileError(f"{f.filename}: no group holds {DATA} (is this a raw SXDM file?)")
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> tuple[str, int]:
    stem = name.rstrip("0123456789")
    digits = name[len(stem):]
    return stem, int(digits) if digits else -1


def auto_roi(entry: h5py.Group, meta: RawMeta, sample: int = ROI_SAMPLE_FRAMES) -> Roi:
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
    buf = np.empty((rows, cols), dtype=data.dtype)
    for i in picks:
        data.read_direct(buf, np.s_[int(i)])
        total += buf
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


def process_entry(entry: h5py.Group, options: ProcessOptions, progress: Callable[[int], None] | None = None) -> tuple[MapResult, Roi]:
    """Reduce one raw map entry to its maps."""
    meta = read_raw_meta(entry)
    geometry = DetectorGeometry.from_meta(meta)
    if options.roi == "auto":
        roi: Roi = auto_roi(entry, meta)
    elif options.roi is None:
        roi = (0, meta.frame_shape[0], 0, meta.frame_shape[1])
    else:
        roi = options.roi  # type: ignore[assignment]
    acc = MomentAccumulator(geometry, meta.map_shape, roi=roi, detector_mask=meta.detector_mask,
                            threshold=options.threshold, background=options.background, despeckle=options.despeckle)

    def consume(start: int, frames: np.ndarray) -> None:
        stop = start + frames.shape[0]
        acc.process_block(frames, meta.map_index[start:stop], meta.eta[start:stop], meta.phi[start:stop],
                          meta.nu[start:stop], meta.delta[start:stop])
        if progress is not None:
            progress(frames.shape[0])

    # Reading (h5py holds the GIL) overlaps with the previous block's kernels (numba releases it).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="opmon-accumulate") as pool:
        pending: Future[None] | None = None
        for start, frames in iter_frame_blocks(entry, options.block, buffers=2):
            if pending is not None:
                pending.result()
            pending = pool.submit(consume, start, frames)
        if pending is not None:
            pending.result()
    try:
        return acc.finalize(), roi
    except EmptyMapError as exc:
        raise EmptyMapError(f"{entry.file.filename}:{entry.name}: {exc}") from exc


def count_frames(f: h5py.File, entries: list[str]) -> int:
    return sum(int(f[name][DATA].shape[0]) for name in entries if DATA in f[name])


def process_file(raw: str | Path, output: str | Path, options: ProcessOptions | None = None, entry: str | None = None,
                 progress: Callable[[int], None] | None = None) -> dict[str, MapResult]:
    """Process every raw map entry of `raw` into `output` (same entry names, `/<entry>/maps`)."""
    options = options or ProcessOptions()
    raw, output = Path(raw), Path(output)
    if not raw.exists():
        raise RawFileError(f"{raw}: no such file")
    try:
        f = h5py.File(raw, "r", swmr=True)  # also reads a map whose writer was killed mid-SWMR
    except OSError as exc:
        raise RawFileError(f"{raw}: not a readable HDF5 file ({exc})") from exc
    results: dict[str, MapResult] = {}
    rois: dict[str, Roi] = {}
    with f:
        for name in find_entries(f, entry):
            results[name], rois[name] = process_entry(f[name], options, progress)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as out:
            out.attrs["default"] = next(iter(results))
            out.attrs["creator"] = f"opmon {__version__}"
            for name, result in results.items():
                group = out.create_group(name)
                group.attrs["NX_class"] = "NXentry"
                group.attrs["default"] = "maps"
                write_maps(group, result, {**options.attrs(rois[name]), "source": f"{raw}:/{name}"})
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return results
