"""A bluesky beamline as a live source: its documents and its detector's file become opmon's stream.

`BlueskyFollower` is an event-model `DocumentRouter` that takes the documents of another
process's RunEngine (a stock `grid_scan` of an ophyd-async detector that writes HDF5) and
drives a `ZmqFrameSink`, so the live processor and the archiver run unchanged:

* start document -> the map: `shape`/`snaking` of the grid scan (`ScanGrid`), geometry from
  the start document (FORMATS.md keys, top level or under `geometry`) overridden by
  ``--geometry FILE.toml``; a run lacking any of it is refused with one line naming what.
* the descriptor holding the detector's STREAM data key -> opmon `start` + `map_start`
  (frame shape and dtype from its data key; uint8 frames are widened to uint16, losslessly).
* `StreamResource` -> the detector's HDF5 file (`DetectorFile`, SWMR); `StreamDatum` -> which
  frames of it belong to which event `seq_num`; `Event` -> that point's motor positions and
  per-point angles. A point's frames are sent once both are known, in `seq_num` order (a
  stream with no event data, e.g. a fly scan's, is sent on its datum alone).
* angles: `eta`, `phi`, `nu`, `delta` are read from the data key of the same name, or the one
  given by ``--angle NAME=KEY``, looked up in the point's event, then the latest `baseline`
  reading, then the run's configuration readings; ``--angle NAME=VALUE`` fixes it.
* stop document -> `map_end` and `stop` with the run's exit status.

One bluesky run is one opmon run of one map, under the same uid. A document that cannot be
followed stops that run as "fail" with the reason (frames already sent stay in the live maps
and the archive) and the follower waits for the next run.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from event_model import DocumentRouter

from opmon.errors import DetectorFileError, DocumentError, OpmonError
from opmon.streaming.bluesky_options import ANGLES, FollowOptions
from opmon.streaming.detector_file import DetectorFile, resource_path
from opmon.streaming.geometry_file import GEOMETRY_KEYS, check_geometry_value, merge_geometry
from opmon.streaming.scan_grid import ScanGrid

log = logging.getLogger(__name__)

#: detector dtypes the opmon stream carries as they are, or widened without loss.
WIDENED = {"uint8": "uint16", "uint16": "uint16", "uint32": "uint32"}
BASELINE = "baseline"


class FrameSink(Protocol):
    """What the follower drives: `opmon.streaming.publisher.ZmqFrameSink`'s run methods."""

    def start_run(self, **kwargs: Any) -> str: ...
    def start_map(self, n_frames: int = 0, **kwargs: Any) -> int: ...
    def send_frame(self, frame: npt.NDArray[Any], **kwargs: Any) -> int: ...
    def end_map(self) -> None: ...
    def stop_run(self, exit_status: str = "success", reason: str = "") -> None: ...


@dataclass
class _Run:
    """One bluesky run being followed."""

    start: dict[str, Any]
    grid: ScanGrid
    geometry: dict[str, Any]
    geometry_sources: dict[str, str]
    descriptors: dict[str, dict[str, Any]] = field(default_factory=dict)
    configuration: dict[str, Any] = field(default_factory=dict)     # data key -> value, every descriptor
    baseline: dict[str, Any] = field(default_factory=dict)          # data key -> latest baseline value
    frame_descriptor: str | None = None
    detector: str = ""
    dtype: str = ""
    frames_per_index: int = 1
    needs_event: bool = True
    angle_sources: dict[str, str] = field(default_factory=dict)
    other_images: dict[str, dict[str, Any]] = field(default_factory=dict)   # image keys not followed (Resource/Datum, inline)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # StreamResource uid -> document
    files: dict[str, DetectorFile] = field(default_factory=dict)      # StreamResource uid -> open file
    datums: dict[int, tuple[str, int]] = field(default_factory=dict)  # seq_num -> (resource uid, index)
    events: dict[int, dict[str, Any]] = field(default_factory=dict)   # seq_num -> event data
    next_seq: int = 1
    last_event_seq: int = 0
    opened: bool = False
    frames_sent: int = 0
    events_missing: int = 0

    @property
    def uid(self) -> str:
        return str(self.start["uid"])

    def close_files(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class BlueskyFollower(DocumentRouter):
    """Turns one RunEngine's documents (in order, as published) into opmon runs on `sink`.

    Parameters
    ----------
    sink
        a `ZmqFrameSink` (or anything with its run methods).
    options
        detector key, angle names, geometry overrides.
    source
        how the start message's metadata names where the run came from (e.g. the proxy address).
    """

    def __init__(self, sink: FrameSink, options: FollowOptions | None = None, source: str = "bluesky") -> None:
        super().__init__()
        self.sink = sink
        self.options = options or FollowOptions()
        self.source = source
        self.run: _Run | None = None
        self.ignored: Counter[str] = Counter()      # documents not followed, by reason
        self.failed: dict[str, str] = {}            # run uid -> why it was refused or stopped as "fail"
        self.skipped: dict[str, str] = {}           # run uid -> why it is not a map (e.g. a count)
        self.finished: list[str] = []               # run uids stopped with their own stop document
        self.frames_sent = 0
        self._warned: set[Any] = set()
        self._descriptor_runs: dict[str, str] = {}   # descriptor uid -> run uid, of every run seen

    # -- routing -----------------------------------------------------------------------------
    def __call__(self, name: str, doc: dict[str, Any], validate: bool = False) -> tuple[str, dict[str, Any]]:
        """Follow one document; an error in it fails its run (logged), never the follower."""
        try:
            return super().__call__(name, doc, validate)
        except (OpmonError, KeyError, TypeError, ValueError) as exc:
            self._fail(exc if isinstance(exc, OpmonError) else DocumentError(f"{name} document: {exc!r:.200}"))
            return name, doc

    def _current(self, run_uid: Any, name: str) -> _Run | None:
        if self.run is not None and run_uid == self.run.uid:
            return self.run
        if run_uid in self.failed or run_uid in self.skipped:
            self.ignored["failed_run" if run_uid in self.failed else "skipped_run"] += 1
        else:
            self.ignored["unknown_run"] += 1
            if run_uid not in self._warned:
                self._warned.add(run_uid)
                log.warning("bluesky source: %s document of run %s, whose start was not received (joined mid-run?); "
                            "waiting for the next start", name, run_uid)
        return None

    def _run_of_descriptor(self, descriptor: Any, name: str) -> _Run | None:
        if descriptor in self._descriptor_runs:
            return self._current(self._descriptor_runs[descriptor], name)
        self.ignored["unknown_descriptor"] += 1
        return None

    def start(self, doc: dict[str, Any]) -> None:
        if self.run is not None:
            self._close("abort", "a new bluesky run started before this one's stop document")
        if self.options.map_shape is None and "shape" not in doc:
            self.skipped[doc["uid"]] = f"{doc.get('plan_name', 'plan?')}: not a grid scan (no 'shape')"
            log.info("bluesky source: run %s (%s) is not a grid scan (its start document has no 'shape'): "
                     "not followed (--map-shape NY NX maps any scan)", doc["uid"], doc.get("plan_name", "plan?"))
            return
        try:
            grid = ScanGrid.from_start(doc, self.options.map_shape)
            found: dict[str, tuple[float, str]] = {}
            for where, table in (("start document", doc), ("start document geometry", doc.get("geometry") or {})):
                for key in GEOMETRY_KEYS:
                    if key in table:
                        found[key] = (check_geometry_value(key, table[key], f"run {doc['uid']} {where}"), where)
            geometry, sources = merge_geometry(found, self.options.geometry, self.options.geometry_source,
                                               f"run {doc['uid']} ({doc.get('plan_name', 'plan?')})")
        except OpmonError as exc:
            self.failed[doc["uid"]] = str(exc)
            log.error("bluesky source: run %s not followed: %s", doc["uid"], exc)
            return
        self._descriptor_runs.clear()    # documents of earlier runs are not followed any more
        self.run = _Run(doc, grid, geometry, sources)

    def descriptor(self, doc: dict[str, Any]) -> None:
        self._descriptor_runs[doc["uid"]] = doc.get("run_start", "")
        run = self._current(doc.get("run_start"), "descriptor")
        if run is None:
            return
        run.descriptors[doc["uid"]] = doc
        for device in (doc.get("configuration") or {}).values():
            run.configuration.update(device.get("data") or {})
        run.other_images.update({k: v for k, v in (doc.get("data_keys") or {}).items()
                                 if len(v.get("shape") or []) >= 2 and not str(v.get("external", "")).startswith("STREAM:")})
        if run.frame_descriptor is None and self._frames_key(doc) is not None:
            self._open_map(run, doc)

    def event(self, doc: dict[str, Any]) -> dict[str, Any]:
        run = self._run_of_descriptor(doc.get("descriptor"), "event")
        if run is None:
            return doc
        descriptor = run.descriptors[doc["descriptor"]]
        if descriptor.get("name") == BASELINE:
            run.baseline.update(doc["data"])
        if doc["descriptor"] == run.frame_descriptor:
            seq = int(doc["seq_num"])
            if seq > run.last_event_seq + 1:
                run.events_missing += seq - run.last_event_seq - 1
                log.error("bluesky source: run %s: events %d..%d never arrived (documents lost on the way)",
                          run.uid, run.last_event_seq + 1, seq - 1)
            run.last_event_seq = max(run.last_event_seq, seq)
            run.events[seq] = doc["data"]
            self._send_ready(run)
        return doc

    def stream_resource(self, doc: dict[str, Any]) -> None:
        run = self._current(doc.get("run_start", self.run.uid if self.run else None), "stream_resource")
        if run is not None:
            run.resources[doc["uid"]] = doc     # opened at its first datum, once the detector's key is known

    def _file(self, run: _Run, resource_uid: str) -> DetectorFile | None:
        """The open detector file of a StreamResource of the frames' data key (None for other keys)."""
        if resource_uid in run.files:
            return run.files[resource_uid]
        doc = run.resources.get(resource_uid)
        if doc is None or not run.detector or doc.get("data_key") != run.detector:
            return None
        path = resource_path(doc)
        dataset = (doc.get("parameters") or {}).get("dataset")
        if not isinstance(dataset, str):
            raise DetectorFileError(f"StreamResource {doc['uid']} of {run.detector}: no 'dataset' parameter "
                                    f"naming the frames in {path}")
        run.files[resource_uid] = DetectorFile(path, dataset, wait_s=self.options.frame_wait_s)
        return run.files[resource_uid]

    def stream_datum(self, doc: dict[str, Any]) -> None:
        run = self._run_of_descriptor(doc.get("descriptor"), "stream_datum")
        if run is None or self._file(run, doc["stream_resource"]) is None:
            return   # another data key's datum (e.g. the detector's sum), or a failed run's
        seqs, indices = doc["seq_nums"], doc["indices"]
        if seqs["stop"] - seqs["start"] != indices["stop"] - indices["start"]:
            raise DocumentError(f"StreamDatum {doc['uid']}: seq_nums {seqs} and indices {indices} differ in length")
        for k in range(seqs["stop"] - seqs["start"]):
            run.datums[seqs["start"] + k] = (doc["stream_resource"], indices["start"] + k)
        self._send_ready(run)

    def stop(self, doc: dict[str, Any]) -> None:
        run = self._current(doc.get("run_start"), "stop")
        if run is None:
            return
        self._send_ready(run, final=True)
        if not run.opened:
            seen = ", ".join(f"{k} ({v.get('external') or 'in the events'})" for k, v in run.other_images.items())
            self.failed[run.uid] = (f"run {run.uid} ({run.start.get('plan_name', 'plan?')}) had no image data key written "
                                    f"through StreamResource/StreamDatum, nothing to map"
                                    + (f"; image keys seen: {seen} (opmon follows STREAM: keys only)" if seen else ""))
            log.error("bluesky source: %s", self.failed[run.uid])
        reason = doc.get("reason") or ""
        if run.events_missing:
            reason = f"{reason}; " if reason else ""
            reason += f"{run.events_missing} event document(s) never arrived"
        self._close(str(doc.get("exit_status", "success")), reason)
        if run.opened:
            self.finished.append(run.uid)

    # -- the map -----------------------------------------------------------------------------
    def _frames_key(self, descriptor: dict[str, Any]) -> str | None:
        keys = descriptor.get("data_keys") or {}
        if self.options.detector is not None:
            return self.options.detector if self.options.detector in keys else None
        images = [k for k, v in keys.items() if str(v.get("external", "")).startswith("STREAM:") and len(v.get("shape") or []) >= 2]
        if len(images) > 1:
            raise DocumentError(f"descriptor {descriptor.get('name')!r} has several image data keys {images}: "
                                f"choose one with --detector KEY")
        return images[0] if images else None

    def _open_map(self, run: _Run, descriptor: dict[str, Any]) -> None:
        key = self._frames_key(descriptor)
        assert key is not None
        data_key = descriptor["data_keys"][key]
        if not str(data_key.get("external", "")).startswith("STREAM:"):
            raise DocumentError(f"data key {key} is not written by its detector to a file (external STREAM:); "
                                f"opmon follows StreamResource/StreamDatum only")
        shape = [int(n) for n in data_key["shape"]]
        frame_shape = tuple(shape[-2:])
        run.frames_per_index = shape[0] if len(shape) >= 3 else 1
        dtype = np.dtype(data_key.get("dtype_numpy") or "uint16").name
        if dtype not in WIDENED:
            raise DocumentError(f"data key {key}: detector dtype {dtype} is not supported "
                                f"(opmon streams {', '.join(WIDENED)}; uint8 is widened to uint16)")
        run.frame_descriptor, run.detector, run.dtype = descriptor["uid"], key, WIDENED[dtype]
        run.needs_event = any(not v.get("external") for v in descriptor["data_keys"].values())
        run.angle_sources = self._angle_sources(run, descriptor)
        metadata = {"source": self.source, "bluesky_uid": run.uid, "plan_name": run.start.get("plan_name"),
                    "scan_id": run.start.get("scan_id"), "detector_key": key, "detector_dtype": dtype,
                    "grid_shape": list(run.grid.shape), "snaking": list(run.grid.snaking),
                    "geometry_sources": run.geometry_sources, "angle_sources": run.angle_sources}
        self.sink.start_run(run=run.uid, frame_shape=frame_shape, dtype=run.dtype, map_shape=run.grid.map_shape,
                            metadata=metadata, **run.geometry)
        run.opened = True
        self.sink.start_map(run.grid.points * run.frames_per_index, map_shape=run.grid.map_shape,
                            trigger={"kind": "bluesky", "plan_name": run.start.get("plan_name")})
        log.info("bluesky source: run %s (%s): map %s of %s %s frames from %s", run.uid, run.start.get("plan_name"),
                 run.grid.map_shape, frame_shape, dtype, key)

    def _angle_sources(self, run: _Run, descriptor: dict[str, Any]) -> dict[str, str]:
        """Where each angle comes from ("event KEY", "baseline KEY", "configuration KEY", "fixed DEG").

        Raises
        ------
        DocumentError
            naming every angle whose data key the run does not record.
        """
        baseline_keys = set(run.baseline).union(*(d.get("data_keys", {}) for d in run.descriptors.values()
                                                  if d.get("name") == BASELINE))
        sources, missing = {}, []
        for name in ANGLES:
            spec = self.options.angle_spec(name)
            if isinstance(spec, float):
                sources[name] = f"fixed {spec}"
            elif spec in descriptor["data_keys"]:
                sources[name] = f"event {spec}"
            elif spec in baseline_keys:
                sources[name] = f"baseline {spec}"
            elif spec in run.configuration:
                sources[name] = f"configuration {spec}"
            else:
                missing.append((name, spec))
        if missing:
            names = ", ".join(name for name, _ in missing)
            keys = ", ".join(repr(spec) for _, spec in missing)
            raise DocumentError(f"run {run.uid}: angle(s) {names}: data key(s) {keys} in no event, baseline or "
                                f"configuration reading; name each with --angle NAME=KEY or fix it with --angle NAME=DEGREES")
        return sources

    def _angle(self, run: _Run, name: str, data: dict[str, Any]) -> float:
        source = run.angle_sources[name]
        kind, _, key = source.partition(" ")
        table = {"fixed": None, "event": data, "baseline": run.baseline, "configuration": run.configuration}[kind]
        value = float(key) if table is None else table.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DocumentError(f"run {run.uid}: angle {name} from {source} is {value!r:.40}, not a finite number")
        return float(value)

    def _position(self, run: _Run, axis: int, data: dict[str, Any]) -> float | None:
        motors = run.start.get("motors") or []
        if len(motors) < abs(axis):
            return None
        value = data.get(motors[axis])
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def _send_ready(self, run: _Run, final: bool = False) -> None:
        """Send every point, in seq_num order, whose frames (and event, when there is one) are known."""
        if not run.opened:
            return
        while True:
            seq = run.next_seq
            have_event = seq in run.events or not run.needs_event
            if seq not in run.datums or not have_event:
                if not final:
                    return
                later = [s for s in run.datums if s > seq]
                if not later:
                    return
                if seq not in run.events and run.needs_event:
                    log.error("bluesky source: run %s: point %d has no frames or no event; not sent", run.uid, seq)
                    run.datums.pop(seq, None)
                    run.next_seq += 1
                    continue
            self._send_point(run, seq)
            run.next_seq += 1

    def _send_point(self, run: _Run, seq: int) -> None:
        resource, index = run.datums.pop(seq)
        data = run.events.pop(seq, {})
        m = run.frames_per_index
        frames = run.files[resource].read(index * m, (index + 1) * m)
        if frames.dtype != run.dtype:
            frames = frames.astype(run.dtype)
        map_index = run.grid.map_index(seq - 1)
        angles = {name: self._angle(run, name, data) for name in ANGLES}
        x, y = self._position(run, -1, data), self._position(run, -2, data)
        for frame in frames:
            self.sink.send_frame(frame, index=map_index, x=x, y=y, **angles)
            run.frames_sent += 1
            self.frames_sent += 1

    # -- ending ------------------------------------------------------------------------------
    def _close(self, exit_status: str, reason: str) -> None:
        run, self.run = self.run, None
        if run is None:
            return
        run.close_files()
        if run.opened:
            self.sink.stop_run(exit_status if exit_status in ("success", "abort", "fail") else "fail", reason)
        log.info("bluesky source: run %s ended (%s%s): %d frames sent", run.uid, exit_status,
                 f", {reason}" if reason else "", run.frames_sent)

    def _fail(self, exc: OpmonError) -> None:
        if self.run is None:
            log.error("bluesky source: %s", exc)
            return
        uid = self.run.uid
        self.failed[uid] = str(exc)
        log.error("bluesky source: run %s not followed further (%d frames already sent are kept): %s",
                  uid, self.run.frames_sent, exc)
        self._close("fail", str(exc))

    def close(self) -> None:
        """End a run still open (the bridge is stopping) as aborted."""
        if self.run is not None:
            self._close("abort", "opmon's bluesky source stopped before the run's stop document")
