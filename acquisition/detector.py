"""The area detector as an ophyd-async `StandardDetector` whose frames go to a `FrameSink`.

Trigger, acquire and data logic follow ophyd-async 0.21 (`DetectorTriggerLogic`,
`DetectorAcquireLogic`, `DetectorDataLogic`). Each frame is written with a header naming its
run, map, sequence number, map pixel and motor positions; the documents reference frames
only (StreamResource per map + StreamDatum index ranges), never carry them. The frame
producer is a `FrameSource`, so the simulator and a real detector readout are interchangeable.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from bluesky.protocols import Reading, StreamAsset
from event_model import ComposeStreamResource, ComposeStreamResourceBundle, DataKey
from ophyd_async.core import (
    DetectorAcquireLogic,
    DetectorDataLogic,
    DetectorTriggerLogic,
    SignalR,
    StandardDetector,
    StreamableDataProvider,
    TriggerInfo,
    soft_signal_r_and_setter,
    soft_signal_rw,
)

from opmon.acquisition.sinks import FrameSink, MapMeta, SinkTarget
from opmon.acquisition.flying import TriggerCable, finish
from opmon.errors import ConfigError, FrameShapeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorCalibration:
    """Static geometry of the detector arm (m, eV, pixels (row, column))."""

    energy_ev: float
    distance_m: float
    pixel_size_m: tuple[float, float]
    beam_center: tuple[float, float]


@runtime_checkable
class FrameSource(Protocol):
    """Produces one frame for the current beam position and angles."""

    frame_shape: tuple[int, int]
    dtype: str

    def detector_mask(self) -> npt.NDArray[np.uint8] | None: ...

    def frame(self, map_index: int, positions: Mapping[str, float]) -> tuple[npt.NDArray[Any], dict[str, Any]]:
        """Return (frame, extra header fields) at these positions."""
        ...


@dataclass
class _HeldLine:
    """A fly-scan line taken by the detector and not yet handed to the sink."""

    run_uid: str
    map_number: int
    indices: list[int]
    positions: list[dict[str, float]]
    frames: list[tuple[npt.NDArray[Any], dict[str, Any]]]
    t: float


@dataclass
class _Resource:
    key: tuple[str, int]
    target: SinkTarget


class FrameLedger:
    """Where each frame of the acquisition went (resource, index in it), by global frame number,
    for the frames not yet referenced by a StreamDatum only.

    A 48-hour beamtime at 2 kHz takes ~3.5e8 frames: a list of every frame ever taken would
    grow by gigabytes; frames already emitted in the documents are forgotten.
    """

    def __init__(self) -> None:
        self._items: list[tuple[_Resource, int]] = []
        self._first = 0            # global number of self._items[0]

    def append(self, item: tuple[_Resource, int]) -> None:
        self._items.append(item)

    def __len__(self) -> int:
        """Frames taken so far (global count, forgotten ones included)."""
        return self._first + len(self._items)

    def __getitem__(self, number: int) -> tuple[_Resource, int]:
        if number < self._first:
            raise IndexError(f"frame {number} was referenced already and is forgotten (kept from {self._first})")
        return self._items[number - self._first]

    def forget_before(self, number: int) -> None:
        """Frames below `number` are in the documents: drop them (amortized, no per-call copy)."""
        drop = min(number, len(self)) - self._first
        if drop > 0 and drop >= len(self._items) // 2:
            del self._items[:drop]
            self._first += drop

    @property
    def held(self) -> int:
        """Entries held in memory now."""
        return len(self._items)


class FrameRecorder:
    """Takes frames from the source, writes them to the sink and remembers where each went."""

    def __init__(self, detector: SxdmDetector, source: FrameSource, sink: FrameSink,
                 positioners: Mapping[str, SignalR[float]], trigger_input: TriggerCable | None = None) -> None:
        self.det, self.source, self.sink, self.positioners = detector, source, sink, dict(positioners)
        self.trigger_input = trigger_input
        self.external = False      # triggered by `trigger_input` (a fly scan line) rather than by `trigger()`
        self.held: _HeldLine | None = None     # a fly-scan line taken, not yet saved by the plan
        # one thread reads out fly-scan frames in pulse order (a simulator renders them there)
        self._readout = ThreadPoolExecutor(1, thread_name_prefix="opmon-detector-readout")
        self.lines_dropped = 0     # fly-scan lines taken but never saved: nothing of them recorded
        self.frames_written, self._set_written = soft_signal_r_and_setter(int, 0)
        self.n_written = 0
        self.frames = FrameLedger()  # global frame number -> (resource, index), until referenced
        self.current: _Resource | None = None
        self.num = 1
        self.seq = 0
        self._run: str | None = None
        self._watching_map_done = False

    async def _positions(self) -> dict[str, float]:
        values = await asyncio.gather(*(sig.get_value() for sig in self.positioners.values()))
        return {k: float(v) for k, v in zip(self.positioners, values)}

    def _on_map_done(self, reading: Mapping[str, Reading]) -> None:
        """The plan saved the last frame of map `map_done`: end it in the sink now (the live
        processor makes its final map and the archiver completes it at once, not when the next
        map starts or the detector unstages, which may be an hour later)."""
        (number,) = (int(r["value"]) for r in reading.values())
        if number >= 0 and self.current is not None and self.current.key[1] == number:
            self.sink.close()
            self.current = None

    async def _ensure_map(self, run_uid: str, map_number: int) -> _Resource:
        key = (run_uid, map_number)
        if not self._watching_map_done:       # on the event loop, the signal connected
            self.det.map_done.subscribe_reading(self._on_map_done)
            self._watching_map_done = True
        if self.current is None or self.current.key != key:
            self.sink.close()
            ny, nx, trigger = await asyncio.gather(self.det.map_ny.get_value(), self.det.map_nx.get_value(),
                                                   self.det.map_trigger.get_value())
            g = self.det.geometry
            meta = MapMeta(run_uid=run_uid, map_number=map_number, map_shape=(int(ny), int(nx)),
                           frame_shape=tuple(self.source.frame_shape), dtype=str(np.dtype(self.source.dtype)),
                           energy_ev=g.energy_ev, distance_m=g.distance_m, pixel_size_m=g.pixel_size_m,
                           beam_center=g.beam_center, detector_mask=self.source.detector_mask(), trigger=str(trigger))
            self.current = _Resource(key, self.sink.open(run_uid, map_number, meta))
            if run_uid != self._run:  # sequence numbers count frames of one run
                self.seq, self._run = 0, run_uid
        return self.current

    async def take(self, num: int) -> None:
        """Take `num` frames, one after the other."""
        for _ in range(num):
            run_uid, map_number, map_index = await asyncio.gather(
                self.det.run_uid.get_value(), self.det.map_number.get_value(), self.det.map_index.get_value())
            resource = await self._ensure_map(run_uid, int(map_number))
            positions = await self._positions()
            frame, extra = self.source.frame(int(map_index), positions)
            if frame.shape != tuple(self.source.frame_shape):
                raise FrameShapeError(f"frame source gave shape {frame.shape}, expected {self.source.frame_shape}")
            header = {"run_uid": run_uid, "map_number": int(map_number), "seq": self.seq,
                      "map_index": int(map_index), **positions, "timestamp": time.time(),
                      "dtype": str(frame.dtype), "shape": list(frame.shape), **extra}
            index = self.sink.write(frame, header)
            self.seq += 1
            self.frames.append((resource, index))
            self.n_written += 1
            self._set_written(self.n_written)

    async def take_line(self, num: int) -> None:
        """Take one fly-scan line, a frame per trigger pulse, and hold it until it is saved.

        The line goes to the sink only when the plan saves it (`commit_line`, from `collect`):
        a line the plan never saves (an immediate pause or an abort came while it flew; the
        rewound plan flies it again) is dropped whole by the next prepare or the unstage, and
        uses no seq numbers. The statuses of the line still end normally, as a stopped motor's
        do on pause, so the RunEngine resumes without a failed status."""
        if self.trigger_input is None:
            raise ConfigError("detector prepared for external triggers but has no trigger input")
        run_uid, map_number = await asyncio.gather(self.det.run_uid.get_value(), self.det.map_number.get_value())
        positions = await self._positions()           # the angles hold still during a line
        loop = asyncio.get_running_loop()
        indices: list[int] = []
        each: list[dict[str, float]] = []
        made: list[tuple[npt.NDArray[Any], dict[str, Any]]] = []
        while len(made) < num:      # read out the frames of the pulses so far while the line flies on
            pulses = (await self.trigger_input.wait(len(made) + 1))[len(made):num]
            batch = [{**positions, "x": p.x_um, "y": p.y_um} for p in pulses]
            indices += [p.map_index for p in pulses]
            each += batch
            made += await loop.run_in_executor(self._readout, self._read_out, [p.map_index for p in pulses], batch)
        self.held = _HeldLine(run_uid, int(map_number), indices, each, made, time.time())
        self.n_written += num
        self._set_written(self.n_written)

    def _read_out(self, indices: list[int], positions: list[dict[str, float]]) -> list[tuple[npt.NDArray[Any], dict[str, Any]]]:
        """Frames of a fly line's pulses, in the read-out thread (the event loop runs on meanwhile)."""
        made = [self.source.frame(i, pos) for i, pos in zip(indices, positions)]
        for frame, _ in made:
            if frame.shape != tuple(self.source.frame_shape):
                raise FrameShapeError(f"frame source gave shape {frame.shape}, expected {self.source.frame_shape}")
        return made

    async def commit_line(self) -> None:
        """Hand the held line to the sink (the plan is saving it), in one step with no await."""
        line = self.held
        if line is None:
            return
        resource = await self._ensure_map(line.run_uid, line.map_number)
        for k, (frame, extra) in enumerate(line.frames):
            header = {"run_uid": line.run_uid, "map_number": line.map_number, "seq": self.seq,
                      "map_index": line.indices[k], **line.positions[k], "timestamp": line.t,
                      "dtype": str(frame.dtype), "shape": list(frame.shape), **extra}
            self.frames.append((resource, self.sink.write(frame, header)))
            self.seq += 1
        self.held = None

    def drop_line(self) -> None:
        """Forget a line taken but never saved (its flight was interrupted and is flown again)."""
        if self.held is not None:
            self.held = None
            self.lines_dropped += 1

    def close(self) -> None:
        self.drop_line()
        self.sink.close()
        self.current = None


class _MapStreamProvider(StreamableDataProvider):
    """One StreamResource per map, StreamDatum ranges of frames inside it."""

    def __init__(self, recorder: FrameRecorder, data_key: str) -> None:
        self.rec, self.data_key = recorder, data_key
        self.collections_written_signal = recorder.frames_written
        self.last_emitted = len(recorder.frames)    # frames saved (a dropped fly line counted, never saved)
        self._bundles: dict[tuple[str, int], ComposeStreamResourceBundle] = {}
        self.orphans = 0

    async def make_datakeys(self, collections_per_event: int) -> dict[str, DataKey]:
        rows, cols = self.rec.source.frame_shape
        return {self.data_key: DataKey(source=f"sink:{type(self.rec.sink).__name__}",
                                       shape=[collections_per_event, rows, cols], dtype="array",
                                       dtype_numpy=np.dtype(self.rec.source.dtype).str, external="STREAM:")}

    async def make_stream_docs(self, collections_written: int, collections_per_event: int) -> AsyncIterator[StreamAsset]:
        await self.rec.commit_line()         # a fly-scan line is recorded when the plan saves it
        stop = min(collections_written, len(self.rec.frames))
        i = self.last_emitted
        if stop - i > max(collections_per_event, self.rec.num):   # a fly line saves `num` at once
            # Frames written but never saved as an event: a pause interrupted their step and
            # the RunEngine retook it. They stay in the file; only the retake is referenced.
            self.orphans += stop - i - collections_per_event
            i = stop - collections_per_event
        while i < stop:
            resource, first = self.rec.frames[i]
            j = i + 1
            while j < stop and self.rec.frames[j][0] is resource and self.rec.frames[j][1] == first + (j - i):
                j += 1
            bundle = self._bundles.get(resource.key)
            if bundle is None:
                t = resource.target
                bundle = ComposeStreamResource()(mimetype=t.mimetype, uri=t.uri, data_key=self.data_key,
                                                 parameters=dict(t.parameters), validate=True)
                self._bundles[resource.key] = bundle
                yield "stream_resource", bundle.stream_resource_doc
            yield "stream_datum", bundle.compose_stream_datum({"start": first, "stop": first + (j - i)})
            i = j
        self.last_emitted = stop
        self.rec.frames.forget_before(stop)


class _TriggerLogic(DetectorTriggerLogic):
    def __init__(self, recorder: FrameRecorder, acquire: _AcquireLogic) -> None:
        self.rec, self.acquire = recorder, acquire

    async def prepare_internal(self, num: int, livetime: float, deadtime: float) -> None:
        self.rec.num = max(1, num)
        self.rec.external = False

    async def prepare_edge(self, num: int, livetime: float) -> None:
        """A fly-scan line: `num` frames, one per pulse of the trajectory's trigger cable."""
        if self.rec.trigger_input is None:
            raise ConfigError("this detector has no trigger input: it cannot be triggered by a trajectory")
        await self.acquire.settle_line()
        self.rec.num = max(1, num)
        self.rec.external = True

    async def default_trigger_info(self) -> TriggerInfo:
        return TriggerInfo()


def _report_line_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("fly-scan line failed in the detector: %s", task.exception())


class _AcquireLogic(DetectorAcquireLogic):
    def __init__(self, recorder: FrameRecorder) -> None:
        self.rec = recorder
        self.task: asyncio.Task[None] | None = None

    async def start_acquiring(self) -> None:
        if self.rec.external:
            assert self.rec.trigger_input is not None
            self.rec.trigger_input.arm()
            self.task = asyncio.create_task(self.rec.take_line(self.rec.num))
            # `complete` waits for the frame count, not this task: say at once why a line failed
            self.task.add_done_callback(_report_line_failure)
        else:
            self.task = asyncio.create_task(self.rec.take(self.rec.num))

    async def settle_line(self) -> None:
        """Before a fly-scan line is prepared: a line still in flight (the RunEngine paused and
        rewound to fly it again) is taken to its end, so its complete status ends normally and
        the frame count is final before the detector is prepared; then dropped, never saved."""
        await finish(self.task, None)
        self.rec.drop_line()

    async def wait_for_idle(self) -> None:
        # A fly-scan line's task ends where it counts its frames, which `complete` has seen;
        # `self.task` may already be the next line's (after a pause the rewound plan armed it).
        if self.task is not None and not self.rec.external:
            await self.task

    async def ensure_stopped(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class _DataLogic(DetectorDataLogic):
    def __init__(self, recorder: FrameRecorder) -> None:
        self.rec = recorder

    async def prepare_unbounded(self, datakey_name: str) -> StreamableDataProvider:
        return _MapStreamProvider(self.rec, datakey_name)

    def get_hinted_fields(self, datakey_name: str) -> Sequence[str]:
        return [datakey_name]

    async def stop(self) -> None:
        self.rec.close()


class SxdmDetector(StandardDetector):
    """Area detector for SXDM maps: frames from a `FrameSource` into a `FrameSink`.

    Plans tag frames by setting `run_uid`, `map_number`, `map_index` and the map shape
    (`map_ny`, `map_nx`) before triggering; the positions in each header are read from
    `positioners` (name -> signal) at the moment of the frame.

    Parameters
    ----------
    source : produces frames (simulator or a real readout).
    sink : where frames go (HDF5 file per map, ZeroMQ, or both via TeeSink).
    geometry : energy, distance, pixel size and beam centre, reported as configuration.
    positioners : motor signals whose values go into every frame header.
    """

    def __init__(self, source: FrameSource, sink: FrameSink, geometry: DetectorCalibration,
                 positioners: Mapping[str, SignalR[float]], name: str = "",
                 trigger_input: TriggerCable | None = None) -> None:
        self.geometry = geometry
        self.run_uid = soft_signal_rw(str, "")
        self.map_number = soft_signal_rw(int, 0)
        self.map_index = soft_signal_rw(int, 0)
        self.map_ny = soft_signal_rw(int, 1)
        self.map_nx = soft_signal_rw(int, 1)
        self.map_trigger = soft_signal_rw(str, "")  # why the current map was taken (plans set it)
        self.map_done = soft_signal_rw(int, -1)     # plans set a map's number once its last frame is saved
        self.energy_ev, _ = soft_signal_r_and_setter(float, geometry.energy_ev, units="eV")
        self.distance_m, _ = soft_signal_r_and_setter(float, geometry.distance_m, units="m")
        self.pixel_size_row_m, _ = soft_signal_r_and_setter(float, geometry.pixel_size_m[0], units="m")
        self.pixel_size_col_m, _ = soft_signal_r_and_setter(float, geometry.pixel_size_m[1], units="m")
        self.beam_center_row, _ = soft_signal_r_and_setter(float, geometry.beam_center[0])
        self.beam_center_col, _ = soft_signal_r_and_setter(float, geometry.beam_center[1])
        self.recorder = FrameRecorder(self, source, sink, positioners, trigger_input)
        acquire = _AcquireLogic(self.recorder)
        self.add_detector_logics(_TriggerLogic(self.recorder, acquire), acquire, _DataLogic(self.recorder))
        self.add_config_signals(self.energy_ev, self.distance_m, self.pixel_size_row_m, self.pixel_size_col_m,
                                self.beam_center_row, self.beam_center_col)
        super().__init__(name=name)

    async def describe(self) -> dict[str, DataKey]:
        """Frame data key plus the map tags, so every event says which map pixel it holds."""
        described = await super().describe()
        for sig in (self.map_number, self.map_index):
            described.update(await sig.describe())
        return described

    async def read(self) -> dict[str, Reading]:
        readings = await super().read()
        for sig in (self.map_number, self.map_index):
            readings.update(await sig.read())
        return readings

    def geometry_metadata(self, map_shape: tuple[int, int]) -> dict[str, Any]:
        """Static geometry for the start document, so a processor can build its q-grid."""
        g = self.geometry
        return {"energy_ev": g.energy_ev, "distance_m": g.distance_m, "pixel_size_m": list(g.pixel_size_m),
                "beam_center": list(g.beam_center), "map_shape": list(map_shape),
                "frame_shape": list(self.recorder.source.frame_shape), "frame_dtype": str(np.dtype(self.recorder.source.dtype))}
