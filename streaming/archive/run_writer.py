"""The files of a run archive (docs/protocol.md, "Archive layout"), each safe against kill -9.

HDF5 cannot create datasets or links in a file open for SWMR writing, and the number of maps
is unknown when a run starts. So every map gets its own raw file (FORMATS.md layout via
`RawMapWriter`, all datasets created before SWMR starts), the potentiostat its own NXlog
file, and a small master file `run.h5` ties them together with external links. The master is
only ever replaced whole (write a temporary file, rename), so it is never half-written.
"""
from __future__ import annotations

import json
import os
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.errors import ArchiveError
from opmon.streaming.archive.chunks import ChunkCompressor
from opmon.streaming.archive.chunks import done as chunk_done
from opmon.streaming.archive.layout import (ATTR_COMPLETE, ATTR_DOCUMENT, ATTR_FRAMES, ATTR_FRAMES_EXPECTED,
                                           ATTR_MAP_NUMBER, ATTR_RUN_UID, ATTR_START, ATTR_STATE, ATTR_STOP, ATTR_TRIGGER,
                                           COMPLETE, ENTRY, ENTRY_GROUPS, LAST_SEQ_SENT, LOG_TIME, MAPS, MASTER, MASTER_ENTRY,
                                           N_FRAMES_SENT, POTENTIOSTAT, POTENTIOSTAT_GROUP, POTENTIOSTAT_LINK, POTENTIOSTAT_PLOT, READING_COLUMNS, SEQUENCE,
                                           STATE_DONE, STATE_RUNNING, TIMESTAMP, map_file_name, maps_file_name)
from opmon.streaming.archive.raw import RawMapWriter


def _json(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


class MapFileWriter:
    """One map's raw frames, written in SWMR mode in blocks; `flush` makes them durable.

    Each frame is handed to a `ChunkCompressor` (threads) as it arrives and written, in
    arrival order, as a finished bitshuffle/LZ4 chunk a block at a time (h5py's per-call cost
    would otherwise dominate: nine metadata columns are resized and written per block); up to
    two blocks are in flight, so the threads compress one block while the next arrives. `flush` waits for every frame received and writes it, so
    after a flush the file holds every frame received so far.
    """

    def __init__(self, path: Path, start: dict[str, Any], map_header: dict[str, Any],
                 mask: npt.NDArray[np.uint8] | None = None, block: int = 64,
                 compressor: ChunkCompressor | None = None) -> None:
        self.path = path
        self.number = int(map_header["map"])
        self.file = h5py.File(path, "w", libver="latest")
        entry = self.file.create_group(ENTRY)
        rows, cols = start["frame_shape"]
        expected = int(map_header.get("n_frames") or 0)
        self.writer = RawMapWriter(entry, frame_shape=(rows, cols), dtype=start["dtype"], energy_ev=start["energy_ev"],
                                   distance_m=start["distance_m"], pixel_size_m=tuple(start["pixel_size_m"]),
                                   beam_center=tuple(start["beam_center"]), map_shape=tuple(map_header["map_shape"]),
                                   detector_mask=mask, expected_frames=expected)
        self.sequence = entry.create_dataset(SEQUENCE, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.int64)
        self.timestamp = entry.create_dataset(TIMESTAMP, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float64)
        self.timestamp.attrs["units"] = "s"
        self.complete = entry.create_dataset(COMPLETE, data=np.uint8(0))
        # what the map's `map_end` said was sent (-1 until it arrives): which seqs belong here
        self.n_frames_sent = entry.create_dataset(N_FRAMES_SENT, data=np.int64(-1))
        self.last_seq_sent = entry.create_dataset(LAST_SEQ_SENT, data=np.int64(-1))
        entry.attrs[ATTR_RUN_UID] = start["run"]
        entry.attrs[ATTR_MAP_NUMBER] = self.number
        entry.attrs[ATTR_FRAMES_EXPECTED] = expected
        entry.attrs[ATTR_TRIGGER] = _json(map_header.get("trigger") or {})
        self.file.swmr_mode = True
        self.expected = expected
        self.block = block
        self.frame_shape, self.dtype = (int(rows), int(cols)), np.dtype(start["dtype"])
        self._own_compressor = compressor is None
        self.compressor = compressor or ChunkCompressor()
        # frames received, not yet written: (index, eta, phi, nu, delta, x, y, seq, t) and its chunk
        self._pending: deque[tuple[tuple[int, float, float, float, float, float, float, int, float], Future[bytes]]] = deque()
        self.n_received = 0
        self.last_seq = -1     # highest seq held: a re-sent frame at or below it is already here

    def add(self, header: dict[str, Any], frame: npt.NDArray[Any], copy: bool = True) -> None:
        """Queue one frame for compression.

        `copy=False` hands over a frame nobody changes any more (a received ZeroMQ buffer,
        which the array view keeps alive); by default it is copied, as a reader's reused
        block buffer would change under the compressing thread."""
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape or frame.dtype != self.dtype:
            raise ArchiveError(f"{self.path.name}: frame {frame.shape} {frame.dtype}, the map holds "
                               f"{self.frame_shape} {self.dtype}")
        frame = np.array(frame) if copy or not frame.flags.c_contiguous else frame
        self._queue(header, self.compressor.submit(frame))

    def add_chunk(self, header: dict[str, Any], chunk: bytes | memoryview) -> None:
        """Queue one frame already compressed in the dataset's bitshuffle/LZ4 chunk format
        (a detector's own compression); it keeps its place among the frames around it.

        Not copied: a received ZeroMQ buffer's memoryview keeps that buffer alive and unchanged."""
        self._queue(header, chunk_done(chunk))

    @property
    def takes_chunks(self) -> bool:
        """Whether a detector's bitshuffle/LZ4 chunk can be stored as it arrived (`add_chunk`)."""
        return self.writer.takes_chunks

    def _queue(self, header: dict[str, Any], chunk: Future[bytes]) -> None:
        x, y = header.get("x"), header.get("y")
        self._pending.append(((header["index"], header["eta"], header["phi"], header["nu"], header["delta"],
                               np.nan if x is None else x, np.nan if y is None else y, header["seq"], header["t"]), chunk))
        self.n_received += 1
        self.last_seq = max(self.last_seq, int(header["seq"]))
        if len(self._pending) >= 2 * self.block:
            self._write(self.block)

    def _write(self, k: int | None = None) -> None:
        """Write the first `k` queued frames (all by default) once compressed, in order.

        They leave the queue only when written, so after a failed write (a full disk) the
        next call writes the same frames to the same places again."""
        k = len(self._pending) if k is None else min(k, len(self._pending))
        if not k:
            return
        items = [self._pending[i] for i in range(k)]
        chunks = [future.result() for _, future in items]
        cols = list(zip(*(meta for meta, _ in items)))
        n = self.writer.n
        for ds, values in ((self.sequence, cols[7]), (self.timestamp, cols[8])):
            ds.resize((n + k,))
            ds[n:n + k] = values
        self.writer.append_chunks(chunks, cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6])
        for _ in range(k):
            self._pending.popleft()

    @property
    def n_written(self) -> int:
        return self.writer.n

    def flush(self) -> None:
        """Write queued frames and make everything so far durable for SWMR readers."""
        self._write()
        self.file.flush()

    def close(self, complete: bool, n_sent: int | None = None, last_seq: int | None = None) -> bool:
        """Flush, mark the map complete (ended, and all expected frames here) or not, close.

        `n_sent` is the frame count of the map's `map_end`: complete means every one of them is
        in this file. Returns whether the map was marked complete (an aborted map ends short).
        """
        if self.file.id.valid:
            self.flush()
            complete = (complete and (self.expected == 0 or self.n_written == self.expected)
                        and (n_sent is None or self.n_written == n_sent))
            self.complete[()] = np.uint8(1 if complete else 0)
            if n_sent is not None and last_seq is not None:
                self.n_frames_sent[()] = np.int64(n_sent)
                self.last_seq_sent[()] = np.int64(last_seq)
            self.file.flush()
            self.file.close()
        if self._own_compressor:
            self.compressor.close()
        return complete


class PotentiostatLog:
    """The run's potentiostat readings as an NXlog (`/entry/potentiostat`), SWMR, appended in batches;
    `/entry/voltage` plots them (the file's NeXus default plot)."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path = path
        self.t0 = t0
        self.file = h5py.File(path, "w", libver="latest")
        self.file.attrs["default"] = ENTRY
        entry = self.file.create_group(ENTRY)
        entry.attrs["NX_class"] = "NXentry"
        entry.attrs["default"] = POTENTIOSTAT_PLOT
        group = self.file.create_group(POTENTIOSTAT_GROUP)
        group.attrs["NX_class"] = "NXlog"
        grow = dict(shape=(0,), maxshape=(None,), chunks=(4096,), dtype=np.float64)
        self.time = group.create_dataset(LOG_TIME, **grow)
        self.time.attrs["units"] = "s"
        self.time.attrs["start"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0)) + f".{int(t0 % 1 * 1e6):06d}Z"
        self.columns = {}
        for name, _key, units in READING_COLUMNS:
            ds = group.create_dataset(name, **grow)
            if units:
                ds.attrs["units"] = units
            self.columns[name] = ds
        self.columns["value"].attrs["long_name"] = "cell voltage"
        plot = entry.create_group(POTENTIOSTAT_PLOT)    # the same datasets (hard links), plotted by default
        plot.attrs.update({"NX_class": "NXdata", "signal": "value", "axes": LOG_TIME})
        plot["value"], plot[LOG_TIME] = self.columns["value"], self.time
        self.file.swmr_mode = True
        self._pending: list[dict[str, Any]] = []
        self.n = 0

    def add(self, reading: dict[str, Any]) -> None:
        self._pending.append(reading)

    def flush(self) -> None:
        k = len(self._pending)
        if k:
            n = self.n
            times = np.array([float(r.get("t") or np.nan) for r in self._pending])
            self.time.resize((n + k,))
            for name, key, _units in READING_COLUMNS:
                values = np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan for r in self._pending])
                self.columns[name].resize((n + k,))
                self.columns[name][n:] = values
            self.time[n:] = times - self.t0    # time last: a reader seeing time[i] sees its values
            self.n += k
            self._pending.clear()
        self.file.flush()

    def close(self) -> None:
        if self.file.id.valid:
            self.flush()
            self.file.close()


def _link_maps(entry: h5py.Group, maps_file: Path) -> None:
    """`entry/maps` as an NXdata of this file whose datasets are virtual views of the maps file's.

    Not an external link: NeXus validators (punx) index a file by the names its objects have in
    their own file, and fail on an NXdata reached through an external link.
    """
    with h5py.File(maps_file, "r") as source_file:
        source = source_file[f"/{ENTRY}/{MAPS}"]
        group = entry.create_group(MAPS)
        group.attrs.update(dict(source.attrs))
        for name, ds in source.items():
            if not isinstance(ds, h5py.Dataset):
                continue
            layout = h5py.VirtualLayout(shape=ds.shape, dtype=ds.dtype)
            layout[...] = h5py.VirtualSource(maps_file.name, ds.name, shape=ds.shape, dtype=ds.dtype)
            group.create_virtual_dataset(name, layout, fillvalue=_fill_value(ds.dtype)).attrs.update(dict(ds.attrs))
    entry.attrs["default"] = MAPS


def _fill_value(dtype: np.dtype) -> Any:
    """What a virtual map dataset reads when its maps file is gone: NaN for floats, 0 otherwise."""
    return np.nan if np.issubdtype(dtype, np.floating) else 0


@dataclass
class MasterEntry:
    """What the master file run.h5 says about one map (its `entryN` group)."""

    number: int
    frames: int = 0
    complete: bool = False
    has_maps: bool = False


@dataclass
class RunDirectory:
    """One run's archive directory and its master file."""

    path: Path
    uid: str
    start: dict[str, Any] = field(default_factory=dict)
    stop: dict[str, Any] | None = None
    documents: dict[str, Any] = field(default_factory=dict)   # start/stop bluesky documents
    maps: dict[int, MasterEntry] = field(default_factory=dict)
    has_potentiostat: bool = False

    @property
    def master(self) -> Path:
        return self.path / MASTER

    def record(self, number: int) -> MasterEntry:
        if number not in self.maps:
            self.maps[number] = MasterEntry(number)
        return self.maps[number]

    def write_master(self) -> Path:
        """Replace run.h5 atomically: /entryN links to the map files, metadata as attributes."""
        tmp = self.path / f".{MASTER}.tmp"
        with h5py.File(tmp, "w") as f:
            f.attrs[ATTR_RUN_UID] = self.uid
            f.attrs[ATTR_START] = _json(self.start)
            f.attrs[ATTR_STOP] = _json(self.stop) if self.stop else ""
            f.attrs[ATTR_STATE] = STATE_DONE if self.stop else STATE_RUNNING
            for name, doc in self.documents.items():
                f.attrs[f"{ATTR_DOCUMENT}{name}"] = _json(doc)
            for number in sorted(self.maps):
                rec = self.maps[number]
                if not (self.path / map_file_name(number)).exists():
                    continue
                entry = f.create_group(MASTER_ENTRY.format(number=number))
                entry.attrs["NX_class"] = "NXentry"
                entry.attrs[ATTR_MAP_NUMBER] = number
                entry.attrs[ATTR_FRAMES] = rec.frames
                entry.attrs[ATTR_COMPLETE] = int(rec.complete)
                for child in ENTRY_GROUPS:
                    entry[child] = h5py.ExternalLink(map_file_name(number), f"/{ENTRY}/{child}")
                if rec.has_maps:
                    _link_maps(entry, self.path / maps_file_name(number))
                    f.attrs["default"] = entry.name.lstrip("/")      # NeXus viewers open the newest map
            if self.has_potentiostat:
                f[POTENTIOSTAT_LINK] = h5py.ExternalLink(POTENTIOSTAT, f"/{POTENTIOSTAT_GROUP}")
        os.replace(tmp, self.master)
        return self.master
