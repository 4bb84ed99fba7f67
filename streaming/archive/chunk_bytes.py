"""Fetch the stored (still compressed) chunks of a block of frames with few calls.

`FrameReader` decodes a block of one-frame chunks in one numba call; this module gets their
bytes. Calling h5py's `read_direct_chunk` once per frame costs ~6 µs each (a third of the
read), so when it is safe the chunk addresses of the whole dataset are listed once (HDF5's
chunk iterator, one C call) and a block's chunks, stored next to each other, are read with a
single `pread` of the file. "Safe" means a read-only file on the default (sec2) driver that no
SWMR writer can be growing (opened without SWMR, or its superblock says so: `_no_swmr_writer`),
where nothing moves the chunks while we read, and the first chunk read both ways matches;
otherwise (a SWMR reader following a live archive or detector file, whose dataset grows), or
when the chunk index cannot be listed, chunks are read one by one.

Either way a frame whose chunk was never written is reported, never guessed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import h5py
import numpy as np
import numpy.typing as npt

#: a block's chunks are read in one pread only when the span holds little else (B-tree nodes)
MAX_SPAN_OVERHEAD = 4
MIN_INDEXED_BLOCK = 8  # fewer frames (one frame for a preview) are not worth listing the whole index


@dataclass
class BlockChunks:
    """The raw chunks of frames start..start+k: chunk i is buf[starts[i]:starts[i] + sizes[i]].

    sizes[i] is -1 when frame i has no usable chunk: never written (`unwritten[i]`), filtered
    differently from the dataset (a filter mask), or unreadable.
    """

    buf: npt.NDArray[np.uint8]
    starts: npt.NDArray[np.int64]
    sizes: npt.NDArray[np.int64]
    unwritten: npt.NDArray[np.bool_]


class ChunkFetcher:
    """Reads the stored chunks of a dataset chunked one frame per chunk."""

    def __init__(self, data: h5py.Dataset) -> None:
        self.data = data
        self._index: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
        self._fd = -1  # the file's descriptor, taken with the index
        self._indexable = _static_sec2_file(data)

    def fetch(self, frames: npt.NDArray[np.int64]) -> BlockChunks:
        """The chunks of `frames` (frame numbers, e.g. a block's, or a sample spread over the map)."""
        if frames.size >= MIN_INDEXED_BLOCK and self._indexable and self._index is None:
            self._index = self._list_chunks()
            self._indexable = self._index is not None
        if self._index is not None and frames.size and 0 <= frames.min() and frames.max() < self._index[0].size:
            block = self._from_index(frames)
            if block is not None:
                return block
        return self._one_by_one(frames)

    def _list_chunks(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None:
        """(file offset, size) of every frame's chunk, size -1 if absent; None when not usable."""
        n = self.data.shape[0]
        offsets = np.zeros(n, dtype=np.int64)
        sizes = np.full(n, -1, dtype=np.int64)

        def note(info: h5py.h5d.StoreInfo) -> None:
            frame = info.chunk_offset[0]
            if 0 <= frame < n and info.filter_mask == 0 and info.byte_offset is not None:
                offsets[frame], sizes[frame] = info.byte_offset, info.size  # file offsets, user block included

        try:
            self.data.id.chunk_iter(note)
            self._fd = self.data.file.id.get_vfd_handle()
            first = int(np.argmax(sizes >= 0))
            if sizes[first] >= 0:  # the addresses really are file offsets: check one chunk both ways
                _, stored = self.data.id.read_direct_chunk((first,) + (0,) * (self.data.ndim - 1))
                if os.pread(self._fd, int(sizes[first]), int(offsets[first])) != bytes(stored):
                    return None
        except (AttributeError, OSError, KeyError, ValueError, RuntimeError, TypeError):
            return None  # HDF5 too old for the chunk iterator, another driver, or an unreadable index
        return offsets, sizes

    def _from_index(self, frames: npt.NDArray[np.int64]) -> BlockChunks | None:
        """One pread over the span of the chunks when they lie close together, else one per chunk."""
        assert self._index is not None
        offsets, sizes = (a[frames] for a in self._index)
        present = sizes >= 0
        starts = np.zeros(frames.size, dtype=np.int64)
        if not present.any():
            return BlockChunks(np.zeros(0, np.uint8), starts, sizes, ~present)
        lo = int(offsets[present].min())
        hi = int((offsets + sizes)[present].max())
        try:
            if hi - lo <= MAX_SPAN_OVERHEAD * int(sizes[present].sum()) + (1 << 16):
                raw = os.pread(self._fd, hi - lo, lo)
                if len(raw) != hi - lo:
                    return None  # file shorter than its index says (a truncated copy): let HDF5 say which frames
                starts[present] = offsets[present] - lo
                return BlockChunks(np.frombuffer(raw, dtype=np.uint8), starts, sizes, ~present)
            parts = [os.pread(self._fd, int(n), int(o)) for o, n in zip(offsets[present], sizes[present])]
        except OSError:
            return None
        if any(len(c) != n for c, n in zip(parts, sizes[present])):
            return None
        starts[present] = np.cumsum(sizes[present]) - sizes[present]
        return BlockChunks(np.frombuffer(b"".join(parts), dtype=np.uint8), starts, sizes, ~present)

    def _one_by_one(self, frames: npt.NDArray[np.int64]) -> BlockChunks:
        chunks: list[bytes] = []
        sizes = np.full(frames.size, -1, dtype=np.int64)
        unwritten = np.zeros(frames.size, dtype=bool)
        tail = (0,) * (self.data.ndim - 1)
        for i, frame in enumerate(frames.tolist()):
            try:
                mask, chunk = self.data.id.read_direct_chunk((frame,) + tail)
            except (OSError, KeyError, ValueError, RuntimeError):
                unwritten[i] = self.data.id.get_chunk_info_by_coord((frame,) + tail).byte_offset is None
                continue  # chunk never written, or its index is unreadable
            if mask == 0:
                chunks.append(chunk)
                sizes[i] = len(chunk)
        starts = np.zeros(frames.size, dtype=np.int64)
        starts[sizes >= 0] = np.cumsum(sizes[sizes >= 0]) - sizes[sizes >= 0]
        return BlockChunks(np.frombuffer(b"".join(chunks), dtype=np.uint8), starts, sizes, unwritten)


def _static_sec2_file(data: h5py.Dataset) -> bool:
    """True when the dataset's file is read-only, on the sec2 driver and not growing under a SWMR
    writer (opened without SWMR, or no SWMR writer has it): its chunks stay put."""
    f = data.file
    try:
        return f.mode == "r" and f.driver == "sec2" and (not f.swmr_mode or _no_swmr_writer(f))
    except (ValueError, OSError):
        return False


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"   # the superblock's first 8 bytes (raw.py names a non-HDF5 file by it)


def _no_swmr_writer(f: h5py.File) -> bool:
    """True when no SWMR writer can have `f` open, from its superblock: `opmon process` opens every
    file in SWMR mode (to read a map whose writer was killed), which alone would rule the chunk index
    out for finished files. A SWMR writer needs superblock version 3, which records in its file
    consistency flags (byte 11) that a writer has the file open (HDF5 file format spec, superblock
    v2/v3); versions 0-2 cannot be written in SWMR mode. A killed writer leaves its flags set: read
    chunk by chunk then, as before."""
    head = os.pread(f.id.get_vfd_handle(), 12, f.userblock_size)
    if len(head) < 12 or head[:8] != HDF5_SIGNATURE:
        return False
    return head[8] < 3 or head[11] == 0
