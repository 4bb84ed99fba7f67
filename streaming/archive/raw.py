"""The raw SXDM layout of FORMATS.md: reading and writing one raw map entry.

The simulator, the archiver and `opmon process` all read and write raw maps through this
module (names from `layout`), so the public layout cannot drift between them. Reading validates every field and
names the offending path; frames are never loaded whole.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import numpy.typing as npt

from opmon.errors import RawFileError
from opmon.streaming.archive.chunk_bytes import HDF5_SIGNATURE
from opmon.streaming.archive.chunks import write_chunks
from opmon.streaming.archive.frames import FrameReader, is_bitshuffle_lz4
from opmon.streaming.archive.layout import (ANGLES, BEAM_X, BEAM_Y, DATA, DET_MASK, DISTANCE, ENERGY, MAP_INDEX, MAP_SHAPE,
                                           POSITIONERS, SCAN_X, SCAN_Y, X_PIXEL, Y_PIXEL)

FRAME_DTYPES = (np.dtype(np.uint16), np.dtype(np.uint32))


@dataclass
class RawMeta:
    """Everything about a raw map except the frames themselves.

    Angles are per frame (N,) in degrees; lengths in metres; the beam centre is the
    direct-beam pixel (row, column) at nu = delta = 0.
    """

    energy_ev: float
    distance_m: float
    pixel_size_m: tuple[float, float]  # (row, column) = (y_pixel_size, x_pixel_size)
    beam_center: tuple[float, float]  # (row0, col0)
    eta: npt.NDArray[np.float64]
    phi: npt.NDArray[np.float64]
    nu: npt.NDArray[np.float64]
    delta: npt.NDArray[np.float64]
    map_shape: tuple[int, int]
    map_index: npt.NDArray[np.int64]
    frame_shape: tuple[int, int]
    frame_dtype: np.dtype[Any]
    detector_mask: npt.NDArray[np.uint8] | None = None
    x_um: npt.NDArray[np.float64] | None = None
    y_um: npt.NDArray[np.float64] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.map_index.shape[0])


def _need(group: h5py.Group, path: str) -> Any:
    if path not in group:
        raise RawFileError(f"{group.file.filename}: missing dataset {group.name.rstrip('/')}/{path}")
    return group[path]


def _scalar(group: h5py.Group, path: str, positive: bool = True) -> float:
    ds = _need(group, path)
    try:
        value = float(np.asarray(ds[()]).reshape(()))
    except (TypeError, ValueError) as exc:
        raise RawFileError(f"{group.name}/{path}: expected a scalar number, got shape {ds.shape}") from exc
    if not np.isfinite(value) or (positive and value <= 0):
        raise RawFileError(f"{group.name}/{path}: invalid value {value!r}")
    return value


def _per_frame(group: h5py.Group, path: str, n: int, finite: bool = True) -> npt.NDArray[np.float64]:
    ds = _need(group, path)
    arr = np.asarray(ds[()], dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise RawFileError(f"{group.name}/{path}: shape {arr.shape}, expected scalar or ({n},)")
    bad = ~np.isfinite(arr)
    if finite and bad.any():
        raise RawFileError(f"{group.name}/{path}: {int(bad.sum())} non-finite value(s), first at frame {int(np.argmax(bad))}")
    return arr


def read_raw_meta(entry: h5py.Group) -> RawMeta:
    """Read and check the metadata of one raw map entry (e.g. ``f["entry"]``).

    Raises
    ------
    RawFileError
        naming the dataset that is missing, mis-shaped or holds invalid values.
    """
    data = _need(entry, DATA)
    if not isinstance(data, h5py.Dataset) or data.ndim != 3:
        raise RawFileError(f"{entry.name}/{DATA}: expected (N, rows, cols) frames, got shape {getattr(data, 'shape', None)}")
    if data.dtype not in FRAME_DTYPES:
        raise RawFileError(f"{entry.name}/{DATA}: dtype {data.dtype}, expected uint16 or uint32")
    n, rows, cols = (int(s) for s in data.shape)
    if n == 0:
        raise RawFileError(f"{entry.name}/{DATA}: holds no frames")
    map_shape_arr = np.asarray(_need(entry, MAP_SHAPE)[()])
    if map_shape_arr.shape != (2,) or np.any(map_shape_arr < 1):
        raise RawFileError(f"{entry.name}/{MAP_SHAPE}: expected two positive integers (ny, nx), got {map_shape_arr!r}")
    map_shape = (int(map_shape_arr[0]), int(map_shape_arr[1]))
    map_index = np.asarray(_need(entry, MAP_INDEX)[()])
    if map_index.shape != (n,):
        raise RawFileError(f"{entry.name}/{MAP_INDEX}: length {map_index.shape}, expected ({n},) = number of frames")
    if not np.issubdtype(map_index.dtype, np.integer):
        raise RawFileError(f"{entry.name}/{MAP_INDEX}: dtype {map_index.dtype}, expected integers")
    map_index = map_index.astype(np.int64)
    npix = map_shape[0] * map_shape[1]
    out = (map_index < 0) | (map_index >= npix)
    if out.any():
        i = int(np.argmax(out))
        raise RawFileError(f"{entry.name}/{MAP_INDEX}: frame {i} names map pixel {int(map_index[i])}, outside 0..{npix - 1} of map {map_shape}")
    angles = {name: _per_frame(entry, f"{POSITIONERS}/{name}", n) for name in ANGLES}
    mask = None
    if DET_MASK in entry:
        mask = np.asarray(entry[DET_MASK][()], dtype=np.uint8)
        if mask.shape != (rows, cols):
            raise RawFileError(f"{entry.name}/{DET_MASK}: shape {mask.shape}, expected {(rows, cols)}")
    xy = {}
    for key, path in (("x_um", SCAN_X), ("y_um", SCAN_Y)):
        if path in entry:
            xy[key] = _per_frame(entry, path, n, finite=False)  # NaN = position not recorded
    return RawMeta(
        energy_ev=_scalar(entry, ENERGY),
        distance_m=_scalar(entry, DISTANCE),
        pixel_size_m=(_scalar(entry, Y_PIXEL), _scalar(entry, X_PIXEL)),
        beam_center=(_scalar(entry, BEAM_Y, positive=False), _scalar(entry, BEAM_X, positive=False)),
        map_shape=map_shape, map_index=map_index, frame_shape=(rows, cols), frame_dtype=data.dtype,
        detector_mask=mask, **angles, **xy,
    )


def iter_frame_blocks(entry: h5py.Group, block: int = 64, buffers: int = 1) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    """Yield (first frame index, frames[block]) so a reader never holds the whole stack.

    With ``buffers=2`` consecutive blocks alternate between two buffers, so a consumer may
    still be working on block i (in another thread) while block i+1 is read.

    Raises
    ------
    CorruptFrameError
        naming the file, entry and frame(s) when a compressed frame cannot be decoded.
    """
    for start, frames, bad in iter_checked_blocks(entry, block, buffers):
        if bad:
            raise FrameReader(entry[DATA], entry_label(entry)).error(bad)
        yield start, frames


def iter_checked_blocks(entry: h5py.Group, block: int = 64, buffers: int = 1, label: str | None = None,
                        first: int = 0, end: int | None = None) -> Iterator[tuple[int, npt.NDArray[Any], list[int]]]:
    """Like `iter_frame_blocks`, plus the numbers of the frames of each block that are corrupt.

    Only frames [first, end) are read (default: all), so a task of a distributed run reads its share.
    Corrupt frames are zero-filled and never crash the reader (see `opmon.streaming.archive.frames`); the
    caller skips them or raises ``FrameReader.error``.
    """
    data = entry[DATA]
    reader = FrameReader(data, label or entry_label(entry))
    n = data.shape[0] if end is None else min(end, data.shape[0])
    bufs = [np.empty((max(0, min(block, n - first)),) + data.shape[1:], dtype=data.dtype) for _ in range(buffers)]
    for i, start in enumerate(range(first, n, block)):
        stop = min(start + block, n)
        view = bufs[i % buffers][: stop - start]
        yield start, view, reader.read(view, start)


def entry_label(entry: h5py.Group, shown: str | Path | None = None) -> str:
    """``file:/entry`` of the frames, for messages that must name where a problem is.

    `shown` is the file the user named; when the frames live in another file (an archive's
    run.h5 links each map to its map_NNNN.h5), that file is named too.
    """
    frames_file = Path(entry[DATA].file.filename)
    if shown is None:
        return f"{frames_file}:{entry.name}"
    label = f"{shown}:{entry.name}"
    if frames_file.absolute() != Path(shown).absolute():
        label += f" (frames in {frames_file.name})"
    return label


def natural_key(name: str) -> tuple[str, int]:
    """Sort key putting entry2 before entry10."""
    stem = name.rstrip("0123456789")
    digits = name[len(stem):]
    return stem, int(digits) if digits else -1


def _missing_links(f: h5py.File, group: h5py.Group) -> list[str]:
    """Files that the external links of `group` (one level deep) point to but that do not exist."""
    missing = []
    base = Path(f.filename).absolute().parent
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = Path(link.filename)
            if not (target if target.is_absolute() else base / target).exists() and link.filename not in missing:
                missing.append(link.filename)
    return missing


def map_entries(f: h5py.File, entry: str | None = None) -> list[str]:
    """Names of the raw map entries of `f`: the named one, or every group holding frames, in order.

    An archive's run.h5 links each ``entryN`` to its map file; an entry whose map file is gone
    is an error naming that file, not silently skipped (a run reported whole that is not).

    Raises
    ------
    RawFileError
        when the entry does not exist, a linked map file is missing, or no group holds frames.
    """
    if entry is not None:
        if f.get(entry, getlink=True) is None:
            raise RawFileError(f"{f.filename}: no entry {entry!r}; entries: {sorted(f.keys())}")
        names = [entry]
    else:
        names = sorted(f.keys(), key=natural_key)
    found = []
    for name in names:
        group = f.get(name)  # None for a link whose target file or object is gone
        if group is None:
            link = f.get(name, getlink=True)
            target = f"missing map file {link.filename}" if isinstance(link, h5py.ExternalLink) else "a missing object"
            raise RawFileError(f"{f.filename}: {name} links to {target} "
                               f"(the other maps can be read with --entry, or from their own map files)")
        if not isinstance(group, h5py.Group):
            if entry is not None:
                raise RawFileError(f"{f.filename}: {name} is not a group")
            continue
        missing = _missing_links(f, group)
        if missing:
            raise RawFileError(f"{f.filename}: {name} links to missing map file {', '.join(missing)} "
                               f"(the other maps can be read with --entry, or from their own map files)")
        if DATA in group:
            found.append(name)
        elif entry is not None:
            raise RawFileError(f"{f.filename}: {name} holds no {DATA}")
    if not found:
        raise RawFileError(f"{f.filename}: no group holds {DATA} (is this a raw SXDM file?)")
    return found


def linked_files(f: h5py.File) -> list[Path]:
    """Every file `f`'s top-level groups link to: inputs too, never to be written over."""
    base = Path(f.filename).absolute().parent
    files: list[Path] = []
    for name in f:
        link = f.get(name, getlink=True)
        links = [link] if isinstance(link, h5py.ExternalLink) else []
        if isinstance(link, h5py.HardLink) and isinstance(f[name], h5py.Group):
            links += [f[name].get(child, getlink=True) for child in f[name]]
        for lk in links:
            if isinstance(lk, h5py.ExternalLink):
                target = Path(lk.filename)
                files.append(target if target.is_absolute() else base / target)
    return files


def check_roi(roi: tuple[int, int, int, int], frame_shape: tuple[int, int], where: str) -> None:
    """Refuse an ROI that is empty or reaches outside the frames, before any frame is read."""
    r0, r1, c0, c1 = roi
    rows, cols = frame_shape
    if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols):
        raise RawFileError(f"--roi {r0} {r1} {c0} {c1}: outside the {rows}x{cols} frames of {where} "
                           f"(need 0 <= r0 < r1 <= {rows}, 0 <= c0 < c1 <= {cols})")


def compression() -> dict[str, Any]:
    """The filter frames are written with: bitshuffle + LZ4, as detectors at ESRF and DLS do."""
    return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))


def _units(ds: h5py.Dataset, units: str) -> h5py.Dataset:
    ds.attrs["units"] = units
    return ds


class RawMapWriter:
    """Writes one raw map entry in the FORMATS.md layout, frame by frame.

    Frames go to a resizable dataset, one chunk per frame, compressed; per-frame angles
    and map indices grow beside it, so a file flushed mid-map is a valid shorter map.
    """

    def __init__(self, entry: h5py.Group, *, frame_shape: tuple[int, int], dtype: npt.DTypeLike,
                 energy_ev: float, distance_m: float, pixel_size_m: tuple[float, float],
                 beam_center: tuple[float, float], map_shape: tuple[int, int],
                 detector_mask: npt.NDArray[np.uint8] | None = None, expected_frames: int = 0) -> None:
        self.entry = entry
        entry.attrs["NX_class"] = "NXentry"
        for group, nx_class in (("instrument", "NXinstrument"), ("instrument/detector", "NXdetector"),
                                ("instrument/beam", "NXbeam"), ("sample", "NXsample"),
                                (POSITIONERS, "NXcollection"), ("scan", "NXcollection")):
            entry.require_group(group).attrs["NX_class"] = nx_class
        rows, cols = frame_shape
        self.data = entry.create_dataset(DATA, shape=(0, rows, cols), maxshape=(None, rows, cols),
                                         chunks=(1, rows, cols), dtype=np.dtype(dtype), **compression())
        self.data.attrs["units"] = "counts"
        self.takes_chunks = is_bitshuffle_lz4(self.data)    # a detector's bslz4 chunk can be stored as it is
        _units(entry.create_dataset(DISTANCE, data=float(distance_m)), "m")
        _units(entry.create_dataset(Y_PIXEL, data=float(pixel_size_m[0])), "m")
        _units(entry.create_dataset(X_PIXEL, data=float(pixel_size_m[1])), "m")
        _units(entry.create_dataset(BEAM_Y, data=float(beam_center[0])), "pixel")
        _units(entry.create_dataset(BEAM_X, data=float(beam_center[1])), "pixel")
        if detector_mask is not None:
            entry.create_dataset(DET_MASK, data=np.asarray(detector_mask, dtype=np.uint8))
        _units(entry.create_dataset(ENERGY, data=float(energy_ev)), "eV")
        entry.create_dataset(MAP_SHAPE, data=np.asarray(map_shape, dtype=np.int64))
        grow = dict(shape=(0,), maxshape=(None,), chunks=(max(256, min(expected_frames, 65536)) or 256,))
        self.angles = {name: _units(entry.create_dataset(f"{POSITIONERS}/{name}", dtype=np.float64, **grow), "deg")
                       for name in ANGLES}
        self.map_index = entry.create_dataset(MAP_INDEX, dtype=np.int64, **grow)
        self.x = _units(entry.create_dataset(SCAN_X, dtype=np.float64, **grow), "um")
        self.y = _units(entry.create_dataset(SCAN_Y, dtype=np.float64, **grow), "um")
        self.n = 0

    def append(self, frames: npt.NDArray[Any], map_index: npt.ArrayLike, eta: npt.ArrayLike, phi: npt.ArrayLike,
               nu: npt.ArrayLike, delta: npt.ArrayLike, x_um: npt.ArrayLike | None = None,
               y_um: npt.ArrayLike | None = None) -> None:
        """Append a block of frames (k, rows, cols) with their per-frame metadata (frames a
        detector already compressed in this dataset's codec go through `append_chunks`)."""
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        k = frames.shape[0]
        if frames.shape[1:] != self.data.shape[1:]:
            raise RawFileError(f"frame shape {frames.shape[1:]} does not match dataset {self.data.shape[1:]}")
        start, stop = self.n, self.n + k
        # Metadata first, frames last: a reader that sees frame i also sees its angles.
        self._append_columns(k, map_index, eta, phi, nu, delta, x_um, y_um)
        self.data.resize((stop,) + self.data.shape[1:])
        self.data[start:stop] = frames
        self.n = stop

    def append_chunks(self, chunks: Sequence[bytes], map_index: npt.ArrayLike, eta: npt.ArrayLike, phi: npt.ArrayLike,
                      nu: npt.ArrayLike, delta: npt.ArrayLike, x_um: npt.ArrayLike | None = None,
                      y_um: npt.ArrayLike | None = None) -> None:
        """Append frames already compressed as this dataset's bitshuffle/LZ4 chunks
        (`chunks.bitshuffle_lz4_chunk`, or a detector's own), one per frame, with their metadata.

        Until `n` moves on, a failed call may be repeated as it was: it writes the same places."""
        k = len(chunks)
        self._append_columns(k, map_index, eta, phi, nu, delta, x_um, y_um)
        write_chunks(self.data, self.n, chunks)
        self.n += k

    def _append_columns(self, k: int, map_index: npt.ArrayLike, eta: npt.ArrayLike, phi: npt.ArrayLike,
                        nu: npt.ArrayLike, delta: npt.ArrayLike, x_um: npt.ArrayLike | None,
                        y_um: npt.ArrayLike | None) -> None:
        start, stop = self.n, self.n + k
        columns: list[tuple[h5py.Dataset, npt.ArrayLike]] = [(self.map_index, map_index), (self.angles["eta"], eta),
                   (self.angles["phi"], phi), (self.angles["nu"], nu), (self.angles["delta"], delta),
                   (self.x, np.nan if x_um is None else x_um), (self.y, np.nan if y_um is None else y_um)]
        for ds, values in columns:
            ds.resize((stop,))
            ds[start:stop] = np.broadcast_to(np.asarray(values, dtype=ds.dtype), (k,))



def open_hdf5(path: str | Path, what: str = "HDF5 file", swmr: bool = True) -> h5py.File:
    """Open `path` read-only, or raise one line saying why not: missing, a directory, empty, not HDF5, truncated.

    SWMR mode also opens a map whose writer was killed mid-run (the archiver's files).
    """
    p = Path(path)
    if not p.exists():
        raise RawFileError(f"{p}: no such file")
    if p.is_dir():
        raise RawFileError(f"{p}: is a directory, expected a {what}")
    try:
        return h5py.File(p, "r", swmr=swmr)
    except OSError as exc:
        raise RawFileError(f"{p}: {_why_not_hdf5(p, exc)}") from exc


def _why_not_hdf5(p: Path, exc: OSError) -> str:
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            # the superblock may sit after a user block at 512, 1024, 2048, ... bytes
            signed = head == HDF5_SIGNATURE or any(f.seek(off) == off and f.read(8) == HDF5_SIGNATURE
                                                   for off in (512, 1024, 2048, 4096) if off < size)
    except OSError as err:
        return f"cannot read ({err.strerror})"
    if size == 0:
        return "empty file, not HDF5"
    if not signed:
        return "not an HDF5 file (no HDF5 signature)"
    reason = str(exc).lower()
    if "truncated" in reason or "eof" in reason or "addr overflow" in reason:
        return f"truncated HDF5 file ({size} bytes; was it copied or written completely?)"
    return f"damaged HDF5 file ({str(exc).split('(')[0].strip().rstrip(',')})"
