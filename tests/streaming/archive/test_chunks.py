"""Frames compressed in threads and written as direct chunks are the bytes the HDF5 filter writes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from opmon.streaming import protocol as P
from opmon.streaming.archive.chunks import ChunkCompressor, bitshuffle_lz4_chunk
from opmon.streaming.archive.frames import FrameReader
from opmon.streaming.archive.raw import compression
from opmon.streaming.archive.run_writer import MapFileWriter

from tests.streaming.conftest import GEOMETRY

SHAPE = (64, 48)


def _frames(n: int, dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.poisson(0.05, size=(n, *SHAPE)).astype(dtype)
    frames[:, 30:34, 20:26] += rng.integers(0, 5000, size=(n, 4, 6)).astype(dtype)   # a Bragg spot
    frames[1, 0, 0] = np.iinfo(dtype).max
    return frames


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_chunk_is_byte_for_byte_what_the_filter_writes(tmp_path, dtype):
    frames = _frames(4, dtype)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("d", data=frames, chunks=(1, *SHAPE), **compression())
        for i, frame in enumerate(frames):
            assert ds.id.read_direct_chunk((i, 0, 0))[1] == bitshuffle_lz4_chunk(frame)


def _write_map(path, frames, block, precompressed=()):
    start = P.start_header("r1", frame_shape=SHAPE, dtype=str(frames.dtype), map_shape=(1, len(frames)), **GEOMETRY)
    compressor = ChunkCompressor(threads=3)
    writer = MapFileWriter(path, start, P.map_start_header("r1", 0, (1, len(frames)), len(frames)), block=block,
                           compressor=compressor)
    for i, frame in enumerate(frames):
        header = P.frame_header("r1", 0, 100 + i, i, i, 10.0 + i, 0.0, 0.0, 37.0, str(frames.dtype), SHAPE)
        if i in precompressed:
            writer.add_chunk(header, bitshuffle_lz4_chunk(frame))
        else:
            writer.add(header, frame)
        if i == len(frames) // 2:
            writer.flush()
    complete = writer.close(complete=True, n_sent=len(frames), last_seq=100 + len(frames) - 1)
    compressor.close()
    return complete


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_map_file_reads_back_through_the_filter_in_order(tmp_path, dtype):
    """Compressed by three threads, a frame's chunk read back by HDF5's own filter is that frame,
    in arrival order, its metadata beside it; and so is a chunk handed over already compressed."""
    frames = _frames(37, dtype, seed=1)
    assert _write_map(tmp_path / "m.h5", frames, block=4, precompressed={5, 6, 20})
    with h5py.File(tmp_path / "m.h5", "r", swmr=True) as f:
        data = f["entry/instrument/detector/data"]
        np.testing.assert_array_equal(data[()], frames)                      # through hdf5plugin's filter
        out = np.empty_like(frames)
        assert FrameReader(data, "m").read(out, 0) == []                      # through opmon's checked decoder
        np.testing.assert_array_equal(out, frames)
        np.testing.assert_array_equal(f["entry/scan/sequence"][()], 100 + np.arange(len(frames)))
        np.testing.assert_array_equal(f["entry/sample/positioners/eta"][()], 10.0 + np.arange(len(frames)))
        for i in (0, 5, 36):
            assert data.id.read_direct_chunk((i, 0, 0))[1] == bitshuffle_lz4_chunk(frames[i])


def test_flush_makes_every_frame_received_readable(tmp_path):
    """After flush() a SWMR reader sees every frame added, also those still being compressed."""
    frames = _frames(21, "uint32", seed=2)
    start = P.start_header("r1", frame_shape=SHAPE, dtype="uint32", map_shape=(1, 21), **GEOMETRY)
    writer = MapFileWriter(tmp_path / "m.h5", start, P.map_start_header("r1", 0, (1, 21), 21), block=8)
    try:
        for i, frame in enumerate(frames):
            writer.add(P.frame_header("r1", 0, i, i, i, 10.0, 0.0, 0.0, 37.0, "uint32", SHAPE), frame)
        writer.flush()
        with h5py.File(tmp_path / "m.h5", "r", swmr=True) as f:
            np.testing.assert_array_equal(f["entry/instrument/detector/data"][()], frames)
    finally:
        writer.close(complete=True)
