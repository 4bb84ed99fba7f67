"""The archiver service: keeps every frame, reading, document and final map of a run.

It pulls the lossless frame stream and the document channel, writes the run directory of
docs/protocol.md (per-map SWMR raw files, potentiostat NXlog, master file) and flushes at
least every `flush_interval_s`, so a kill -9 leaves readable files holding every frame up to
the last flush. Final maps arrive from the live processor on their own lossless channel and
are written in the FORMATS.md maps layout by this package (`final_maps`).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import h5py
import numpy as np
import zmq

from opmon.errors import ArchiveError, OpmonError
from opmon.streaming import protocol as P
from opmon.streaming.archive.acks import ArchiveAcks, PreSyncHold
from opmon.streaming.archive.chunks import ChunkCompressor
from opmon.streaming.archive.disk_full import DEFAULT_RESERVE, DiskGuard, is_disk_full
from opmon.streaming.archive.final_maps import write_final_maps
from opmon.streaming.archive.frames import bslz4_layout, decode_bslz4
from opmon.streaming.archive.layout import DOCUMENTS, ENTRY, MAPS, POTENTIOSTAT, map_file_name, maps_file_name
from opmon.streaming.archive.maps_file import grid_axes, read_axes, write_axes
from opmon.streaming.archive.raw import read_raw_meta
from opmon.streaming.archive.reader import RunArchive, map_start_of, read_map_frames, read_readings
from opmon.streaming.archive.restart import rebuild, set_aside
from opmon.streaming.archive.run_writer import MapFileWriter, PotentiostatLog, RunDirectory
from opmon.streaming.receiver import FrameReceiver

log = logging.getLogger(__name__)
#: How long, and how many, final maps of a run whose start has not arrived yet are held.
EARLY_MAPS_S = 60.0
EARLY_MAPS_MAX = 1000


def _maps_run(parts: list[bytes]) -> Any:
    """The run uid a final-maps message names (None if its header is unreadable)."""
    try:
        return P.unpack(parts[1]).get("run")
    except Exception:  # noqa: BLE001 (garbage is counted when the message is handled)
        return None


@dataclass
class _Sidecar:
    """A run's potentiostat log and document journal; they outlive the frame stream briefly."""

    potentiostat: PotentiostatLog
    documents: TextIO
    deadline: float | None = None


class Archiver:
    """Run-directory writer behind three sockets; call `run()` or step with `poll_once()`.

    Parameters
    ----------
    directory
        archive root; each run goes to ``directory/<run uid>/``.
    frames_endpoint, docs_endpoint
        lossless PULL endpoints to connect to (the acquisition binds).
    maps_endpoint
        lossless PULL endpoint this archiver binds for final maps (None: no maps).
    status_endpoint
        PUB endpoint this archiver binds for its lossy status (None: no status).
    ack_endpoint
        where the frame sender takes acknowledgements (None: this archiver acknowledges nothing).
    compress_threads
        threads compressing frames into chunks (None: one per core).
    """

    def __init__(self, directory: str | Path, frames_endpoint: str, docs_endpoint: str | None = None,
                 maps_endpoint: str | None = None, status_endpoint: str | None = None, *,
                 flush_interval_s: float = 0.5, rcvhwm: int = 200, grace_s: float = 5.0,
                 context: zmq.Context | None = None, ack_endpoint: str | None = None,
                 disk_reserve_bytes: int = DEFAULT_RESERVE, compress_threads: int | None = None) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create archive directory {self.directory}: {exc.strerror}") from exc
        self.context = context or zmq.Context.instance()
        self.frames = FrameReceiver(frames_endpoint, rcvhwm=rcvhwm, context=self.context, name="archiver",
                                    resolver=lambda uid: RunArchive(self.directory, uid).start(mask_wait_s=0.0),
                                    accept_chunk_only=True, check=self._check_chunk)
        self.poller = zmq.Poller()
        self.poller.register(self.frames.socket, zmq.POLLIN)
        self.docs = self._socket(zmq.PULL, docs_endpoint, bind=False)
        self.maps = self._socket(zmq.PULL, maps_endpoint, bind=True)
        self.status_socket = self._socket(zmq.PUB, status_endpoint, bind=True)
        self.acks = None if ack_endpoint is None else ArchiveAcks(self.context, ack_endpoint)
        self.compressor = ChunkCompressor(compress_threads)
        self.presync = PreSyncHold()
        self.flush_interval_s = flush_interval_s
        self.run_dir: RunDirectory | None = None
        self.runs: dict[str, RunDirectory] = {}
        self.map_writer: MapFileWriter | None = None
        self.sidecars: dict[str, _Sidecar] = {}
        self.grace_s = grace_s
        self.early_readings: deque[dict[str, Any]] = deque(maxlen=100_000)
        self.early_docs: deque[tuple[str, str, dict[str, Any]]] = deque(maxlen=100_000)
        self.early_maps: deque[tuple[float, list[bytes]]] = deque()   # final maps before their run's start
        self.doc_run: str | None = None
        self.frameless_due: dict[str, float] = {}   # run uid -> when to archive it without frames
        self.dropped = Counter[str]()
        self.frames_written = 0
        self._last_flush = time.monotonic()
        self._last_status = 0.0
        self._rate = (time.monotonic(), 0)
        self._resumed_seq: int | None = None
        self.stopped = False
        self.disk = DiskGuard(self.directory, disk_reserve_bytes)
        self._unchecked_bytes = disk_reserve_bytes      # stream bytes received since free space was last checked
        self._reported: str | None = None

    def _socket(self, kind: int, endpoint: str | None, bind: bool) -> zmq.Socket | None:
        if endpoint is None:
            return None
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind == zmq.PUB:
            sock.setsockopt(zmq.SNDHWM, 10)
        (sock.bind if bind else sock.connect)(endpoint)
        if kind == zmq.PULL:
            self.poller.register(sock, zmq.POLLIN)
        return sock

    # -- frame stream -------------------------------------------------------------------
    def _check_chunk(self, msg: P.Message) -> None:
        """A frame's chunk must fill its bitshuffle/LZ4 blocks exactly (sizes walked, nothing
        decoded): a chunk-only frame failing that is rejected (`chunk`); a frame that came with
        its raw pixels too keeps them and is compressed here instead (`dropped["bad_chunk"]`)."""
        if msg.chunk is None:
            return
        h = msg.header
        dtype = P.FRAME_DTYPES[h["dtype"]]
        code = bslz4_layout(np.frombuffer(msg.chunk, np.uint8), h["shape"][0] * h["shape"][1] * dtype.itemsize,
                            dtype.itemsize)
        if code == 0:
            return
        if msg.array is None:
            raise P.RejectedMessage("chunk", f"chunk-only frame seq {h['seq']}: its bitshuffle/LZ4 blocks do not "
                                             f"fill its {msg.chunk.nbytes} bytes (layout code {code})")
        msg.chunk = None
        self.dropped["bad_chunk"] += 1

    def _on_frame_message(self, msg: P.Message) -> None:
        h = msg.header
        if msg.kind == "start":
            self._on_start(h, msg.array)
            return
        if self.run_dir is None or self.run_dir.uid != h["run"]:
            self._adopt(h["run"])       # the tracker accepted it: a run this archiver was writing before a restart
        if msg.kind == "frame":
            self._on_frame(h, msg.array, msg.chunk)
        elif msg.kind == "map_start":
            if self._held_map(h["map"]):
                return                  # re-sent: already open, or already complete on disk
            self._open_map(h)
        elif msg.kind == "map_end":
            self._on_map_end(h)
        elif msg.kind == "stop":
            self._close_map(complete=False)
            if self.run_dir is not None and self.run_dir.uid == h["run"]:
                self.run_dir.stop = h
                self._close_run(aborted=False)

    def _held_map(self, number: int) -> bool:
        """True if map `number` is the open one or already complete on disk (a re-send)."""
        if self.map_writer is not None and self.map_writer.number == number:
            return True
        rec = self.run_dir.maps.get(number) if self.run_dir is not None else None
        return rec is not None and rec.complete

    def _on_start(self, h: dict[str, Any], mask: Any) -> None:
        if self.run_dir is not None and self.run_dir.uid == h["run"]:
            return                      # re-sent start of the run being written
        self._close_run(aborted=True)
        if RunArchive(self.directory, h["run"]).exists():
            self._resume(h["run"], h, mask)     # re-sent to a restarted archiver: continue, never truncate
        else:
            self._start_run(h, mask)

    def _on_frame(self, h: dict[str, Any], frame: Any, chunk: Any = None) -> None:
        number = h["map"]
        if self.map_writer is None or self.map_writer.number != number:
            rec = self.run_dir.maps.get(number) if self.run_dir is not None else None
            if rec is not None and rec.complete:
                self.frames.counters.resent += 1    # re-sent frame of a map already complete on disk
                return
            self._open_map({"map": number, "map_shape": self.run_dir.start["map_shape"] if self.run_dir else [1, 1],
                            "n_frames": 0})
        writer = self.map_writer
        if writer is None:
            return
        if h["seq"] <= writer.last_seq:
            self.frames.counters.resent += 1        # held already (copied from the crashed file, or re-sent)
            return
        if self._resumed_seq is not None:
            self._count_restart_gap(h["seq"])
        if chunk is not None and writer.takes_chunks:
            writer.add_chunk(h, chunk)           # the detector's compression, stored as it arrived
        elif frame is None:                      # chunk only, for a dataset of another codec: decode, checked
            frame = np.empty(h["shape"], dtype=P.FRAME_DTYPES[h["dtype"]])
            if decode_bslz4(np.frombuffer(chunk, np.uint8), frame.reshape(-1).view(np.uint8), frame.itemsize) != 0:
                self.dropped["corrupt_chunk"] += 1
                log.error("chunk-only frame seq %d of map %d is corrupt: not archived", h["seq"], number)
                return
            writer.add(h, frame, copy=False)
        else:
            writer.add(h, frame, copy=False)     # the received buffer stays as it is while the view lives
        self.frames_written += 1

    def _on_map_end(self, h: dict[str, Any]) -> None:
        number = h["map"]
        if self.map_writer is None or self.map_writer.number != number:
            if self._held_map(number) or self.run_dir is None:
                return                  # re-sent end of a map already complete on disk
            # its frames are on disk but its end was not: reopen (copying what it holds) to close it
            self._open_map({"map": number, "map_shape": self.run_dir.start.get("map_shape", [1, 1]), "n_frames": 0})
        self._close_map(complete=True, n_sent=h["n_frames"], last_seq=h["last_seq"])

    def _start_run(self, start: dict[str, Any], mask: Any) -> None:
        path = self.directory / start["run"]
        path.mkdir(parents=True, exist_ok=True)
        run = self.runs.setdefault(start["run"], RunDirectory(path, start["run"]))
        run.start = start
        self.run_dir = run
        self.mask = None if mask is None else mask.copy()
        # NXlog time counts from the bluesky run start when its document came first, else from the stream's.
        t0 = next((float(d["time"]) for uid, name, d in self.early_docs
                   if uid == run.uid and name == "start" and isinstance(d.get("time"), (int, float))), float(start["t"]))
        sidecar = self.sidecars.get(run.uid)
        if sidecar is not None:            # the same uid again within the grace time: keep its log open
            sidecar.deadline = None
        else:                              # never truncate a log already on disk: set it aside, copy it
            log_path = path / POTENTIOSTAT
            old = set_aside(log_path) if log_path.exists() else None
            sidecar = self.sidecars[run.uid] = _Sidecar(PotentiostatLog(log_path, t0=t0),
                                                        open(path / DOCUMENTS, "a", encoding="utf-8"))
            for reading in read_readings(old, t0) if old is not None else ():
                sidecar.potentiostat.add(reading)
        run.has_potentiostat = True
        early, self.early_readings = self.early_readings, deque(maxlen=100_000)
        for reading in early:
            self._on_reading(reading)
        docs, self.early_docs = self.early_docs, deque(maxlen=100_000)
        for uid, name, doc in docs:
            if uid == run.uid:
                self._write_doc(run, name, doc)
            else:
                self.dropped["document_outside_run"] += 1
        run.write_master()
        log.info("archiving run %s in %s", start["run"], path)
        held, self.early_maps = self.early_maps, deque()
        for t, parts in held:
            if _maps_run(parts) == run.uid:
                self._on_maps(parts)
            else:
                self.early_maps.append((t, parts))

    def _archive_without_frames(self, uid: str) -> None:
        """A run that ended before its first map (aborted while waiting for a trigger): its
        documents and potentiostat readings are acquired data too, archived in a run directory
        with no map (run.h5 state done, the stop document's exit status)."""
        docs = [(name, doc) for u, name, doc in self.early_docs if u == uid]
        self.early_docs = deque(((u, n, d) for u, n, d in self.early_docs if u != uid), maxlen=100_000)
        start_doc = next((d for name, d in docs if name == "start"), {})
        stop_doc = next((d for name, d in docs if name == "stop"), {})
        t0, t1 = start_doc.get("time"), stop_doc.get("time")
        window = (float(t0) if isinstance(t0, (int, float)) else -np.inf, float(t1) if isinstance(t1, (int, float)) else np.inf)

        def mine(reading: dict[str, Any]) -> bool:     # named for this run, or unnamed within its time
            return reading.get("run") == uid or (reading.get("run") is None and window[0] <= reading["t"] <= window[1])
        readings = [r for r in self.early_readings if mine(r)]
        self.early_readings = deque((r for r in self.early_readings if not mine(r)), maxlen=100_000)
        path = self.directory / uid
        path.mkdir(parents=True, exist_ok=True)
        run = self.runs[uid] = RunDirectory(path, uid)
        run.stop = {"v": P.VERSION, "kind": "stop", "run": uid, "exit_status": str(stop_doc.get("exit_status", "")),
                    "reason": str(stop_doc.get("reason", "")), "n_frames": 0, "n_maps": 0}
        log_path = path / POTENTIOSTAT
        old = set_aside(log_path) if log_path.exists() else None
        t_log = window[0] if np.isfinite(window[0]) else time.time()
        sidecar = self.sidecars[uid] = _Sidecar(PotentiostatLog(log_path, t0=t_log), open(path / DOCUMENTS, "a", encoding="utf-8"))
        for reading in [*(read_readings(old, t_log) if old is not None else ()), *readings]:
            sidecar.potentiostat.add(reading)
        run.has_potentiostat = True
        for name, doc in docs:
            self._write_doc(run, name, doc)        # the stop document closes the side files
        self._close_sidecar(uid)
        run.write_master()
        log.warning("run %s ended before its first map (%s): archived its %d document(s) and %d reading(s), no frames",
                    uid, run.stop["exit_status"] or "no exit status", len(docs), len(readings))

    def _open_map(self, map_header: dict[str, Any]) -> None:
        self._close_map(complete=False)
        run = self.run_dir
        if run is None:
            return
        number = int(map_header["map"])
        path = run.path / map_file_name(number)
        old = None
        if path.exists():                 # written before a crash: move aside, copy what it holds
            old = set_aside(path)
            map_header = map_start_of(old)
        self.map_writer = MapFileWriter(path, run.start, map_header, getattr(self, "mask", None),
                                        compressor=self.compressor)
        if old is not None:
            last = -1
            for header, frame in read_map_frames(old, skip_bad=True):   # a corrupt chunk: that frame is lost
                self.map_writer.add(header, frame)
                last = header["seq"]
            self.map_writer.flush()
            self._resumed_seq = last if last >= 0 else None   # an empty file: no seq to count a gap from
            log.warning("run %s map %d: resumed after a restart with %d frames from %s", run.uid, number,
                        self.map_writer.n_written, old.name)
        run.record(number)
        run.write_master()

    def _adopt(self, uid: str) -> None:
        """Continue archiving a run begun before this archiver (re)started."""
        info = self.frames.tracker.current
        if info is None or info.uid != uid:
            return
        self._close_run(aborted=True)
        self._resume(uid, info.start, info.mask)

    def _resume(self, uid: str, start: dict[str, Any], mask: Any) -> None:
        """Pick up an archived run: rebuild its bookkeeping, move its killed NXlog aside and copy it."""
        path = self.directory / uid
        run = self.runs[uid] = rebuild(path, uid, start)
        self.run_dir, self.mask = run, None if mask is None else mask.copy()
        log_path = path / POTENTIOSTAT
        old_sidecar = self.sidecars.pop(uid, None)
        if old_sidecar is not None:      # still open in this process: flush it before copying
            old_sidecar.potentiostat.close()
            old_sidecar.documents.close()
        old = set_aside(log_path) if log_path.exists() else None
        sidecar = self.sidecars[uid] = _Sidecar(PotentiostatLog(log_path, t0=float(start["t"])),
                                                open(path / DOCUMENTS, "a", encoding="utf-8"))
        if old is not None:
            for reading in read_readings(old, float(start["t"])):
                sidecar.potentiostat.add(reading)
        run.has_potentiostat = True
        run.write_master()
        log.warning("run %s: archiver restarted mid-run; continuing in %s", uid, path)

    def _count_restart_gap(self, seq: int) -> None:
        """Frames sent between the crashed archiver's last flush and the restart are lost (unless
        re-sent: then they arrive and this is no gap); gaps after the first frame received are
        the stream tracker's to count."""
        info = self.frames.tracker.current
        first = info.first_seq if info is not None and info.first_seq is not None else seq
        gap = min(seq, first) - self._resumed_seq - 1
        self._resumed_seq = None
        if gap > 0:
            self.frames.counters.lost += gap
            log.error("%d frame(s) before seq %d were lost from the archive while the archiver was down", gap, seq)

    def _close_map(self, complete: bool, n_sent: int | None = None, last_seq: int | None = None) -> None:
        writer, self.map_writer = self.map_writer, None
        self._resumed_seq = None
        if writer is None or self.run_dir is None:
            return
        complete = writer.close(complete, n_sent, last_seq)
        rec = self.run_dir.record(writer.number)
        rec.frames, rec.complete = writer.n_written, complete
        if rec.has_maps:        # final maps came while frames were still arriving: their axes now
            self._add_axes(self.run_dir, writer.number)
        self.run_dir.write_master()

    def _add_axes(self, run: RunDirectory, number: int) -> None:
        """Give an archived maps file the x/y axes its map's frames now hold (it had none)."""
        path = run.path / maps_file_name(number)
        axes = self._map_axes(run, number)
        if axes is None:
            return
        try:
            with h5py.File(path, "r+") as f:
                if MAPS in f[ENTRY] and read_axes(f[ENTRY][MAPS]) is None:
                    write_axes(f[ENTRY][MAPS], *axes)
        except (OSError, KeyError, OpmonError) as exc:
            log.warning("run %s map %d: x/y axes not added to the maps: %s", run.uid, number, exc)

    def _close_run(self, aborted: bool) -> None:
        """Close the frame side of the run; readings and documents get `grace_s` more to arrive
        (they travel on another channel), or until the bluesky stop document."""
        run = self.run_dir
        if run is None:
            return
        self._close_map(complete=False)
        if aborted and run.stop is None:
            run.stop = {"exit_status": "abort", "reason": "archiver saw no stop"}
        sidecar = self.sidecars.get(run.uid)
        if sidecar is not None:
            sidecar.deadline = time.monotonic() + self.grace_s
        run.write_master()
        self.run_dir = None

    def _close_sidecar(self, uid: str) -> None:
        sidecar = self.sidecars.pop(uid, None)
        if sidecar is not None:
            sidecar.potentiostat.close()
            sidecar.documents.close()

    # -- documents, readings, maps --------------------------------------------------------
    def _on_reading(self, reading: dict[str, Any]) -> None:
        uid = reading.get("run")
        if uid is None and self.run_dir is not None:
            uid = self.run_dir.uid
        sidecar = self.sidecars.get(uid) if uid is not None else None
        if sidecar is not None:
            sidecar.potentiostat.add(reading)
        elif uid in self.runs:
            self.dropped["reading_after_run_closed"] += 1
        else:
            self.early_readings.append(reading)    # its run's start has not arrived yet

    def _on_doc(self, parts: list[bytes]) -> None:
        try:
            header = P.unpack(parts[0]) if len(parts) == 1 else None
        except Exception:
            header = None
        if not isinstance(header, dict) or header.get("v") != P.VERSION or header.get("kind") not in ("doc", "reading"):
            self.dropped["bad_document"] += 1
            return
        if header["kind"] == "reading":
            t, run = header.get("t"), header.get("run")
            # a reading kept with a bad time would make every later flush of the NXlog fail
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not (run is None or isinstance(run, str)):
                self.dropped["bad_reading"] += 1
                return
            self._on_reading(header)
            return
        name, doc = header.get("name"), header.get("doc")
        key = doc.get("run_start" if name == "stop" else "uid") if isinstance(doc, dict) else None
        if not isinstance(name, str) or not isinstance(doc, dict) or (name in ("start", "stop") and not isinstance(key, str)):
            self.dropped["bad_document"] += 1
            return
        # Documents arrive in order on their channel: a start document names the run that
        # the following documents belong to, until its stop.
        if name == "start":
            self.doc_run = doc.get("uid")
        uid = doc.get("run_start") if name == "stop" else self.doc_run
        run = self.runs.get(uid) if uid else self.run_dir
        if uid and run is None:
            self.early_docs.append((uid, name, doc))   # the frame stream's start has not arrived yet
            if name == "stop":     # ... and may never (a run stopped before its first map): wait, then archive
                self.frameless_due[uid] = time.monotonic() + self.grace_s
            return
        self._write_doc(run, name, doc)
        if name == "stop":
            self.doc_run = None

    def _write_doc(self, run: RunDirectory | None, name: str, doc: dict[str, Any]) -> None:
        sidecar = self.sidecars.get(run.uid) if run is not None else None
        if run is None or sidecar is None:
            self.dropped["document_outside_run"] += 1
            return
        sidecar.documents.write(json.dumps({"name": name, "doc": doc}, default=str) + "\n")
        if name in ("start", "stop"):
            run.documents[name] = doc
            run.write_master()
        if name == "stop" and run is not self.run_dir:
            self._close_sidecar(run.uid)        # frames already ended: nothing more will come

    def _on_maps(self, parts: list[bytes]) -> None:
        try:
            header = P.unpack(parts[1])
            run_uid, number = header["run"], int(header["map"])
        except Exception:
            self.dropped["bad_maps"] += 1
            return
        if not isinstance(run_uid, str) or not P.RUN_UID.fullmatch(run_uid) or number < 0:   # becomes a path
            self.dropped["bad_maps"] += 1
            return
        run = self.runs.get(run_uid)
        if run is None:
            path = self.directory / run_uid
            found = RunArchive(self.directory, run_uid).start(mask_wait_s=0.0) if path.is_dir() else None
            if found is None:
                # its run's start may still be on its way (re-sent after a sync, or behind frames
                # on the stream): held until that start is taken, dropped and counted if it never comes
                self.early_maps.append((time.monotonic(), parts))
                return
            # a run archived before this archiver (re)started: its bookkeeping from its files, so
            # rewriting run.h5 keeps its start, its end and the links of every other map
            run = self.runs[run_uid] = rebuild(path, run_uid, found[0])
        final = run.path / maps_file_name(number)
        tmp = run.path / f".{final.name}.tmp"
        try:
            write_final_maps(tmp, header, parts[2:], self._map_axes(run, number))
        except (OpmonError, ValueError, KeyError, TypeError) as exc:
            self.dropped["bad_maps"] += 1
            log.error("run %s map %d: final maps not archived: %s", run_uid, number, exc)
            return
        os.replace(tmp, final)
        run.record(number).has_maps = True
        run.write_master()
        log.info("run %s map %d: final maps archived", run_uid, number)

    def _map_axes(self, run: RunDirectory, number: int) -> tuple[Any, Any] | None:
        """Column and row positions (µm) of an archived map, from its frames' recorded positions;
        None while its frames are still arriving (some rows may have none yet)."""
        path = run.path / map_file_name(number)
        try:
            if self.map_writer is not None and self.map_writer.path == path:     # still being written:
                return None                                                      # added when it closes
            if path.is_file():
                with h5py.File(path, "r", swmr=True) as f:
                    meta = read_raw_meta(f[ENTRY])
            else:
                return None
        except (OSError, OpmonError, KeyError, ValueError) as exc:
            log.warning("run %s map %d: maps archived without x/y positions: %s", run.uid, number, exc)
            return None
        return grid_axes(meta.x_um, meta.y_um, meta.map_index, meta.map_shape)

    # -- loop -------------------------------------------------------------------------------
    def flush(self) -> None:
        """Make everything received so far durable; close side files whose grace time is over."""
        if self.map_writer is not None:
            self.map_writer.flush()
        now = time.monotonic()
        for uid, sidecar in list(self.sidecars.items()):
            sidecar.potentiostat.flush()
            sidecar.documents.flush()
            if sidecar.deadline is not None and now > sidecar.deadline:
                self._close_sidecar(uid)
        for uid, due in list(self.frameless_due.items()):
            if uid in self.runs:               # its frame stream started after all
                del self.frameless_due[uid]
            elif now > due:
                del self.frameless_due[uid]
                self._archive_without_frames(uid)
        self._last_flush = now
        if self.acks is not None:
            self.acks.flushed()

    def status(self) -> dict[str, Any]:
        """The lossy status message of docs/protocol.md."""
        now = time.monotonic()
        t0, n0 = self._rate
        rate = (self.frames_written - n0) / (now - t0) if now > t0 else 0.0
        self._rate = (now, self.frames_written)
        c = self.frames.counters
        run = self.run_dir
        return {"v": P.VERSION, "kind": "status", "source": "archiver", "t": time.time(),
                "run": run.uid if run else None, "state": "running" if run else "idle", "frames": self.frames_written,
                "frames_per_s": rate, "frames_lost": c.lost, "rejected": dict(c.rejected),
                "map": self.map_writer.number if self.map_writer else None,
                "maps_done": sum(r.complete for r in run.maps.values()) if run else 0,
                "archive": str(run.master) if run else None, "dropped": dict(self.dropped), "resent": c.resent,
                **({"state": "disk_full", "error": self.disk.report} if self.disk.report else {})}

    # -- disk full ------------------------------------------------------------------------
    def _write_path(self) -> Path:
        """Where the archiver is writing: the run directory, else the archive root."""
        return self.run_dir.path if self.run_dir is not None else self.directory

    def _on_disk_full(self, exc: OSError) -> None:
        """A write failed for lack of space: stop taking frames and maps (they wait, queued, with
        their senders), keep what is written, say so at once in the status, retry every few s.

        Frames of a block that failed to write stay in the map writer's memory and go to disk
        with the first flush that succeeds (block writes are idempotent until then).
        """
        log.debug("write failed: %s", exc)      # HDF5's message is long; the status gets one line
        self.disk.enter(self._write_path(), "no space left on device")

    def _on_stream_parts(self, parts: list[Any]) -> None:
        """One message of the frame stream: a `sync` for the acknowledgements, or data."""
        resent = False
        if self.acks is not None:
            sync = P.parse_sync(parts)
            if sync is not None:
                if self.acks.on_sync(sync):
                    early = self.presync.synced()
                    log.info("sender synced (epoch %d): %d message(s) re-sent%s", sync["epoch"], sync["resend"],
                             f" ({early} taken before the sync dropped: among them)" if early else "")
                else:
                    self.dropped["sync_for_another_archiver"] += 1
                return
            if self.acks.epoch is None and self.presync.hold(parts):
                self._release_presync()
                return
            resent = self.acks.note()
        self._take(parts, resent)

    def _take(self, parts: list[Any], resent: bool = False) -> None:
        msg = self.frames.handle(parts, resent)
        if msg is not None:
            self._on_frame_message(msg)

    def _release_presync(self) -> None:
        """No sync came in time (a sender without acknowledgements): take what was held, in order."""
        held = self.presync.release_due()
        if held:
            log.info("no sender sync within %.1f s: %d held message(s) taken in order", self.presync.hold_s, len(held))
        for parts in held:
            self._take(parts)

    def poll_once(self, timeout_ms: int = 100) -> None:
        """Handle whatever arrives within `timeout_ms`, flushing on time even under load; a full
        disk pauses the intake instead of ending the archiver (`_on_disk_full`)."""
        try:
            self._poll(timeout_ms)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._on_disk_full(exc)
        if self.status_socket is not None and self.disk.report != self._reported:   # at once, not within 1 s
            self._reported = self.disk.report
            self._last_status = time.monotonic()
            self.status_socket.send_multipart([b"status", P.pack(self.status())])

    def _poll(self, timeout_ms: int) -> None:
        events = dict(self.poller.poll(min(timeout_ms, int(self.flush_interval_s * 1000))))
        if self.disk.full and self.disk.due():
            self.flush()                # raises again while there is still no room
            self.disk.clear()
        if self.frames.socket in events and not self.disk.full:
            deadline = self._last_flush + self.flush_interval_s    # never hold frames unflushed longer
            while time.monotonic() < deadline:
                # HDF5 reports a full disk late (from its chunk cache), after frames were taken:
                # stop while the reserve is left instead. One statvfs per 1/16 of the reserve
                # received (it was one per frame: ~5 % of this loop at 2 kHz), so at most that
                # much of the reserve is used before the check sees it.
                if self._unchecked_bytes >= self.disk.reserve_bytes // 16 or self.disk.low:
                    self._unchecked_bytes = 0
                    if not self.disk.check_space(self._write_path()):
                        break
                try:
                    parts = self.frames.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._unchecked_bytes += sum(len(part) for part in parts)
                self._on_stream_parts(parts)
        for sock, handler in ((self.docs, self._on_doc), (self.maps, self._on_maps)):
            # final maps wait while the disk is full, and while stream messages are held before the
            # first sync (a map's final maps must not arrive before its run's start is taken)
            if sock is not None and sock in events and not (sock is self.maps and (self.disk.full or self.presync.held)):
                for _ in range(1000):
                    try:
                        handler(sock.recv_multipart(zmq.NOBLOCK))
                    except zmq.Again:
                        break
        now = time.monotonic()
        while self.early_maps and (now - self.early_maps[0][0] > EARLY_MAPS_S or len(self.early_maps) > EARLY_MAPS_MAX):
            self.early_maps.popleft()
            self.dropped["maps_of_unknown_run"] += 1
        if now - self._last_flush >= self.flush_interval_s:
            self.disk.check_space(self._write_path())   # below the reserve: take no more frames
            self.flush()
        if self.acks is not None:
            self._release_presync()
            self.acks.tick()
        if self.status_socket is not None and now - self._last_status >= 1.0:
            self._last_status = now
            self.status_socket.send_multipart([b"status", P.pack(self.status())])

    def run(self, stop_when: Callable[[], bool] | None = None) -> None:
        """Serve until `stop_when()` is true (or forever), then close cleanly."""
        try:
            while not (stop_when and stop_when()) and not self.stopped:
                self.poll_once()
        finally:
            self.close()

    def close(self) -> None:
        """Flush and close every file and socket; an unfinished run stays marked running.

        The sockets close even when a last write fails (a full disk): what was flushed stays."""
        try:
            self._close_map(complete=False)
            for uid in list(self.sidecars):
                self._close_sidecar(uid)
            if self.run_dir is not None:
                self.run_dir.write_master()
            if self.acks is not None:
                self.acks.flushed()          # what close() just flushed is durable
        finally:
            if self.acks is not None:
                self.acks.close()
            for sock in (self.docs, self.maps, self.status_socket):
                if sock is not None:
                    sock.close(linger=0)
            self.frames.close()
            self.compressor.close()
