"""A detector `FrameSink` that writes one FORMATS.md raw file per map, as a detector's file writer does.

Acquisition defines the `FrameSink` interface and the stream sinks; a sink that writes files
lives here, with the layouts it writes (`layout`, `raw.RawMapWriter`), so acquisition needs
nothing downstream. Tee it with a `PublisherSink` to keep frames on disk and stream them.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

from opmon.acquisition.sinks import MapMeta, SinkTarget
from opmon.errors import ConfigError
from opmon.streaming.archive.layout import ATTR_MAP_NUMBER, ATTR_RUN_UID, DATA, ENTRY, sink_file_name
from opmon.streaming.archive.raw import RawMapWriter


class Hdf5MapSink:
    """One raw SXDM file per map (FORMATS.md layout, `/entry`), flushed at least every 0.5 s.

    Files are named ``{run_uid}_map{NNNN}.h5`` in `directory` and opened in SWMR mode, so a
    reader can follow a map while it is written.
    """

    mimetype = "application/x-hdf5"

    def __init__(self, directory: str | Path, flush_period_s: float = 0.5) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise ConfigError(f"frame directory {self.directory} exists and is not a directory")
        self.flush_period_s = flush_period_s
        self._file: h5py.File | None = None
        self._writer: RawMapWriter | None = None
        self._last_flush = 0.0
        self.path: Path | None = None

    def open(self, run_uid: str, map_id: int, meta: MapMeta) -> SinkTarget:
        self.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / sink_file_name(run_uid, map_id)
        self._file = h5py.File(self.path, "w", libver="latest")
        entry = self._file.create_group(ENTRY)
        self._writer = RawMapWriter(entry, frame_shape=meta.frame_shape, dtype=meta.dtype, energy_ev=meta.energy_ev,
                                    distance_m=meta.distance_m, pixel_size_m=meta.pixel_size_m,
                                    beam_center=meta.beam_center, map_shape=meta.map_shape,
                                    detector_mask=meta.detector_mask, expected_frames=meta.expected_frames)
        entry.attrs[ATTR_RUN_UID] = run_uid
        entry.attrs[ATTR_MAP_NUMBER] = int(map_id)
        self._file.swmr_mode = True
        self._last_flush = time.monotonic()
        return SinkTarget(uri=self.path.resolve().as_uri(), mimetype=self.mimetype,
                          parameters={"dataset": f"/{ENTRY}/{DATA}", "chunk_shape": [1, *meta.frame_shape],
                                      "map_number": int(map_id), **meta.geometry()})

    def write(self, frame: npt.NDArray[Any], header: dict[str, Any]) -> int:
        if self._writer is None or self._file is None:
            raise ConfigError("Hdf5MapSink.write: no map is open (call open first)")
        index = self._writer.n
        self._writer.append(frame, header["map_index"], header["eta"], header["phi"], header["nu"], header["delta"],
                            header.get("x", np.nan), header.get("y", np.nan))
        now = time.monotonic()
        if now - self._last_flush >= self.flush_period_s:
            self._file.flush()
            self._last_flush = now
        return index

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            self._file.close()
        self._file, self._writer = None, None
