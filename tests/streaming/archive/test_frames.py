"""The checked bitshuffle/LZ4 reader: same frames as the HDF5 filter, and no crash on any damage."""
from __future__ import annotations

import struct

import h5py
import hdf5plugin
import numpy as np
import pytest

from opmon.errors import CorruptFrameError
from opmon.streaming.archive.raw import iter_frame_blocks
from opmon.streaming.archive.frames import FrameReader, decode_bslz4


def _write(path, frames, **filters):
    with h5py.File(path, "w") as f:
        f.create_dataset("entry/instrument/detector/data", data=frames, chunks=(1,) + frames.shape[1:], **filters)
    return path


BSLZ4 = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))


@pytest.mark.parametrize("dtype, shape", [(np.uint32, (512, 512)), (np.uint16, (40, 48)), (np.uint32, (13, 17)),
                                          (np.uint16, (3, 3)), (np.uint32, (100, 333))])
def test_decodes_exactly_what_the_filter_wrote(tmp_path, dtype, shape):
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    frames = ((rng.random((6,) + shape) < 0.01) * rng.integers(0, top, (6,) + shape, endpoint=True)).astype(dtype)
    frames[2] = rng.integers(0, top, shape, endpoint=True)  # dense: every bit plane in use
    frames[4] = rng.poisson(3.0, shape)  # photon counting: low planes only
    path = _write(tmp_path / "f.h5", frames, **BSLZ4)
    with h5py.File(path) as f:
        reader = FrameReader(f["entry/instrument/detector/data"], "f")
        assert reader.safe
        out = np.empty_like(frames)
        assert reader.read(out, 0) == []
    np.testing.assert_array_equal(out, frames)


def test_random_damage_never_crashes_and_is_reported(tmp_path):
    rng = np.random.default_rng(2)
    frames = ((rng.random((1, 64, 64)) < 0.02) * 3).astype(np.uint32)
    with h5py.File(_write(tmp_path / "f.h5", frames, **BSLZ4)) as f:
        chunk = np.frombuffer(f["entry/instrument/detector/data"].id.read_direct_chunk((0, 0, 0))[1], np.uint8)
    out = np.empty(frames.nbytes, np.uint8)
    assert decode_bslz4(chunk, out, 4) == 0
    codes = set()
    for _ in range(20000):
        bad = chunk.copy()
        k = int(rng.integers(1, 4))
        bad[rng.integers(0, bad.size, k)] = rng.integers(0, 256, k)
        if rng.random() < 0.1:
            bad = bad[: rng.integers(0, bad.size)]
        codes.add(decode_bslz4(bad, out, 4))
    assert min(codes) < 0  # damage is detected (a flipped literal can still decode: no checksum)


@pytest.mark.parametrize("field, value", [(0, struct.pack(">Q", 1 << 28)), (8, struct.pack(">I", 12)),
                                          (12, struct.pack(">I", 0x7FFFFFF0))])
def test_damaged_header_names_the_frame(tmp_path, field, value):
    frames = np.ones((4, 40, 48), np.uint32)
    path = _write(tmp_path / "f.h5", frames, **BSLZ4)
    with h5py.File(path) as f:
        offset = f["entry/instrument/detector/data"].id.get_chunk_info_by_coord((2, 0, 0)).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + field)
        fh.write(value)
    with h5py.File(path) as f, pytest.raises(CorruptFrameError, match=r"f\.h5:/entry: corrupt compressed frame 2 "):
        for _ in iter_frame_blocks(f["entry"], 3):
            pass


def test_other_filters_read_through_hdf5(tmp_path):
    frames = np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8)
    with h5py.File(_write(tmp_path / "g.h5", frames, compression="gzip")) as f:
        reader = FrameReader(f["entry/instrument/detector/data"], "g")
        out = np.empty_like(frames)
        assert not reader.safe and reader.read(out, 0) == []
    np.testing.assert_array_equal(out, frames)


def test_a_chunk_never_written_is_named(tmp_path):
    with h5py.File(tmp_path / "u.h5", "w") as f:
        data = f.create_dataset("entry/instrument/detector/data", shape=(3, 8, 8), chunks=(1, 8, 8), dtype=np.uint32,
                                **BSLZ4)
        data[0] = 1
    with h5py.File(tmp_path / "u.h5") as f:
        reader = FrameReader(f["entry/instrument/detector/data"], "u")
        out = np.empty((3, 8, 8), np.uint32)
        assert reader.read(out, 0) == [1, 2]
        assert "frames 1, 2 never written" in str(reader.error([1, 2]))
    assert (out[0] == 1).all()
