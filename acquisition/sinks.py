"""Where detector frames go: a pluggable `FrameSink` behind the detector's data logic.

The detector never knows whether frames land in an HDF5 file, a ZeroMQ stream or both: it
opens the sink once per map, writes each frame with a self-describing header, and turns the
`SinkTarget` the sink returns into a StreamResource (uri + dataset) with StreamDatum index
ranges. Sinks that write files live with the archive (`opmon.streaming.archive.map_sink`), which
knows the file layouts; acquisition defines only the interface and the stream sinks.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class MapMeta:
    """Static facts of one map: enough for a downstream processor to build its geometry.

    Lengths in m, energy in eV, beam centre in full-detector pixels (row, column) at
    nu = delta = 0, pixel size (row, column).
    """

    run_uid: str
    map_number: int
    map_shape: tuple[int, int]
    frame_shape: tuple[int, int]
    dtype: str
    energy_ev: float
    distance_m: float
    pixel_size_m: tuple[float, float]
    beam_center: tuple[float, float]
    expected_frames: int = 0
    detector_mask: npt.NDArray[np.uint8] | None = None
    trigger: str = ""  # why the map was taken, e.g. "voltage threshold 4.7000 V reached at 4.7003 V"

    def geometry(self) -> dict[str, Any]:
        """JSON-ready geometry for start documents, StreamResource parameters and stream headers."""
        return {"energy_ev": self.energy_ev, "distance_m": self.distance_m,
                "pixel_size_m": list(self.pixel_size_m), "beam_center": list(self.beam_center),
                "map_shape": list(self.map_shape), "frame_shape": list(self.frame_shape), "dtype": self.dtype}


@dataclass(frozen=True)
class SinkTarget:
    """What a StreamResource should point at: uri, mimetype and dataset parameters."""

    uri: str
    mimetype: str
    parameters: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class FrameSink(Protocol):
    """Destination of frames: one `open` per map, `write` per frame, `close` at map end."""

    def open(self, run_uid: str, map_id: int, meta: MapMeta) -> SinkTarget:
        """Start a map; return where its frames can be found."""
        ...

    def write(self, frame: npt.NDArray[Any], header: dict[str, Any]) -> int:
        """Store one frame; return its index inside the map's target (0, 1, ...)."""
        ...

    def close(self) -> None:
        """Finish the current map (flush, release files). Safe to call when nothing is open."""
        ...


class TeeSink:
    """Send every frame to several sinks; the first one's target goes into the documents."""

    def __init__(self, primary: FrameSink, *others: FrameSink) -> None:
        self.sinks = (primary, *others)

    def open(self, run_uid: str, map_id: int, meta: MapMeta) -> SinkTarget:
        targets = [s.open(run_uid, map_id, meta) for s in self.sinks]
        return targets[0]

    def write(self, frame: npt.NDArray[Any], header: dict[str, Any]) -> int:
        indices = [s.write(frame, header) for s in self.sinks]
        return indices[0]

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class PublisherSink:
    """`FrameSink` over a run/map/frame publisher such as `opmon.streaming.ZmqFrameSink`.

    The publisher needs start_run/start_map/send_frame/end_map/stop_run (duck-typed, so
    acquisition does not import streaming). Subscribe the sink to the RunEngine
    (``RE.subscribe(sink)``) so the stream's run ends with the run's real exit status.
    `compress` (frame -> bitshuffle/LZ4 chunk) makes it a detector that compresses at the
    source: each frame goes out with its chunk (`send_frame(..., chunk=...)`).
    """

    mimetype = "application/x-opmon-frame-stream"

    def __init__(self, publisher: Any, uri: str = "", metadata: dict[str, Any] | None = None,
                 compress: Callable[[npt.NDArray[Any]], bytes] | None = None) -> None:
        self.publisher = publisher
        self.compress = compress
        self.metadata = metadata      # the run's start metadata (e.g. the plan's exposure and flux for the dose map)
        endpoints = getattr(publisher, "endpoints", None) or [""]
        self.uri = uri or str(endpoints[0])
        self.run: str | None = None
        self._index = 0

    def open(self, run_uid: str, map_id: int, meta: MapMeta) -> SinkTarget:
        if self.run != run_uid:
            self.publisher.start_run(run=run_uid, energy_ev=meta.energy_ev, distance_m=meta.distance_m,
                                     pixel_size_m=meta.pixel_size_m, beam_center=meta.beam_center,
                                     frame_shape=meta.frame_shape, dtype=meta.dtype, map_shape=meta.map_shape,
                                     mask=meta.detector_mask, metadata=self.metadata)
            self.run = run_uid
        self.publisher.start_map(meta.expected_frames, map_number=map_id, map_shape=meta.map_shape,
                                 trigger={"reason": meta.trigger} if meta.trigger else None)
        self._index = 0
        return SinkTarget(uri=self.uri, mimetype=self.mimetype, parameters={"map_number": int(map_id), **meta.geometry()})

    def write(self, frame: npt.NDArray[Any], header: dict[str, Any]) -> int:
        chunk = None if self.compress is None else self.compress(frame)
        self.publisher.send_frame(frame, index=int(header["map_index"]), eta=header["eta"], phi=header["phi"],
                                  nu=header["nu"], delta=header["delta"], x=header.get("x"), y=header.get("y"),
                                  chunk=chunk)
        index, self._index = self._index, self._index + 1
        return index

    def close(self) -> None:
        if self.run is not None:
            self.publisher.end_map()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        """RunEngine document callback: end the stream's run with the run's exit status."""
        if name == "stop" and self.run is not None and doc.get("run_start") == self.run:
            self.publisher.stop_run(doc.get("exit_status", "success"), reason=doc.get("reason", ""))
            self.run = None
