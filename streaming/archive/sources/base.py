"""What every source of frames gives `opmon process`, `opmon replay` and the live chain.

A source describes one or more maps. Each map (`SourceMap`) holds the metadata of the raw
layout (`RawMeta`: geometry, map grid, per-frame map index and angles, detector mask) and
reads its frames in blocks from one or more HDF5 datasets (`FrameSegment`: one per BLISS or
XSOCS scan, one for opmon's own raw entries). Blocks never cross a segment and follow its
chunks; frames go straight from h5py into a reused buffer (for a virtual dataset, HDF5 reads
the detector's own files), so no stack is ever held whole or copied twice. Processors never
know which layout the frames came from (LiberTEM's DataSet idea).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import CorruptFrameError, RawFileError
from opmon.streaming.archive.frames import FrameReader
from opmon.streaming.archive.raw import RawMeta

#: Detector dtypes opmon accumulates; signed counts (Lima writes int32) are read as their
#: unsigned twin with negative values (flags) set to 0, in place.
UNSIGNED = {np.dtype(np.int8): np.dtype(np.uint8), np.dtype(np.int16): np.dtype(np.uint16),
            np.dtype(np.int32): np.dtype(np.uint32)}
COUNT_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))


def count_dtype(dtype: np.dtype[Any], where: str) -> np.dtype[Any]:
    """The unsigned dtype frames of `dtype` are accumulated as, or a one-line error naming `where`."""
    dtype = np.dtype(dtype)
    if dtype in COUNT_DTYPES:
        return dtype
    if dtype in UNSIGNED:
        return UNSIGNED[dtype]
    raise RawFileError(f"{where}: frames of dtype {dtype}, expected integer counts (uint8/16/32 or int8/16/32)")


@dataclass
class FrameSegment:
    """Frames first..first+n of a map, stored in one (N, rows, cols) dataset."""

    data: h5py.Dataset
    first: int
    label: str  # how errors name these frames, e.g. "id01.h5:/3.1/measurement/mpx1x4"

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    def step(self, block: int) -> int:
        """Frames per read: `block` rounded to whole chunks, so no chunk is decoded twice."""
        chunk = self.data.chunks[0] if self.data.chunks else 1
        return max(1, block // chunk) * chunk if chunk <= block else chunk


@dataclass
class Block:
    """Frames start..start+k of a map with their per-frame metadata (views, not copies).

    ``bad`` lists frame numbers that could not be decoded (zero-filled in ``frames``).
    """

    start: int
    frames: npt.NDArray[Any]
    bad: list[int]
    map_index: npt.NDArray[np.int64]
    eta: npt.NDArray[np.float64]
    phi: npt.NDArray[np.float64]
    nu: npt.NDArray[np.float64]
    delta: npt.NDArray[np.float64]
    monitor: npt.NDArray[np.float64] | None = None

    @property
    def stop(self) -> int:
        return self.start + self.frames.shape[0]


@dataclass
class SourceMap:
    """One map of a source: its metadata and the datasets holding its frames, in order.

    ``provenance`` says where each value came from (format, scans, geometry origins); it is
    written beside the maps so a result can be traced back to the file.
    """

    name: str
    label: str
    meta: RawMeta
    segments: list[FrameSegment]
    monitor: npt.NDArray[np.float64] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    map_number: int | None = None

    @property
    def n_frames(self) -> int:
        return self.meta.n_frames

    def _segment_of(self, frame: int) -> FrameSegment:
        for seg in self.segments:
            if seg.first <= frame < seg.first + seg.n:
                return seg
        raise IndexError(f"{self.label}: frame {frame} outside 0..{self.n_frames - 1}")

    def reader(self, seg: FrameSegment) -> FrameReader:
        """The (kept) reader of a segment: it remembers frames whose chunk was never written."""
        readers = self.__dict__.setdefault("_readers", {})
        if seg.first not in readers:
            readers[seg.first] = FrameReader(seg.data, seg.label)
        return readers[seg.first]

    def error(self, bad: list[int]) -> CorruptFrameError:
        """One line naming the file, dataset and frames (numbered within their dataset) that are corrupt or unwritten."""
        seg = self._segment_of(bad[0])
        reader = self.reader(seg)
        reader.label = seg.label
        return reader.error([b - seg.first for b in bad if seg.first <= b < seg.first + seg.n])

    def read(self, out: npt.NDArray[Any], start: int) -> list[int]:
        """Fill ``out`` (k, rows, cols) with frames start..start+k (within one segment); bad frame numbers."""
        seg = self._segment_of(start)
        return _read(self.reader(seg), seg, out, start)

    def read_frames(self, out: npt.NDArray[Any], frames: npt.NDArray[np.int64]) -> list[int]:
        """Fill ``out`` (k, rows, cols) with the given frames (sorted, any segments), each segment's
        chunks fetched and decoded together; returns the bad frame numbers."""
        frames = np.asarray(frames, dtype=np.int64)
        bad: list[int] = []
        for seg in self.segments:
            inside = np.flatnonzero((frames >= seg.first) & (frames < seg.first + seg.n))
            if inside.size:
                lo, hi = int(inside[0]), int(inside[-1]) + 1
                target = out[lo:hi].view(seg.data.dtype) if seg.data.dtype in UNSIGNED else out[lo:hi]
                bad += [seg.first + b for b in self.reader(seg).read_frames(target, frames[lo:hi] - seg.first)]
                _clip_signed(target, out[lo:hi])
        return bad

    def blocks(self, block: int = 64, start: int = 0, stop: int | None = None, buffers: int = 1) -> Iterator[Block]:
        """Blocks of frames start..stop in order, each within one segment and chunk-aligned.

        With ``buffers=2`` consecutive blocks alternate between two buffers, so a consumer may
        still work on block i (in another thread) while block i+1 is read.
        """
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        rows, cols = self.meta.frame_shape
        size = min(max(seg.step(block) for seg in self.segments), max(stop - start, 1))
        bufs = [np.empty((size, rows, cols), dtype=self.meta.frame_dtype) for _ in range(buffers)]
        m, i = self.meta, 0
        for seg in self.segments:
            lo, hi = max(start, seg.first), min(stop, seg.first + seg.n)
            if lo >= hi:
                continue
            reader, step = self.reader(seg), min(seg.step(block), size)
            a = lo
            while a < hi:
                b = min(hi, (a - seg.first) // step * step + step + seg.first)  # next chunk boundary
                view = bufs[i % buffers][: b - a]
                bad = _read(reader, seg, view, a)
                yield Block(a, view, bad, m.map_index[a:b], m.eta[a:b], m.phi[a:b], m.nu[a:b], m.delta[a:b],
                            None if self.monitor is None else self.monitor[a:b])
                i += 1
                a = b


def _read(reader: FrameReader, seg: FrameSegment, out: npt.NDArray[Any], start: int) -> list[int]:
    """Read frames of `seg` into `out`; signed counts land in the same bytes and are clipped at 0."""
    target = out.view(seg.data.dtype) if seg.data.dtype in UNSIGNED else out
    bad = reader.read(target, start - seg.first)
    _clip_signed(target, out)
    return [seg.first + b for b in bad]


def _clip_signed(target: npt.NDArray[Any], out: npt.NDArray[Any]) -> None:
    """Signed counts read into unsigned `out` through `target`: negative flags become 0."""
    if target is not out and target.size and target.min() < 0:  # a read-only pass; rewrite only when needed
        np.maximum(target, 0, out=target)


@dataclass
class Source:
    """A file opened and checked: the maps it holds and every file it reads (never to be written)."""

    path: Path
    kind: str
    file: h5py.File
    maps: list[SourceMap]
    inputs: list[Path]
    extra_files: list[h5py.File] = field(default_factory=list)  # further files of a multi-file dataset

    @property
    def total_frames(self) -> int:
        return sum(m.n_frames for m in self.maps)

    @property
    def entries(self) -> list[str]:
        """Names of the maps (the output's entries)."""
        return [m.name for m in self.maps]

    def close(self) -> None:
        for f in self.extra_files:
            f.close()
        self.file.close()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SourceOptions:
    """What the user chose: scans (names "N.1" or numbers), detector, monitor counter, geometry file."""

    scans: list[str] | None = None
    detector: str | None = None
    monitor: str | None = None
    geometry: dict[str, float] = field(default_factory=dict)
    geometry_path: str | None = None
    entry: str | None = None  # raw layout: the one entry to read
