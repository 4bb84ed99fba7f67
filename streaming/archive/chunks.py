"""Frames compressed into HDF5 bitshuffle/LZ4 chunks outside HDF5, several at once.

Written through h5py, a frame is compressed by hdf5plugin's bitshuffle filter inside
H5Dwrite: one chunk at a time, holding the GIL, so the archiver could not go past what one
core compresses (1,200-1,450 frames/s of 512 x 512 uint32). Here the same C function the
filter calls (`bshuf_compress_lz4` of hdf5plugin's own libh5bshuf, reached with ctypes, which
releases the GIL during the call) compresses frames in a thread pool, and the finished chunk
is stored with `write_chunks` (`H5Dwrite_chunk`, no filter run): the bytes on disk are the
ones the filter would have written, read back through the filter or `frames.FrameReader`.

A chunk a detector already compressed in this format (DECTRIS bslz4) goes to `write_chunks`
(or `RawMapWriter.append_chunks`) as it arrived.
"""
from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import h5py
import hdf5plugin
import numpy as np
import numpy.typing as npt

from opmon.errors import ArchiveError

HEADER_BYTES = 12        # 8-byte big-endian size in bytes, 4-byte big-endian block size in bytes


class _Bitshuffle:
    """The three C functions of hdf5plugin's bitshuffle library this module calls."""

    def __init__(self) -> None:
        path = os.path.join(hdf5plugin.PLUGIN_PATH, "libh5bshuf.so")
        try:
            lib = ctypes.CDLL(path)
            self.compress = lib.bshuf_compress_lz4
            self.bound = lib.bshuf_compress_lz4_bound
            self.block_size = lib.bshuf_default_block_size
        except (OSError, AttributeError) as exc:
            raise ArchiveError(f"hdf5plugin's bitshuffle library {path} cannot be used for chunk compression: {exc}") from exc
        size_t = ctypes.c_size_t
        self.compress.restype, self.compress.argtypes = ctypes.c_int64, [ctypes.c_void_p, ctypes.c_void_p, size_t, size_t, size_t]
        self.bound.restype, self.bound.argtypes = size_t, [size_t, size_t, size_t]
        self.block_size.restype, self.block_size.argtypes = size_t, [size_t]


@lru_cache(maxsize=1)
def _bitshuffle() -> _Bitshuffle:
    return _Bitshuffle()


def bitshuffle_lz4_chunk(frame: npt.NDArray[Any]) -> bytes:
    """One frame as the chunk hdf5plugin's `Bitshuffle(nelems=0, cname="lz4")` filter writes.

    Safe to call from several threads at once; the compression runs without the GIL.
    """
    frame = np.ascontiguousarray(frame)
    lib = _bitshuffle()
    n, itemsize = frame.size, frame.itemsize
    out = np.empty(HEADER_BYTES + lib.bound(n, itemsize, 0), dtype=np.uint8)
    out[:HEADER_BYTES] = np.frombuffer(struct.pack(">QI", n * itemsize, lib.block_size(itemsize) * itemsize), np.uint8)
    written = lib.compress(frame.ctypes.data, out.ctypes.data + HEADER_BYTES, n, itemsize, 0)
    if written < 0:
        raise ArchiveError(f"bitshuffle/LZ4 compression of a {frame.shape} {frame.dtype} frame failed (code {written})")
    return out[:HEADER_BYTES + written].tobytes()


def write_chunks(dataset: h5py.Dataset, start: int, chunks: Sequence[bytes]) -> None:
    """Store compressed frames as frames start, start+1, ... of a (N, rows, cols) dataset
    chunked one frame per chunk, growing it to hold them; the filter is not run again.

    Writing the same chunks again at the same place is harmless (a retry after a full disk).
    """
    stop = start + len(chunks)
    if dataset.shape[0] < stop:
        dataset.resize((stop,) + dataset.shape[1:])
    for i, chunk in enumerate(chunks):
        dataset.id.write_direct_chunk((start + i, 0, 0), chunk, filter_mask=0)


def default_threads() -> int:
    """One compression thread per core: the GIL-holding receive loop leaves them the rest."""
    return max(1, os.cpu_count() or 1)


class ChunkCompressor:
    """A thread pool that turns frames into chunks; results come back as futures, in any order
    (the writer keeps the order by waiting on them in the order it submitted them)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or default_threads()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="opmon-compress")

    def submit(self, frame: npt.NDArray[Any]) -> Future[bytes]:
        """Compress `frame` (which must not change until the future is done)."""
        return self._pool.submit(bitshuffle_lz4_chunk, frame)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def done(chunk: bytes) -> Future[bytes]:
    """A chunk compressed elsewhere (a detector), as a finished future beside pool results."""
    future: Future[bytes] = Future()
    future.set_result(chunk)
    return future
