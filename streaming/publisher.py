"""Sending end of the lossless frame stream: the detector's ZeroMQ frame sink.

One PUSH socket per lossless consumer (archiver, live processor), each bound, each sent the
same bytes: a PUSH socket with two peers would deal frames out round-robin instead. Frames
go zero-copy; a full queue blocks the sender (back-pressure) and a receiver that stays away
longer than `stall_timeout_s` raises `StreamStalledError` instead of losing frames silently.
With `ack_endpoint`, the first endpoint (the archiver's) is an acknowledged stream
(`AckedStream`): every message is held until the archiver reports it durable and is re-sent
to a restarted archiver, so killing the archiver loses nothing. With `archive_chunk_only`, a
frame sent with its detector-compressed chunk goes to the archiver as that chunk alone (about
1 % of the bytes of a sparse photon-counting frame, nothing to compress there) and to every
other endpoint as the raw frame alone.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from opmon.errors import FrameShapeError, ProtocolError, StreamStalledError
from opmon.streaming import protocol as P
from opmon.streaming.archive.spool import AckedStream

log = logging.getLogger(__name__)


class ZmqFrameSink:
    """Sends a run (start, map_start, frames, map_end, stop) to every endpoint in order.

    Sequence numbers (per run) and frame-in-map indices are assigned here, so they are
    gap-free by construction and any gap a receiver sees is a real loss.

    Parameters
    ----------
    endpoints
        ``tcp://127.0.0.1:5550`` etc.; each gets its own bound PUSH socket.
    sndhwm
        frames queued per receiver before `send_frame` blocks.
    stall_timeout_s
        how long a blocked send waits before raising StreamStalledError.
    ack_endpoint
        if given, the first endpoint is the archiver's and its messages are held until the
        archiver acknowledges them on this endpoint (bound here); see `AckedStream`.
    spool_bytes
        bound on what the archive stream holds unacknowledged (frames beyond it wait, then drop).
    archive_chunk_only
        the first endpoint is the archiver's: a frame sent with its `chunk` goes there as the
        chunk only (protocol `chunk_only`), and to the others without it. Off: every endpoint
        gets the same bytes (the chunk as a third part).
    """

    def __init__(self, endpoints: Sequence[str], *, sndhwm: int = 200, stall_timeout_s: float = 30.0,
                 context: zmq.Context | None = None, bind: bool = True, ack_endpoint: str | None = None,
                 spool_bytes: int = 1 << 30, archive_chunk_only: bool = False) -> None:
        if not endpoints:
            raise ProtocolError("ZmqFrameSink needs at least one endpoint")
        self._own_context = context is None     # then close() waits for queued frames to leave
        self.context = context or zmq.Context()
        self.sockets: list[zmq.Socket] = []
        for endpoint in endpoints:
            sock = self.context.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, sndhwm)
            sock.setsockopt(zmq.SNDTIMEO, int(stall_timeout_s * 1000))
            sock.setsockopt(zmq.LINGER, int(stall_timeout_s * 1000))
            if bind:
                sock.bind(endpoint)
            else:
                sock.connect(endpoint)
            self.sockets.append(sock)
        self.endpoints = [s.getsockopt_string(zmq.LAST_ENDPOINT) for s in self.sockets]
        self.archive_chunk_only = archive_chunk_only
        self.archive: AckedStream | None = None
        if ack_endpoint is not None:
            self.archive = AckedStream(self.sockets[0], ack_endpoint, spool_bytes=spool_bytes,
                                       stall_timeout_s=stall_timeout_s, context=self.context, bind=bind)
        self.map_seqs: dict[int, tuple[int, int]] = {}   # map -> (first seq, frames sent)
        self.archive_dropped: list[int] = []             # seqs the archive stream had to drop
        self.run: str | None = None
        self.frame_shape: tuple[int, int] = (0, 0)
        self.dtype = ""
        self.map_shape: tuple[int, int] = (0, 0)
        self.seq = 0
        self.map_number = -1
        self.map_frames = 0
        self.n_maps = 0
        self._map_open = False

    def _send(self, parts: list[Any], nbytes: int = 0, archive_parts: list[Any] | None = None) -> bool:
        """Send to every endpoint (`archive_parts` instead to the first, the archiver's, when
        given); False if the archive stream had to drop this frame (`nbytes` > 0, its size there)."""
        kept = True
        for i, (sock, endpoint) in enumerate(zip(self.sockets, self.endpoints)):
            mine = archive_parts if i == 0 and archive_parts is not None else parts
            if i == 0 and self.archive is not None:
                kept = self.archive.send(mine, nbytes or len(mine[0]), droppable=nbytes > 0)
                continue
            try:
                sock.send_multipart(mine, copy=False)
            except zmq.Again:
                raise StreamStalledError(f"no receiver took frames from {endpoint} for "
                                         f"{sock.getsockopt(zmq.SNDTIMEO) / 1000:.1f} s (is it running?)") from None
        return kept

    def start_run(self, *, energy_ev: float, distance_m: float, pixel_size_m: tuple[float, float],
                  beam_center: tuple[float, float], frame_shape: tuple[int, int], dtype: npt.DTypeLike,
                  map_shape: tuple[int, int], run: str | None = None, mask: npt.NDArray[np.uint8] | None = None,
                  metadata: dict[str, Any] | None = None) -> str:
        """Begin a run (ends an open one as aborted); returns its uid."""
        if self.run is not None:
            self.stop_run("abort", reason="a new run started")
        self.run = run or str(uuid.uuid4())
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.dtype = str(np.dtype(dtype))
        if self.dtype not in P.FRAME_DTYPES:
            raise ProtocolError(f"frame dtype {self.dtype}, expected one of {list(P.FRAME_DTYPES)}")
        self.map_shape = (int(map_shape[0]), int(map_shape[1]))
        self.seq, self.map_number, self.n_maps, self._map_open = 0, -1, 0, False
        self.map_seqs, self.archive_dropped = {}, []
        header = P.start_header(self.run, energy_ev=energy_ev, distance_m=distance_m, pixel_size_m=pixel_size_m,
                                beam_center=beam_center, frame_shape=self.frame_shape, dtype=self.dtype,
                                map_shape=self.map_shape, mask=mask is not None, metadata=metadata)
        parts: list[Any] = [P.pack(header)]
        if mask is not None:
            parts.append(np.ascontiguousarray(mask, dtype=np.uint8))
        self._send(parts)
        return self.run

    def start_map(self, n_frames: int = 0, *, map_number: int | None = None, map_shape: tuple[int, int] | None = None,
                  trigger: dict[str, Any] | None = None) -> int:
        """Begin the next map (closing an open one); returns its number."""
        if self.run is None:
            raise ProtocolError("start_map before start_run")
        if self._map_open:
            self.end_map()
        self.map_number = self.map_number + 1 if map_number is None else int(map_number)
        self.map_frames = 0
        self.map_seqs[self.map_number] = (self.seq, 0)
        self._map_open = True
        self._send([P.pack(P.map_start_header(self.run, self.map_number, map_shape or self.map_shape, n_frames, trigger))])
        return self.map_number

    def send_frame(self, frame: npt.NDArray[Any], *, index: int, eta: float, phi: float, nu: float, delta: float,
                   x: float | None = None, y: float | None = None, chunk: bytes | None = None,
                   monitor: float | None = None) -> int:
        """Send one frame zero-copy (do not modify `frame` afterwards); returns its seq.

        `monitor`: the frame's incident-beam monitor reading, when the beamline records one.

        `chunk`: the same frame as the detector compressed it (bitshuffle/LZ4, HDF5 filter
        layout), sent along so the archiver stores it without compressing again (and instead
        of the raw frame to the archiver with `archive_chunk_only`).

        Raises
        ------
        FrameShapeError
            if the frame does not match the run's shape and dtype.
        StreamStalledError
            if a receiver blocked the send for longer than `stall_timeout_s`.
        """
        if not self._map_open or self.run is None:
            raise ProtocolError("send_frame outside a map (call start_run and start_map first)")
        if frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise FrameShapeError(f"frame {frame.shape} {frame.dtype}, run declared {self.frame_shape} {self.dtype}")
        if not frame.flags.c_contiguous:
            frame = np.ascontiguousarray(frame)
        fields = (self.run, self.map_number, self.seq, self.map_frames, index, eta, phi, nu, delta, self.dtype,
                  self.frame_shape, x, y)
        if chunk is not None and self.archive_chunk_only:
            header = P.frame_header(*fields, monitor=monitor)
            to_archive = P.pack({**header, "chunk": P.CHUNK_CODEC, P.CHUNK_ONLY: True})
            kept = self._send([P.pack(header), frame], len(to_archive) + len(chunk), [to_archive, chunk])
        else:
            packed = P.pack(P.frame_header(*fields, chunk=chunk is not None, monitor=monitor))
            parts: list[Any] = [packed, frame] if chunk is None else [packed, frame, chunk]
            kept = self._send(parts, len(packed) + frame.nbytes + (0 if chunk is None else len(chunk)))
        if not kept:
            self.archive_dropped.append(self.seq)
        seq = self.seq
        self.seq += 1
        self.map_frames += 1
        self.map_seqs[self.map_number] = (self.map_seqs[self.map_number][0], self.map_frames)
        return seq

    def end_map(self) -> None:
        """Close the open map (receivers finalize it)."""
        if not self._map_open or self.run is None:
            return
        self._send([P.pack(P.map_end_header(self.run, self.map_number, self.map_frames, self.seq - 1))])
        self._map_open = False
        self.n_maps += 1

    def stop_run(self, exit_status: str = "success", reason: str = "") -> None:
        """End the run; later frames of it are stale for every receiver."""
        if self.run is None:
            return
        if self._map_open:
            self.end_map()
        self._send([P.pack(P.stop_header(self.run, exit_status, self.seq, self.n_maps, reason))])
        self.run = None

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until the archiver acknowledged every message (True at once without acks)."""
        if self.archive is None:
            return True
        timeout = self.archive.stall_timeout_s if timeout_s is None else timeout_s
        return self.archive.drain(timeout)

    def close(self) -> None:
        """Stop an open run as aborted, wait for the archiver's acknowledgements, close the sockets.

        With its own context, wait (up to the stall timeout) until queued frames have left:
        zero-copy frames must outlive their sending, or the process could exit under them.
        """
        try:
            if self.run is not None:
                self.stop_run("abort", reason="sink closed")
            if self.archive is not None and self.sockets:
                if not self.drain():
                    log.error("archiver did not acknowledge %d message(s) within %.0f s; they may be lost",
                              self.archive.held, self.archive.stall_timeout_s)
        finally:
            if self.archive is not None:
                self.archive.close()
            for sock in self.sockets:
                sock.close()
            self.sockets = []
            if self._own_context:
                self.context.term()
