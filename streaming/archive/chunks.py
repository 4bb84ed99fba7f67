"""Frames compressed into HDF5 bitshuffle/LZ4 chunks outside HDF5, several at once.

Written through h5py, a frame is compressed by hdf5plugin's bitshuffle filter inside
H5Dwrite: one chunk at a time, holding the GIL, so the archiver could not go past what one
core compresses (1,200-1,450 frames/s of 512 x 512 uint32). Here the format's reference
implementation (`bitshuffle.compress_lz4`, which releases the GIL) compresses frames in a
thread pool, and the finished chunk is stored with `write_chunks` (`H5Dwrite_chunk`, no
filter run): the bytes on disk are the ones the filter writes (tested byte for byte), read
back through the filter or `frames.FrameReader`.

A chunk a detector already compressed in this format (DECTRIS bslz4) goes to `write_chunks`
(or `RawMapWriter.append_chunks`) as it arrived.
"""
from __future__ import annotations

import ctypes
import logging
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)


def _single_threaded_openmp() -> None:
    """Pool thread initializer: bitshuffle's own OpenMP runs each call on its calling thread.

    The pool already gives one thread per core; OpenMP teams on top of it would oversubscribe
    the cores and spin-wait between frames. The setting is per thread (OpenMP's nthreads-var),
    so nothing else in the process (numba's threading layer) is touched."""
    import bitshuffle
    libs = Path(bitshuffle.__file__).parent.parent / "bitshuffle.libs"
    for lib in sorted(libs.glob("libgomp*.so*")) or [None]:
        try:
            ctypes.CDLL(str(lib) if lib else "libgomp.so.1").omp_set_num_threads(1)
        except (OSError, AttributeError):
            log.debug("no OpenMP runtime found for bitshuffle (%s): its default threads apply", lib)


def bitshuffle_lz4_chunk(frame: npt.NDArray[Any]) -> bytes:
    """One frame as the chunk hdf5plugin's `Bitshuffle(nelems=0, cname="lz4")` filter writes.

    The format's reference implementation (the `bitshuffle` package, AVX2 where the CPU has it;
    hdf5plugin's build is SSE2 only, half as fast) compresses without the GIL, so several
    threads compress at once. Imported here: readers of raw files (`opmon process`) never load it."""
    import bitshuffle
    frame = np.ascontiguousarray(frame)
    body = bitshuffle.compress_lz4(frame, 0)
    block = bitshuffle_block_bytes(frame.itemsize)
    return struct.pack(">QI", frame.nbytes, block) + body.tobytes()


def source_compressor(name: str) -> Callable[[npt.NDArray[Any]], bytes] | None:
    """What a simulated detector compressing at the source runs on each frame (`[detector]
    compression`): "bslz4" -> `bitshuffle_lz4_chunk` (the chunk an Eiger's FPGA would send),
    "none" -> None (raw frames)."""
    if name == "none":
        return None
    if name == "bslz4":
        return bitshuffle_lz4_chunk
    raise ValueError(f"detector compression {name!r}, expected 'none' or 'bslz4'")


def bitshuffle_block_bytes(itemsize: int) -> int:
    """Bytes per bitshuffle block for `nelems=0` (8 KiB of elements, a multiple of 8 elements)."""
    return max(8, (8192 // itemsize) // 8 * 8) * itemsize


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
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="opmon-compress",
                                        initializer=_single_threaded_openmp)

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
