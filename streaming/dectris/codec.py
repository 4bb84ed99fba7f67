"""DECTRIS SIMPLON stream V2 messages: CBOR in, checked Python objects out (and back, for senders).

Stream V2 (DECTRIS's documentation repository, `stream_v2/` and `cbor/dectris-compression-tag.md`)
sends one CBOR map per ZeroMQ message, `type` = start / image / end. Arrays are RFC 8746
multi-dimensional arrays (tag 40, row-major; 1040, column-major) around typed arrays (tags
64-87), whose byte string may be DECTRIS's compression tag 56500 `[algorithm, element size,
bytes]` ("bslz4": the HDF5 bitshuffle filter's chunk format; "lz4": the HDF5 LZ4 filter's).
Decoding keeps a compressed image as it arrived (`Compressed`), so the archive can store the
detector's own bslz4 chunk and decompression happens once, with `dectris-compression`.
Every malformed message raises `RejectedMessage` with a counter key as reason (the same class
opmon's own protocol uses), never a cbor2 or decompression traceback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np
import numpy.typing as npt
from dectris.compression import decompress

from opmon.streaming.protocol import RejectedMessage

COMPRESSION_TAG = 56500
SELF_DESCRIBED = b"\xd9\xd9\xf7"      # tag 55799 ("this is CBOR"), which DECTRIS puts first
ROW_MAJOR_TAG, COLUMN_MAJOR_TAG = 40, 1040
#: RFC 8746 typed-array tags (integers and floats; the clamped uint8 tag 68 is plain uint8).
TYPED_ARRAY_TAGS: dict[int, str] = {
    64: "u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "u1", 69: "<u2", 70: "<u4", 71: "<u8",
    72: "i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
    80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
}
#: Frame dtypes a photon-counting detector sends (DECTRIS: 8, 16 or 32 bit unsigned).
FRAME_KINDS = {np.dtype("u1"), np.dtype("u2"), np.dtype("u4")}
ALGORITHMS = ("bslz4", "lz4")
MAX_MESSAGE_BYTES = 1 << 31
REJECT_REASONS = ("cbor", "type", "field", "tag", "compression", "dtype", "shape", "channel", "series",
                  "unknown_series", "duplicate", "index", "user_data")


@dataclass(frozen=True, slots=True)
class Compressed:
    """Tag 56500: bytes as the detector compressed them (`elem_size` is bslz4's element size)."""

    algorithm: str
    elem_size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TypedArray:
    """An RFC 8746 typed array whose bytes may still be compressed."""

    dtype: np.dtype
    payload: bytes | Compressed


@dataclass(frozen=True, slots=True)
class MultiDimArray:
    """An RFC 8746 multi-dimensional array (dims outermost first, as the tag gives them)."""

    dims: tuple[int, ...]
    array: TypedArray
    column_major: bool = False


def _tag_hook(errors: list[RejectedMessage]) -> Any:
    def hook(*args: Any) -> Any:
        # cbor2 5 calls hook(decoder, tag); cbor2 6 calls hook(tag, immutable)
        tag = args[0] if isinstance(args[0], cbor2.CBORTag) else args[1]
        value = tag.value
        if tag.tag == COMPRESSION_TAG:
            if not (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
                    and isinstance(value[1], int) and isinstance(value[2], bytes)):
                errors.append(RejectedMessage("tag", "tag 56500 must hold [algorithm, element size, bytes]"))
                raise errors[-1]
            return Compressed(value[0], value[1], value[2])
        if tag.tag in TYPED_ARRAY_TAGS:
            if not isinstance(value, (bytes, Compressed)):
                errors.append(RejectedMessage("tag", f"typed array tag {tag.tag} around a {type(value).__name__}, "
                                                     "expected a byte string"))
                raise errors[-1]
            return TypedArray(np.dtype(TYPED_ARRAY_TAGS[tag.tag]), value)
        if tag.tag in (ROW_MAJOR_TAG, COLUMN_MAJOR_TAG):
            if not (isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], (list, tuple))
                    and all(isinstance(d, int) and d > 0 for d in value[0]) and isinstance(value[1], TypedArray)):
                errors.append(RejectedMessage("tag", f"tag {tag.tag} must hold [dimensions, typed array]"))
                raise errors[-1]
            return MultiDimArray(tuple(value[0]), value[1], tag.tag == COLUMN_MAJOR_TAG)
        return tag      # other tags (dates are decoded by cbor2 itself) stay as they are
    return hook


def loads(raw: bytes | memoryview) -> dict[str, Any]:
    """Decode one stream V2 message into a map with a known `type`.

    Raises
    ------
    RejectedMessage
        reason `cbor` (not CBOR, truncated), `tag` (a typed-array or compression tag of the
        wrong form), `type` (not a map, or an unknown `type`).
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        raise RejectedMessage("cbor", f"message of {len(raw)} bytes")
    errors: list[RejectedMessage] = []
    if bytes(raw[:3]) == SELF_DESCRIBED:
        raw = raw[3:]     # decoded inside a tag, the map would come out immutable (frozendict, tuples)
    try:
        message = cbor2.loads(raw, tag_hook=_tag_hook(errors))
    except RejectedMessage:
        raise
    except Exception as exc:   # cbor2 wraps what the hook raised; garbage raises several types
        if errors:
            raise errors[0] from None
        raise RejectedMessage("cbor", f"not a CBOR message ({str(exc)[:80]})") from None
    if not isinstance(message, dict):
        raise RejectedMessage("type", f"message is a {type(message).__name__}, expected a CBOR map")
    if message.get("type") not in ("start", "image", "end"):
        raise RejectedMessage("type", f"type {message.get('type')!r:.40}, expected start, image or end")
    return message


def decompressed(array: TypedArray) -> bytes:
    """The typed array's plain bytes (decompressed with dectris-compression if needed)."""
    payload = array.payload
    if isinstance(payload, bytes):
        return payload
    if payload.algorithm not in ALGORITHMS:
        raise RejectedMessage("compression", f"algorithm {payload.algorithm!r:.40}, expected one of {ALGORITHMS}")
    if payload.algorithm == "bslz4" and payload.elem_size != array.dtype.itemsize:
        raise RejectedMessage("compression", f"bslz4 element size {payload.elem_size} for {array.dtype} data "
                                             f"({array.dtype.itemsize} bytes)")
    try:
        return decompress(payload.data, payload.algorithm, elem_size=array.dtype.itemsize)
    except Exception as exc:   # RuntimeError("error decompressing stream") on corrupt or truncated data
        raise RejectedMessage("compression", f"{payload.algorithm} data of {len(payload.data)} bytes does not "
                                             f"decompress ({exc})") from None


def to_ndarray(value: Any, what: str) -> npt.NDArray[Any]:
    """A multi-dimensional array as numpy (C order, native byte order; read-only when no copy was needed).

    Raises
    ------
    RejectedMessage
        reason `field` (not an array), `compression`, `shape` (bytes do not fill the dims).
    """
    if not isinstance(value, MultiDimArray):
        raise RejectedMessage("field", f"{what} is a {type(value).__name__}, expected a multi-dimensional array (tag 40)")
    raw = decompressed(value.array)
    dtype = value.array.dtype
    expected = int(np.prod(value.dims)) * dtype.itemsize
    if len(raw) != expected:
        raise RejectedMessage("shape", f"{what}: {len(raw)} bytes for dims {list(value.dims)} of {dtype} "
                                       f"(needs {expected})")
    out = np.frombuffer(raw, dtype=dtype).reshape(value.dims, order="F" if value.column_major else "C")
    if not dtype.isnative:
        out = out.astype(dtype.newbyteorder("="))
    return np.ascontiguousarray(out)


def frame_chunk(value: MultiDimArray) -> bytes | None:
    """The detector's bslz4 bytes of a row-major frame, to be stored as they are; else None."""
    payload = value.array.payload
    if (isinstance(payload, Compressed) and payload.algorithm == "bslz4" and not value.column_major
            and value.array.dtype.isnative and payload.elem_size == value.array.dtype.itemsize):
        return payload.data
    return None


# --- encoding: what a detector sends (opmon's own stream V2 sender, tests, benchmarks) ---------

_TAG_OF = {np.dtype("u1"): 64, np.dtype("<u2"): 69, np.dtype("<u4"): 70, np.dtype("<i4"): 78, np.dtype("<f4"): 85}


def multi_dim_array(array: npt.NDArray[Any], compressed: Compressed | None = None) -> cbor2.CBORTag:
    """Tag 40 around a typed array of `array` (or around `compressed`, its compressed bytes)."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.itemsize > 1 else array.dtype
    payload: Any = (np.ascontiguousarray(array, dtype=dtype).tobytes() if compressed is None else
                    cbor2.CBORTag(COMPRESSION_TAG, [compressed.algorithm, compressed.elem_size, compressed.data]))
    return cbor2.CBORTag(ROW_MAJOR_TAG, [list(array.shape), cbor2.CBORTag(_TAG_OF[np.dtype(dtype)], payload)])


def dumps(message: dict[str, Any]) -> bytes:
    """One stream V2 message as the detector sends it (CBOR, self-described with tag 55799)."""
    return cbor2.dumps(cbor2.CBORTag(55799, message))
