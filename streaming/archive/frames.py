"""Read bitshuffle/LZ4 frames without trusting the bytes on disk.

The HDF5 bitshuffle filter believes the sizes written in a chunk: one flipped byte in a
compressed frame makes a plain h5py read write outside its buffers and kill the process
(SIGSEGV, no message). Raw data at a beamline does get corrupted (a disk, a copy, a killed
writer), and a monitor must then say which frame is bad, not die. So frames stored with the
bitshuffle filter are read here as raw chunks (`read_direct_chunk`) and decoded by a
bounds-checked LZ4 decoder and bit-unshuffle (numba, releases the GIL); every size and offset
is checked before it is used and a bad chunk raises `CorruptFrameError`. Frames with any
other filter (or none) are read by h5py as before.

Chunk layout (bitshuffle's HDF5 filter with LZ4): 8-byte big-endian total size, 4-byte
big-endian block size in bytes, then per block a 4-byte big-endian compressed size and an
LZ4 block of the bit-shuffled elements; a last partial block is rounded down to 8 elements
and the remaining `size % 8` elements are stored verbatim.
"""
from __future__ import annotations

from typing import Any

import h5py
import numba
import numpy as np
import numpy.typing as npt

from opmon.errors import CorruptFrameError
from opmon.streaming.archive.chunk_bytes import ChunkFetcher

BITSHUFFLE_FILTER = 32008
LZ4_COMPRESSION = 2
_U64_8 = np.uint64(8)


@numba.njit(nogil=True, cache=True)
def _extended_length(src: npt.NDArray[np.uint8], ip: int, s1: int) -> tuple[int, int]:
    """LZ4's length continuation after a nibble of 15: bytes added until one below 255.
    Returns (the sum, the next input position), the sum -1 if the input ends first."""
    total = 0
    while True:
        if ip >= s1:
            return -1, ip
        b = np.int64(src[ip])
        ip += 1
        total += b
        if b != 255:
            return total, ip


@numba.njit(nogil=True, cache=True)
def _lz4_block(src: npt.NDArray[np.uint8], s0: int, s1: int, dst: npt.NDArray[np.uint8], d0: int, d1: int) -> int:
    """Decode the LZ4 block src[s0:s1] into exactly dst[d0:d1]; 0, or a negative code if malformed."""
    ip = s0
    op = d0
    while True:
        if ip >= s1:
            return -1  # input ends before the block is complete
        token = np.int64(src[ip])
        ip += 1
        lit = token >> 4
        if lit == 15:
            extra, ip = _extended_length(src, ip, s1)
            if extra < 0:
                return -1
            lit += extra
        if lit > s1 - ip or lit > d1 - op:
            return -2  # literals beyond the input or the output
        dst[op:op + lit] = src[ip:ip + lit]
        ip += lit
        op += lit
        if ip == s1:
            return 0 if op == d1 else -3  # last sequence: literals only, must fill the output
        if s1 - ip < 2:
            return -1
        offset = np.int64(src[ip]) | (np.int64(src[ip + 1]) << 8)
        ip += 2
        if offset == 0 or offset > op - d0:
            return -4  # match before the start of the output
        ml = token & 15
        if ml == 15:
            extra, ip = _extended_length(src, ip, s1)
            if extra < 0:
                return -1
            ml += extra
        ml += 4
        if ml > d1 - op:
            return -5  # match beyond the output
        if offset == 1 or (offset <= 8 and _same_bytes(dst, op - offset, op)):
            dst[op:op + ml] = dst[op - 1]  # a run of one byte value (zeros, mostly): a fill
        elif offset >= ml:
            dst[op:op + ml] = dst[op - offset:op - offset + ml]
        else:  # overlapping: the pattern of period `offset` doubles with each non-overlapping copy
            ref = op - offset
            done = 0
            while done < ml:
                step = min(op + done - ref, ml - done)
                dst[op + done:op + done + step] = dst[ref:ref + step]
                done += step
        op += ml


@numba.njit(nogil=True, cache=True)
def _same_bytes(a: npt.NDArray[np.uint8], lo: int, hi: int) -> bool:
    for i in range(lo + 1, hi):
        if a[i] != a[lo]:
            return False
    return True


@numba.njit(nogil=True, cache=True)
def _transpose8(x: np.uint64) -> np.uint64:
    """8x8 bit-matrix transpose: bit 8r+c moves to 8c+r (Hacker's Delight 7-3)."""
    t = (x ^ (x >> np.uint64(7))) & np.uint64(0x00AA00AA00AA00AA)
    x = x ^ t ^ (t << np.uint64(7))
    t = (x ^ (x >> np.uint64(14))) & np.uint64(0x0000CCCC0000CCCC)
    x = x ^ t ^ (t << np.uint64(14))
    t = (x ^ (x >> np.uint64(28))) & np.uint64(0x00000000F0F0F0F0)
    return x ^ t ^ (t << np.uint64(28))


@numba.njit(nogil=True, cache=True)
def _unshuffle(tmp: npt.NDArray[np.uint8], n: int, es: int, out: npt.NDArray[np.uint8], o0: int) -> None:
    """Undo bitshuffle of n elements (n % 8 == 0) of es bytes from tmp into out[o0:o0 + n*es].

    Row r = 8*byte + bit of `tmp` holds that bit of every element, packed 8 elements a byte.
    Rows are scanned 8 bytes at a time, and groups of 8 elements whose byte is zero in all of
    them are skipped: photon-counting frames are almost all zeros, so most of the work is
    reading the planes once and the initial clear (a whole-plane pre-scan read them twice).
    """
    nb = n // 8
    out[o0:o0 + n * es] = 0
    if nb % 8 == 0:
        t64 = tmp.view(np.uint64)
        nw = nb // 8
        for b in range(es):
            for G in range(nw):
                anyset = np.uint64(0)
                for k in range(8):
                    anyset |= t64[(b * 8 + k) * nw + G]
                if anyset == 0:
                    continue
                for gg in range(8):
                    sh = _U64_8 * np.uint64(gg)
                    if (anyset >> sh) & np.uint64(0xFF) == 0:
                        continue  # these 8 elements all have this byte zero: nothing to gather
                    x = np.uint64(0)
                    for k in range(8):
                        x |= ((t64[(b * 8 + k) * nw + G] >> sh) & np.uint64(0xFF)) << (_U64_8 * np.uint64(k))
                    _scatter(_transpose8(x), out, o0 + 8 * (8 * G + gg) * es + b, es)
        return
    for b in range(es):
        for g in range(nb):
            x = np.uint64(0)
            for k in range(8):
                x |= np.uint64(tmp[(b * 8 + k) * nb + g]) << (_U64_8 * np.uint64(k))
            if x != 0:
                _scatter(_transpose8(x), out, o0 + 8 * g * es + b, es)


@numba.njit(nogil=True, cache=True)
def _scatter(y: np.uint64, out: npt.NDArray[np.uint8], base: int, es: int) -> None:
    """Byte j of y is byte `b` of element j of a group of 8: write it es bytes apart."""
    for j in range(8):
        out[base + j * es] = np.uint8((y >> (_U64_8 * np.uint64(j))) & np.uint64(0xFF))


@numba.njit(nogil=True, cache=True)
def decode_bslz4(src: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8], es: int) -> int:
    """Decode one bitshuffle/LZ4 chunk into `out` (its exact byte size); 0 or a negative code."""
    return _decode_chunk(src, out, es, np.empty(_scratch_bytes(out.shape[0]), dtype=np.uint8))


@numba.njit(nogil=True, cache=True)
def decode_bslz4_block(buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64], sizes: npt.NDArray[np.int64],
                       out: npt.NDArray[np.uint8], es: int, codes: npt.NDArray[np.int64]) -> None:
    """Decode k chunks, chunk i being buf[starts[i]:starts[i] + sizes[i]], into the rows of out (k, frame bytes).

    One call per block instead of one per frame: the per-call overhead and the scratch buffer are
    paid once. codes[i] is 0 or the negative code of `decode_bslz4`; a chunk with a negative
    size or lying outside `buf` gets -16. A bad row is zero-filled.
    """
    tmp = np.empty(_scratch_bytes(out.shape[1]), dtype=np.uint8)
    for i in range(out.shape[0]):
        s0, n = starts[i], sizes[i]
        if n < 0 or s0 < 0 or s0 + n > buf.shape[0]:
            code = -16
        else:
            code = _decode_chunk(buf[s0:s0 + n], out[i], es, tmp)
        codes[i] = code
        if code != 0:
            out[i, :] = 0


@numba.njit(nogil=True, cache=True)
def _scratch_bytes(nbytes: int) -> int:
    """Scratch for one bitshuffle block: never more than the frame, whole 64-bit words."""
    return (nbytes + 7) // 8 * 8


@numba.njit(nogil=True, cache=True)
def _decode_chunk(src: npt.NDArray[np.uint8], out: npt.NDArray[np.uint8], es: int, tmp: npt.NDArray[np.uint8]) -> int:
    """`decode_bslz4` with a caller-owned scratch `tmp` of at least `_scratch_bytes(out.size)` bytes."""
    nbytes = out.shape[0]
    ns = src.shape[0]
    if ns < 12:
        return -10  # no header
    total = np.int64(0)
    for k in range(8):
        total = (total << 8) | np.int64(src[k])
    if total != nbytes:
        return -11  # header size differs from the frame size
    bs_bytes = (np.int64(src[8]) << 24) | (np.int64(src[9]) << 16) | (np.int64(src[10]) << 8) | np.int64(src[11])
    if bs_bytes <= 0 or bs_bytes % es != 0 or (bs_bytes // es) % 8 != 0:
        return -12  # block size not a positive multiple of 8 elements
    block = bs_bytes // es
    size = nbytes // es
    ip = np.int64(12)
    op = np.int64(0)
    remaining = size
    while remaining >= 8:
        n = block if remaining >= block else remaining - remaining % 8  # n * es <= nbytes: fits in tmp
        if ns - ip < 4:
            return -13  # block header missing
        clen = (np.int64(src[ip]) << 24) | (np.int64(src[ip + 1]) << 16) | (np.int64(src[ip + 2]) << 8) | np.int64(src[ip + 3])
        ip += 4
        if clen <= 0 or clen > ns - ip:
            return -14  # block size beyond the chunk
        err = _lz4_block(src, ip, ip + clen, tmp, 0, n * es)
        if err != 0:
            return err
        _unshuffle(tmp, n, es, out, op)
        ip += clen
        op += n * es
        remaining -= n
    left = remaining * es
    if ns - ip != left:
        return -15  # trailing bytes do not match the leftover elements
    out[op:op + left] = src[ip:ip + left]
    return 0


@numba.njit(nogil=True, cache=True)
def bslz4_layout(src: npt.NDArray[np.uint8], nbytes: int, es: int) -> int:
    """Walk a bitshuffle/LZ4 chunk's block sizes without decoding (a microsecond for a 1 MB
    frame): 0 when its header gives `nbytes` and its blocks and verbatim tail fill the chunk
    exactly, else the negative code `decode_bslz4` would return for that fault. Corruption
    inside an LZ4 block is found only by decoding (`decode_bslz4`, when the archive is read)."""
    ns = src.shape[0]
    if ns < 12:
        return -10
    total = np.int64(0)
    for k in range(8):
        total = (total << 8) | np.int64(src[k])
    if total != nbytes:
        return -11
    bs_bytes = (np.int64(src[8]) << 24) | (np.int64(src[9]) << 16) | (np.int64(src[10]) << 8) | np.int64(src[11])
    if bs_bytes <= 0 or bs_bytes % es != 0 or (bs_bytes // es) % 8 != 0:
        return -12
    block = bs_bytes // es
    remaining = nbytes // es
    ip = np.int64(12)
    while remaining >= 8:
        n = block if remaining >= block else remaining - remaining % 8
        if ns - ip < 4:
            return -13
        clen = (np.int64(src[ip]) << 24) | (np.int64(src[ip + 1]) << 16) | (np.int64(src[ip + 2]) << 8) | np.int64(src[ip + 3])
        ip += 4
        if clen <= 0 or clen > ns - ip:
            return -14
        ip += clen
        remaining -= n
    return 0 if ns - ip == remaining * es else -15


def is_bitshuffle_lz4(data: h5py.Dataset) -> bool:
    """True when `data` is chunked one frame per chunk with bitshuffle/LZ4 and nothing else."""
    if data.chunks is None or data.ndim != 3 or data.chunks != (1,) + data.shape[1:]:
        return False
    plist = data.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    if len(filters) != 1 or filters[0][0] != BITSHUFFLE_FILTER:
        return False
    values = filters[0][2]
    return len(values) >= 5 and values[4] == LZ4_COMPRESSION


class FrameReader:
    """Reads frames of one dataset; bitshuffle/LZ4 frames through the checked decoder.

    Parameters
    ----------
    data
        (N, rows, cols) frames, e.g. ``entry["instrument/detector/data"]``.
    label
        how errors name the frames, e.g. ``"raw.h5:/entry2"``.
    """

    def __init__(self, data: h5py.Dataset, label: str) -> None:
        self.data = data
        self.label = label
        self.safe = is_bitshuffle_lz4(data)
        self.chunks = ChunkFetcher(data)
        self.unwritten: set[int] = set()  # frames whose chunk was never stored (a writer killed mid-block)
        self.frame_bytes = int(np.prod(data.shape[1:])) * data.dtype.itemsize

    def read(self, out: npt.NDArray[Any], start: int) -> list[int]:
        """Fill ``out`` (k, rows, cols) with frames start..start+k; returns the bad frame numbers.

        A bad frame is zero-filled in ``out``; the caller decides whether that is an error.
        """
        k = out.shape[0]
        if not self.safe:
            try:
                self.data.read_direct(out, np.s_[start:start + k])
                return []
            except OSError:
                return self._one_by_one(out, start)
        return self._decode(out, np.arange(start, start + k, dtype=np.int64))

    def read_frames(self, out: npt.NDArray[Any], frames: npt.NDArray[np.int64]) -> list[int]:
        """Fill ``out`` (k, rows, cols) with the given frames (any order, e.g. a sample); bad frame numbers."""
        frames = np.asarray(frames, dtype=np.int64)
        if not self.safe:
            bad = []
            for i, frame in enumerate(frames.tolist()):
                try:
                    self.data.read_direct(out, np.s_[frame], np.s_[i])
                except OSError:
                    out[i] = 0
                    bad.append(frame)
            return bad
        return self._decode(out, frames)

    def _decode(self, out: npt.NDArray[Any], frames: npt.NDArray[np.int64]) -> list[int]:
        """All the chunks of `frames` fetched together and decoded by one checked numba call."""
        chunks = self.chunks.fetch(frames)
        codes = np.empty(frames.size, dtype=np.int64)
        decode_bslz4_block(chunks.buf, chunks.starts, chunks.sizes, out.reshape(frames.size, -1).view(np.uint8),
                           self.data.dtype.itemsize, codes)
        self.unwritten.update(frames[chunks.unwritten].tolist())
        return frames[codes != 0].tolist()

    def _one_by_one(self, out: npt.NDArray[Any], start: int) -> list[int]:
        bad = []
        for i in range(out.shape[0]):
            try:
                self.data.read_direct(out, np.s_[start + i], np.s_[i])
            except OSError:
                out[i] = 0
                bad.append(start + i)
        return bad

    def error(self, bad: list[int]) -> CorruptFrameError:
        """The one-line error naming the file, map and frames (corrupt, or never written)."""
        corrupt = [i for i in bad if i not in self.unwritten]
        missing = [i for i in bad if i in self.unwritten]
        parts = [f"corrupt compressed {_frames(corrupt)}" if corrupt else "",
                 f"{_frames(missing)} never written" if missing else ""]
        return CorruptFrameError(f"{self.label}: {'; '.join(p for p in parts if p)} "
                                 f"(use --skip-bad-frames to process the other frames)")


def _frames(numbers: list[int]) -> str:
    shown = ", ".join(str(i) for i in numbers[:10]) + (f" and {len(numbers) - 10} more" if len(numbers) > 10 else "")
    return f"{'frame' if len(numbers) == 1 else 'frames'} {shown}"
