"""The block path of the checked bitshuffle/LZ4 reader: a block's chunks fetched together and
decoded in one numba call give exactly what the per-frame decoder gives, damage included."""
from __future__ import annotations

import subprocess
import sys

import h5py
import hdf5plugin
import numpy as np
import pytest

from opmon.streaming.archive.frames import FrameReader, decode_bslz4, decode_bslz4_block

BSLZ4 = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
DATA = "entry/instrument/detector/data"


def _frames(dtype: type, n: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max

    def values(size):  # uniform over the dtype's whole range, whatever its width
        return rng.integers(0, top, size, dtype=dtype, endpoint=True)

    frames = ((rng.random((n,) + shape) < 0.02) * values((n,) + shape)).astype(dtype)
    frames[1] = values(shape)  # dense: every bit plane in use
    return frames


def _write(path, frames, userblock: int = 0, written: int | None = None):
    with h5py.File(path, "w", userblock_size=userblock) as f:
        data = f.create_dataset(DATA, shape=frames.shape, dtype=frames.dtype, chunks=(1,) + frames.shape[1:], **BSLZ4)
        data[: written if written is not None else len(frames)] = frames[:written]
    return path


def _chunks(path, n):
    with h5py.File(path, "r") as f:
        return [np.frombuffer(f[DATA].id.read_direct_chunk((i, 0, 0))[1], np.uint8) for i in range(n)]


def _damaged(chunks, rng):
    """Each chunk intact, flipped in a few bytes, truncated, or with a wrong header size."""
    out = []
    for i, c in enumerate(chunks):
        c = c.copy()
        kind = i % 4
        if kind == 1:
            k = int(rng.integers(1, 4))
            c[rng.integers(0, c.size, k)] = rng.integers(0, 256, k)
        elif kind == 2:
            c = c[: rng.integers(0, c.size)]
        elif kind == 3:
            c[7] ^= 0x40  # total size in the header no longer the frame size
        out.append(c)
    return out


@pytest.mark.parametrize("dtype, shape", [(np.uint8, (24, 40)), (np.uint16, (40, 48)), (np.uint32, (13, 17)),
                                          (np.int32, (32, 64)), (np.uint64, (16, 24)), (np.uint16, (3, 3))])
def test_block_decoder_equals_the_per_frame_decoder_on_every_dtype_and_on_damage(tmp_path, dtype, shape):
    frames = _frames(dtype, 16, shape)
    chunks = _damaged(_chunks(_write(tmp_path / "f.h5", frames), 16), np.random.default_rng(3))
    es, nbytes = np.dtype(dtype).itemsize, frames[0].nbytes
    expected = np.zeros((16, nbytes), np.uint8)
    expected_codes = [decode_bslz4(c, expected[i], es) for i, c in enumerate(chunks)]
    for i, code in enumerate(expected_codes):
        if code != 0:
            expected[i] = 0
    sizes = np.array([c.size for c in chunks], np.int64)
    starts = np.cumsum(sizes) - sizes
    out = np.full((16, nbytes), 0xAB, np.uint8)  # stale bytes: a bad row must come back zeroed
    codes = np.empty(16, np.int64)
    decode_bslz4_block(np.concatenate(chunks), starts, sizes, out, es, codes)
    assert codes.tolist() == expected_codes
    assert 0 in expected_codes and min(expected_codes) < 0  # both kinds are exercised
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0].view(dtype).reshape(shape), frames[0])


def test_block_decoder_rejects_chunks_outside_the_buffer():
    buf = np.zeros(40, np.uint8)
    out = np.ones((3, 16), np.uint8)
    codes = np.empty(3, np.int64)
    decode_bslz4_block(buf, np.array([30, 0, -1]), np.array([20, -1, 5]), out, 4, codes)
    assert codes.tolist() == [-16, -16, -16] and not out.any()


def _read_both_ways(path, k):
    """Frames and bad lists through the chunk index (read-only file) and chunk by chunk (file open r+)."""
    results = []
    for mode in ("r", "r+"):
        with h5py.File(path, mode) as f:
            reader = FrameReader(f[DATA], "f")
            out = np.full((k,) + f[DATA].shape[1:], 7, f[DATA].dtype)
            bad = reader.read(out, 0)
            results.append((out, bad, set(reader.unwritten), reader.chunks._index is not None))
    return results


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_reader_block_path_reads_what_the_hdf5_filter_wrote(tmp_path, dtype):
    frames = _frames(dtype, 40, (48, 40), seed=5)
    (indexed, _, _, used_index), (single, _, _, used_single) = _read_both_ways(_write(tmp_path / "f.h5", frames), 40)
    assert used_index and not used_single
    np.testing.assert_array_equal(indexed, frames)
    np.testing.assert_array_equal(single, frames)


def test_a_user_block_does_not_shift_the_chunk_offsets(tmp_path):
    frames = _frames(np.uint32, 12, (16, 16), seed=6)
    (out, bad, _, used_index), _ = _read_both_ways(_write(tmp_path / "f.h5", frames, userblock=1024), 12)
    assert used_index and bad == []
    np.testing.assert_array_equal(out, frames)


def test_corrupt_and_unwritten_frames_are_the_same_on_both_paths(tmp_path):
    frames = _frames(np.uint32, 12, (32, 32), seed=7)
    path = _write(tmp_path / "f.h5", frames, written=9)  # a writer killed after frame 8
    with h5py.File(path, "r") as f:
        offset = f[DATA].id.get_chunk_info_by_coord((3, 0, 0)).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 12)
        fh.write(b"\x7f\xff\xff\xf0")  # frame 3's first LZ4 block claims more bytes than the chunk has
    (a, bad_a, unwritten_a, used_index), (b, bad_b, unwritten_b, _) = _read_both_ways(path, 12)
    assert used_index
    assert bad_a == bad_b == [3, 9, 10, 11]
    assert unwritten_a == unwritten_b == {9, 10, 11}
    np.testing.assert_array_equal(a, b)
    assert not a[[3, 9, 10, 11]].any()
    np.testing.assert_array_equal(a[:3], frames[:3])


@pytest.mark.parametrize("picks", [[0, 1, 2, 3, 5, 6, 7, 8, 9], list(range(0, 60, 7)), [59, 2, 30]])
def test_read_frames_reads_a_spread_sample(tmp_path, picks):
    """Close picks come in one read of their span; far ones (incompressible 32 kB frames) one read each."""
    frames = np.random.default_rng(8).integers(0, 1 << 16, (60, 128, 128), dtype=np.uint16)
    with h5py.File(_write(tmp_path / "f.h5", frames), "r") as f:
        reader = FrameReader(f[DATA], "f")
        out = np.empty((len(picks), 128, 128), np.uint16)
        assert reader.read_frames(out, np.array(picks)) == []
        assert (reader.chunks._index is not None) == (len(picks) >= 8)  # a few frames: not worth listing the index
    np.testing.assert_array_equal(out, frames[picks])


@pytest.mark.parametrize("libver", ["earliest", "latest"])
def test_a_finished_file_opened_in_swmr_mode_is_read_through_the_chunk_index(tmp_path, libver):
    """`opmon process` opens every file SWMR; a file no SWMR writer holds (superblock 0-2, or 3 with
    clear flags) still gets the index, a file a SWMR writer holds open does not (its dataset grows)."""
    frames = _frames(np.uint16, 12, (8, 8))
    path = tmp_path / "f.h5"
    with h5py.File(path, "w", libver=libver) as f:
        f.create_dataset(DATA, data=frames, chunks=(1, 8, 8), maxshape=(None, 8, 8), **BSLZ4)
    with h5py.File(path, "r", swmr=True) as f:
        reader = FrameReader(f[DATA], "f")
        out = np.zeros_like(frames)
        assert reader.read(out, 0) == [] and reader.chunks._index is not None
        np.testing.assert_array_equal(out, frames)
    if libver == "latest":  # a live archive's writer, in its own process as at a beamline
        writer = subprocess.Popen([sys.executable, "-c", SWMR_WRITER, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
            with h5py.File(path, "r", swmr=True) as f:
                reader = FrameReader(f[DATA], "f")
                assert reader.read(out, 0) == [] and reader.chunks._index is None
                np.testing.assert_array_equal(out, frames)
        finally:
            writer.communicate("", timeout=60)


SWMR_WRITER = """
import sys, h5py
with h5py.File(sys.argv[1], "a", libver="latest") as f:
    f.swmr_mode = True
    print("writing", flush=True)
    sys.stdin.read()   # until the test has read
"""
