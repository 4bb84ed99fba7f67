"""Fixtures: a real RunEngine and small, time-accelerated simulated beamlines."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine

from opmon.acquisition.sinks import MapMeta, SinkTarget
from opmon.simulators.beamline import BeamlineConfig, SimulatedBeamline
from opmon.streaming.archive.map_sink import Hdf5MapSink
from opmon.simulators.instrument import SxdmSetup

SMALL = dict(map_shape=(4, 4), n_angles=5, roi=(224, 288, 224, 288), eta_step=0.2)


@pytest.fixture
def RE() -> Iterator[RunEngine]:
    engine = RunEngine({}, call_returns_result=True)
    yield engine
    if engine.state != "idle":
        engine.halt()


@pytest.fixture
def docs(RE: RunEngine) -> list[tuple[str, dict[str, Any]]]:
    collected: list[tuple[str, dict[str, Any]]] = []
    RE.subscribe(lambda name, doc: collected.append((name, doc)))
    return collected


@pytest.fixture
def make_beamline(RE: RunEngine, tmp_path) -> Iterator[Callable[..., SimulatedBeamline]]:
    made: list[SimulatedBeamline] = []

    def make(setup: dict[str, Any] | None = None, sink: Any = None, **config: Any) -> SimulatedBeamline:
        s = SxdmSetup(**{**SMALL, **(setup or {})})
        if sink is None:                     # one raw file per map unless told otherwise
            sink = Hdf5MapSink(tmp_path / f"frames{len(made)}")
        bl = SimulatedBeamline(BeamlineConfig(setup=s, **config), sink=sink)
        made.append(bl)
        return bl

    yield make
    for bl in made:
        bl.close()


def stream(docs: list[tuple[str, dict[str, Any]]], name: str) -> list[dict[str, Any]]:
    """Events of one stream, in order."""
    descs = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == name}
    return [d for n, d in docs if n == "event" and d["descriptor"] in descs]


def validate_all(docs: list[tuple[str, dict[str, Any]]]) -> None:
    """Every document must pass its event-model JSON schema."""
    from event_model import DocumentNames, schema_validators

    for name, doc in docs:
        schema_validators[DocumentNames[name]].validate(doc)


class MemorySink:
    """A second, in-memory FrameSink: keeps headers and frames so tests can inspect them."""

    def __init__(self) -> None:
        self.opened: list[tuple[str, int, MapMeta]] = []
        self.headers: list[dict[str, Any]] = []
        self.frames: list[np.ndarray] = []
        self.closed = 0

    def open(self, run_uid: str, map_id: int, meta: MapMeta) -> SinkTarget:
        self.opened.append((run_uid, map_id, meta))
        return SinkTarget(uri=f"memory://{run_uid}/{map_id}", mimetype="application/x-opmon-memory")

    def write(self, frame: np.ndarray, header: dict[str, Any]) -> int:
        self.headers.append(header)
        self.frames.append(frame.copy())
        return sum(1 for h in self.headers if h["map_number"] == header["map_number"]) - 1

    def close(self) -> None:
        self.closed += 1
