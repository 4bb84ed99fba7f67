"""The opmon frame protocol v1 (docs/protocol.md): build messages and check them strictly.

Everything that decides whether a message is well formed lives here, so the sender, the
archiver and the live processor agree byte for byte. Headers are msgpack maps, frames travel
as a raw second part; nothing is ever unpickled. `parse` rejects a bad message with a
`RejectedMessage` that names the reason (a short counter key) and the bad value.
"""
from __future__ import annotations

import math
import re
import struct
import time
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from opmon.errors import ProtocolError

VERSION = 1
MAX_HEADER_BYTES = 65536
MAX_SIDE = 16384
FRAME_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
CONTROL_KINDS = ("start", "map_start", "map_end", "stop")
KINDS = CONTROL_KINDS + ("frame",)
EXIT_STATUSES = ("success", "abort", "fail")
ANGLE_KEYS = ("eta", "phi", "nu", "delta")
#: A frame may carry its compressed chunk as a third part (header `chunk`): the archiver stores
#: those bytes as they are (bitshuffle/LZ4, HDF5 filter layout, element size = the dtype's).
CHUNK_CODEC = "bslz4"
#: Header key of a frame sent as its compressed chunk alone (`[header, chunk]`, no raw part): the
#: archive stream of a source that compresses at the detector. Only receivers that store the
#: chunk (the archiver) take it; the others reject it (`chunk`), they need pixels.
CHUNK_ONLY = "chunk_only"
REJECT_REASONS = ("parts", "header", "version", "kind", "field", "dtype", "shape", "size", "index",
                  "chunk", "unknown_run", "stale")
_CHUNK_HEAD = struct.Struct(">QI")   # bitshuffle/LZ4 chunk: decompressed bytes, block bytes

#: A run uid names a directory of the archive: one plain path component, never `..`, `/` or NUL.
RUN_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

MAX_TIME = 1e11          # unix seconds (year 5138): beyond it a time cannot be a date

_NUM = (int, float)
# Required fields and their accepted types, per kind ("v" and "kind" are checked first).
_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "start": {"run": (str,), "t": _NUM, "energy_ev": _NUM, "distance_m": _NUM, "pixel_size_m": (list,),
              "beam_center": (list,), "frame_shape": (list,), "dtype": (str,), "map_shape": (list,)},
    "map_start": {"run": (str,), "map": (int,), "t": _NUM, "map_shape": (list,), "n_frames": (int,)},
    "frame": {"run": (str,), "map": (int,), "seq": (int,), "frame": (int,), "index": (int,), "eta": _NUM,
              "phi": _NUM, "nu": _NUM, "delta": _NUM, "dtype": (str,), "shape": (list,), "t": _NUM},
    "map_end": {"run": (str,), "map": (int,), "n_frames": (int,), "last_seq": (int,), "t": _NUM},
    "stop": {"run": (str,), "exit_status": (str,), "n_frames": (int,), "t": _NUM},
}


class RejectedMessage(ProtocolError):
    """A message broke the protocol; `reason` is one of REJECT_REASONS (a counter key)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(slots=True)
class Message:
    """One checked message: its header and, for frames (and a start with mask), the array.

    `array` views the received ZeroMQ buffer (no copy), so it is read-only and lives as long
    as the message.
    """

    kind: str
    header: dict[str, Any]
    array: npt.NDArray[Any] | None = None   # None for a chunk-only frame (`CHUNK_ONLY`)
    chunk: memoryview | None = None      # the frame's bitshuffle/LZ4 chunk as the detector sent it

    @property
    def run(self) -> str:
        return self.header["run"]


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (tuple, set)):
        return list(obj)
    raise TypeError(f"cannot send {type(obj).__name__} in an opmon header (plain types only, never pickle)")


def pack(header: dict[str, Any]) -> bytes:
    """msgpack a header; numpy scalars/arrays become plain numbers/lists."""
    return msgpack.packb(header, default=_default, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    """Decode a msgpack header with size limits (raises ValueError etc. on garbage)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True,
                           max_bin_len=MAX_HEADER_BYTES, max_str_len=MAX_HEADER_BYTES,
                           max_array_len=MAX_HEADER_BYTES, max_map_len=4096)


def _pair(header: dict[str, Any], key: str, integer: bool) -> tuple[Any, Any]:
    value = header[key]
    if len(value) != 2 or not all(isinstance(v, int if integer else _NUM) and not isinstance(v, bool) for v in value):
        raise RejectedMessage("shape" if integer else "field", f"{key} = {value!r}, expected two {'integers' if integer else 'numbers'}")
    if integer and not all(0 < v <= MAX_SIDE for v in value):
        raise RejectedMessage("shape", f"{key} = {value!r}, sides must be 1..{MAX_SIDE}")
    return value[0], value[1]


def check_header(header: Any) -> str:
    """Check version, kind and required field types of a decoded header; return its kind."""
    if not isinstance(header, dict):
        raise RejectedMessage("header", f"header is a {type(header).__name__}, expected a map")
    version = header.get("v")
    if version != VERSION or isinstance(version, bool):
        raise RejectedMessage("version", f"protocol version {version!r}, this receiver speaks {VERSION}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise RejectedMessage("kind", f"unknown kind {kind!r}")
    for key, types in _FIELDS[kind].items():
        value = header.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise RejectedMessage("field", f"{kind}.{key} = {value!r:.80}, expected {'/'.join(t.__name__ for t in types)}")
    for key in ("map", "seq", "frame", "index", "n_frames", "last_seq"):
        if key in _FIELDS[kind] and header[key] < (-1 if key == "last_seq" else 0):
            raise RejectedMessage("field", f"{kind}.{key} = {header[key]}, expected >= 0")
    if not (math.isfinite(header["t"]) and 0 <= header["t"] < MAX_TIME):   # later formatted as a date
        raise RejectedMessage("field", f"{kind}.t = {header['t']!r}, expected a unix time")
    if not RUN_UID.fullmatch(header["run"]):   # it becomes a directory name in the archive
        raise RejectedMessage("field", f"{kind}.run = {header['run']!r:.60}, expected letters, digits, '.', '_', '-'")
    return kind


def check_chunk(chunk: memoryview, nbytes: int, itemsize: int) -> None:
    """Check a frame's bitshuffle/LZ4 chunk against the frame it claims to be, from its sizes
    alone (no decompression, a few hundred ns): the 12-byte chunk header must give the frame's
    byte size and a block of a positive multiple of 8 elements, and the chunk's length must lie
    between the least and the most those blocks can take. The bytes inside the LZ4 blocks are
    checked when the archive is read (`opmon.streaming.archive.frames`, bounds-checked).

    Raises
    ------
    RejectedMessage
        `size` when the chunk decompresses to another size than the frame's (or cannot hold
        it), `chunk` when its header is not a bitshuffle/LZ4 header.
    """
    if chunk.nbytes < _CHUNK_HEAD.size:
        raise RejectedMessage("chunk", f"chunk of {chunk.nbytes} bytes: shorter than its {_CHUNK_HEAD.size}-byte header")
    total, block_bytes = _CHUNK_HEAD.unpack_from(chunk)
    if total != nbytes:
        raise RejectedMessage("size", f"chunk decompresses to {total} bytes, the frame's shape and dtype need {nbytes}")
    if block_bytes <= 0 or block_bytes % itemsize or (block_bytes // itemsize) % 8:
        raise RejectedMessage("chunk", f"chunk block of {block_bytes} bytes, expected a positive multiple of 8 elements"
                                       f" of {itemsize} bytes (not a bitshuffle/LZ4 chunk?)")
    elements, block = nbytes // itemsize, block_bytes // itemsize
    blocks = -(-(elements - elements % 8) // block)
    tail = elements % 8 * itemsize          # the last < 8 elements are stored verbatim
    least = _CHUNK_HEAD.size + blocks * 5 + tail                     # 4-byte size + >= 1 LZ4 byte per block
    most = _CHUNK_HEAD.size + blocks * 4 + nbytes + nbytes // 255 + 16 * blocks + tail   # LZ4's worst case
    if not least <= chunk.nbytes <= most:
        raise RejectedMessage("size", f"chunk of {chunk.nbytes} bytes, a {nbytes}-byte frame in {blocks} block(s) "
                                      f"takes {least}..{most}")


def parse(parts: list[Any], accept_chunk_only: bool = False) -> Message:
    """Check one received multipart message (zmq.Frame or bytes parts) without copying the frame.

    `accept_chunk_only`: take frames sent as their compressed chunk alone (`Message.array` is
    then None, `Message.chunk` holds it); for receivers that store chunks, the archiver.

    Raises
    ------
    RejectedMessage
        with the reason and the offending value.
    """
    if not 1 <= len(parts) <= 3:
        raise RejectedMessage("parts", f"{len(parts)} parts, expected 1 (control) or 2 (frame; 3 with its chunk)")
    head = parts[0]
    raw = head.bytes if hasattr(head, "bytes") else head
    if len(raw) > MAX_HEADER_BYTES:
        raise RejectedMessage("header", f"header of {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        header = unpack(raw)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise RejectedMessage("header", f"not a msgpack map ({type(exc).__name__})") from None
    kind = check_header(header)
    if kind == "frame":
        chunked = header.get("chunk") == CHUNK_CODEC
        chunk_only = chunked and header.get(CHUNK_ONLY) is True
        n_parts = 2 if chunk_only else (3 if chunked else 2)
        if len(parts) != n_parts:
            raise RejectedMessage("parts", f"frame with {len(parts)} part(s), expected {n_parts}"
                                           f"{' (chunk = ' + CHUNK_CODEC + ')' if chunked else ''}"
                                           f"{' (chunk only)' if chunk_only else ''}")
        if chunk_only and not accept_chunk_only:
            raise RejectedMessage("chunk", "frame sent as its compressed chunk only: this receiver needs the raw frame "
                                           "(only the archive stream carries chunk-only frames)")
        for key in ANGLE_KEYS:
            if not math.isfinite(header[key]):
                raise RejectedMessage("field", f"frame.{key} = {header[key]!r}, expected a finite angle")
        for key in ("x", "y"):    # optional piezo position: nil or a number
            value = header.get(key)
            if value is not None and (not isinstance(value, _NUM) or isinstance(value, bool)):
                raise RejectedMessage("field", f"frame.{key} = {value!r:.40}, expected a number or nil")
        monitor = header.get("monitor")  # optional incident-beam monitor: the live maps divide by it
        if monitor is not None and (not isinstance(monitor, _NUM) or isinstance(monitor, bool)
                                    or not math.isfinite(monitor) or monitor <= 0):
            raise RejectedMessage("field", f"frame.monitor = {monitor!r:.40}, expected a number > 0 or nil")
        dtype = FRAME_DTYPES.get(header["dtype"])
        if dtype is None:
            raise RejectedMessage("dtype", f"dtype {header['dtype']!r:.40}, expected one of {list(FRAME_DTYPES)}")
        rows, cols = _pair(header, "shape", integer=True)
        nbytes = rows * cols * dtype.itemsize
        if chunk_only:
            chunk = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
            check_chunk(chunk, nbytes, dtype.itemsize)
            return Message(kind, header, None, chunk)
        buf = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
        if buf.nbytes != nbytes:
            raise RejectedMessage("size", f"buffer of {buf.nbytes} bytes, shape {[rows, cols]} {header['dtype']} needs {nbytes}")
        chunk = None
        if chunked:
            chunk = parts[2].buffer if hasattr(parts[2], "buffer") else memoryview(parts[2])
            check_chunk(chunk, nbytes, dtype.itemsize)
        return Message(kind, header, np.frombuffer(buf, dtype=dtype).reshape(rows, cols), chunk)
    if kind == "start":
        _pair(header, "frame_shape", integer=True)
        _pair(header, "map_shape", integer=True)
        pixel = _pair(header, "pixel_size_m", integer=False)
        centre = _pair(header, "beam_center", integer=False)
        for key, value in (("energy_ev", header["energy_ev"]), ("distance_m", header["distance_m"]),
                           ("pixel_size_m", pixel[0]), ("pixel_size_m", pixel[1])):
            if not (math.isfinite(value) and value > 0):       # the geometry divides by them
                raise RejectedMessage("field", f"start.{key} = {value!r}, expected a positive number")
        if not all(math.isfinite(c) for c in centre):
            raise RejectedMessage("field", f"start.beam_center = {list(centre)!r}, expected finite numbers")
        if header["dtype"] not in FRAME_DTYPES:
            raise RejectedMessage("dtype", f"start.dtype {header['dtype']!r:.40}, expected one of {list(FRAME_DTYPES)}")
        mask = None
        if header.get("mask"):
            if len(parts) != 2:
                raise RejectedMessage("parts", "start announces a mask but has no second part")
            rows, cols = header["frame_shape"]
            buf = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
            if buf.nbytes != rows * cols:
                raise RejectedMessage("size", f"mask of {buf.nbytes} bytes, frame shape {[rows, cols]} needs {rows * cols}")
            mask = np.frombuffer(buf, dtype=np.uint8).reshape(rows, cols)
        elif len(parts) != 1:
            raise RejectedMessage("parts", "start without mask must have 1 part")
        return Message(kind, header, mask)
    if len(parts) != 1:
        raise RejectedMessage("parts", f"{kind} with {len(parts)} parts, expected 1")
    if kind == "map_start":
        _pair(header, "map_shape", integer=True)
    if kind == "stop" and header["exit_status"] not in EXIT_STATUSES:
        raise RejectedMessage("field", f"stop.exit_status {header['exit_status']!r:.40}, expected one of {EXIT_STATUSES}")
    return Message(kind, header)


# --- builders: the only place headers are written ---------------------------------------------

def start_header(run: str, *, energy_ev: float, distance_m: float, pixel_size_m: tuple[float, float],
                 beam_center: tuple[float, float], frame_shape: tuple[int, int], dtype: str,
                 map_shape: tuple[int, int], mask: bool = False, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Header of a run's `start` (static geometry; lengths in m, energy in eV)."""
    return {"v": VERSION, "kind": "start", "run": run, "t": time.time(), "energy_ev": float(energy_ev),
            "distance_m": float(distance_m), "pixel_size_m": [float(p) for p in pixel_size_m],
            "beam_center": [float(b) for b in beam_center], "frame_shape": [int(s) for s in frame_shape],
            "dtype": str(np.dtype(dtype)), "map_shape": [int(s) for s in map_shape], "mask": bool(mask),
            "metadata": metadata or {}}


def map_start_header(run: str, map_number: int, map_shape: tuple[int, int], n_frames: int = 0,
                     trigger: dict[str, Any] | None = None) -> dict[str, Any]:
    """Header announcing a map and how many frames it should hold (0 = unknown)."""
    return {"v": VERSION, "kind": "map_start", "run": run, "map": int(map_number), "t": time.time(),
            "map_shape": [int(s) for s in map_shape], "n_frames": int(n_frames), "trigger": trigger or {}}


def map_end_header(run: str, map_number: int, n_frames: int, last_seq: int) -> dict[str, Any]:
    """Header closing a map: frames sent in it and the last sequence number used."""
    return {"v": VERSION, "kind": "map_end", "run": run, "map": int(map_number), "n_frames": int(n_frames),
            "last_seq": int(last_seq), "t": time.time()}


def stop_header(run: str, exit_status: str, n_frames: int, n_maps: int, reason: str = "") -> dict[str, Any]:
    """Header ending a run; frames of this run arriving later are stale."""
    if exit_status not in EXIT_STATUSES:
        raise ProtocolError(f"exit_status {exit_status!r}, expected one of {EXIT_STATUSES}")
    return {"v": VERSION, "kind": "stop", "run": run, "exit_status": exit_status, "n_frames": int(n_frames),
            "n_maps": int(n_maps), "reason": reason, "t": time.time()}


def frame_header(run: str, map_number: int, seq: int, frame: int, index: int, eta: float, phi: float, nu: float,
                 delta: float, dtype: str, shape: tuple[int, int], x: float | None = None,
                 y: float | None = None, t: float | None = None, chunk: bool = False,
                 monitor: float | None = None, chunk_only: bool = False) -> dict[str, Any]:
    """Header of one frame (angles in degrees, x/y in micrometres; `chunk`: a bslz4 chunk follows;
    `chunk_only`: the bslz4 chunk is the only part after the header, no raw frame;
    `monitor`: the incident-beam monitor reading of the frame, counts, only when there is one)."""
    extra: dict[str, Any] = {"chunk": CHUNK_CODEC} if chunk or chunk_only else {}
    if chunk_only:
        extra[CHUNK_ONLY] = True
    if monitor is not None:
        extra["monitor"] = float(monitor)
    return {**extra, "v": VERSION, "kind": "frame", "run": run, "map": int(map_number), "seq": int(seq),
            "frame": int(frame), "index": int(index), "eta": float(eta), "phi": float(phi), "nu": float(nu),
            "delta": float(delta), "x": None if x is None else float(x), "y": None if y is None else float(y),
            "dtype": dtype, "shape": [int(shape[0]), int(shape[1])], "t": time.time() if t is None else t}


# --- archive acknowledgements (docs/protocol.md, "Archive acknowledgements") ------------------
# `hello` and `ack` travel from the archiver to the sender on `frames_archive_ack`; `sync` goes
# from the sender to the archiver on `frames_archive`, ahead of the messages it re-sends.
ACK_KINDS = ("hello", "ack")


def hello_header(token: str) -> dict[str, Any]:
    """An archiver (re)started: `token` names this archiver process until it exits."""
    return {"v": VERSION, "kind": "hello", "token": token, "t": time.time()}


def ack_header(token: str, epoch: int, handled: int) -> dict[str, Any]:
    """The first `handled` messages after this archiver's `sync` number `epoch` are durable on disk."""
    return {"v": VERSION, "kind": "ack", "token": token, "epoch": int(epoch), "handled": int(handled), "t": time.time()}


def sync_header(token: str, epoch: int, resend: int) -> dict[str, Any]:
    """Answer to `hello`: the next `resend` messages are re-sent (held, not yet acknowledged)."""
    return {"v": VERSION, "kind": "sync", "token": token, "epoch": int(epoch), "resend": int(resend), "t": time.time()}


def parse_ack(data: bytes) -> dict[str, Any]:
    """Check a message of the acknowledgement channel (hello or ack).

    Raises
    ------
    RejectedMessage
        if it is not a version-1 hello/ack with a string token (and an int `handled`).
    """
    try:
        header = unpack(data)
    except Exception:
        raise RejectedMessage("header", "acknowledgement is not a msgpack map") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise RejectedMessage("version", f"acknowledgement version {header.get('v') if isinstance(header, dict) else None!r}")
    if header.get("kind") not in ACK_KINDS or not isinstance(header.get("token"), str):
        raise RejectedMessage("kind", f"acknowledgement kind {header.get('kind')!r:.40}")
    if header["kind"] == "ack":
        for key in ("epoch", "handled"):
            value = header.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise RejectedMessage("field", f"ack.{key} = {value!r:.40}, expected an int >= 0")
    return header


def parse_sync(parts: list[Any]) -> dict[str, Any] | None:
    """The header if this one-part frame-stream message is a `sync`, else None (cheap for frames)."""
    if len(parts) != 1:
        return None
    head = parts[0]
    raw = head.bytes if hasattr(head, "bytes") else head
    if len(raw) > 256 or b"sync" not in raw:
        return None
    try:
        header = unpack(raw)
    except Exception:
        return None
    if (isinstance(header, dict) and header.get("kind") == "sync" and header.get("v") == VERSION
            and isinstance(header.get("token"), str) and isinstance(header.get("resend"), int)
            and isinstance(header.get("epoch"), int)):
        return header
    return None
