"""The simulated beamline: clock, cell, particle and renderer behind real ophyd-async devices.

`SimulatedBeamline` builds the same device classes a real beamline would configure
(`Potentiostat`, `PiezoStage`, `Diffractometer`, `SxdmDetector`), only with simulated
transports: the cell advances on a `SimClock` ticking on the bluesky event loop, and the
detector renders each frame from the particle at the cell's lithium content at that moment.
"""
from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from bluesky.run_engine import call_in_bluesky_event_loop, get_bluesky_event_loop

from opmon.acquisition.cell_state import CellSample
from opmon.acquisition.detector import DetectorCalibration, SxdmDetector
from opmon.acquisition.flying import TriggerCable
from opmon.acquisition.mapping import MapGrid
from opmon.acquisition.motion import Diffractometer, PiezoStage
from opmon.acquisition.potentiostat import CellCommand, Potentiostat, PotentiostatLimits
from opmon.acquisition.sinks import FrameSink
from opmon.errors import ConfigError
from opmon.simulators.cell import CellConfig, CellSimulator, SimClock
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup
from opmon.simulators.render import FrameRenderer
from opmon.simulators.stage_drift import StageDrift, StageDriftTruth
from opmon.simulators.trajectory import SimPiezoTrajectory


def in_bluesky_loop_running() -> bool:
    """True once a RunEngine has started the bluesky event loop."""
    loop = get_bluesky_event_loop()
    return loop is not None and loop.is_running()


class SimCellBackend:
    """`CellBackend` over a `CellSimulator` advanced by a `SimClock`."""

    def __init__(self, cell: CellSimulator, clock: SimClock) -> None:
        self.cell, self.clock = cell, clock
        self._callbacks: list[Callable[[CellSample], None]] = []
        self._latest = cell.sample()
        clock.listeners.append(self._on_tick)

    def _on_tick(self, dt: float) -> None:
        self.cell.advance(dt)
        self._latest = self.cell.sample()
        for cb in self._callbacks:
            cb(self._latest)

    def apply(self, command: CellCommand, compliance: float) -> None:
        self.cell.command(command.mode, command.setpoint, command.cutoff, compliance)
        self._latest = self.cell.sample()

    def subscribe(self, callback: Callable[[CellSample], None]) -> None:
        self._callbacks.append(callback)

    def latest(self) -> CellSample:
        return self._latest


class SimFrameSource:
    """`FrameSource` that moves the particle to the cell's lithium content, then renders.

    The particle is updated when x has moved by more than `x_tolerance` since the last
    update, so the crystal follows the cell. The default 1e-3 shifts d400 by ~2e-5 Å, ten
    times below the 2.5e-4 Å resolution of seed 000, and saves the ~2 ms of an update on most frames.
    """

    def __init__(self, renderer: FrameRenderer, particle: ParticleModel, cell: CellSimulator,
                 cycles: float = 0.0, x_tolerance: float = 1e-3) -> None:
        self.renderer, self.particle, self.cell = renderer, particle, cell
        self.cycles, self.x_tolerance = cycles, x_tolerance
        self.frame_shape = tuple(renderer.setup.frame_shape)
        self.dtype = str(renderer.dtype)
        self._x: float | None = None
        #: the plan's map shape (the detector's map_ny, map_nx): a grid of another shape than the
        #: setup's (a finer map over the particle) is rendered at the piezo position instead
        self.map_shape = tuple(renderer.setup.map_shape)
        #: where the particle has crept in the piezo frame since map 0, (x, y) µm (`stage_drift`)
        self.particle_offset_um = (0.0, 0.0)
        self._shift = (0.0, 0.0)

    def detector_mask(self) -> npt.NDArray[np.uint8] | None:
        return self.renderer.detector_mask

    def follow_cell(self) -> None:
        x = min(max(self.cell.x, 0.0), 1.0)
        if self._x is None or abs(x - self._x) > self.x_tolerance:
            self.particle.set_charge_state(x, self.cycles)
            self._x = x

    def crystal_pixel(self, map_index: int, positions: Mapping[str, float]) -> int:
        """The crystal model's pixel the beam hits: `map_index` on the setup's grid; on another
        grid, the model's pixel nearest the piezo (x, y) less the particle's creep (the model has
        the setup's step)."""
        setup = self.renderer.setup
        if self.map_shape == tuple(setup.map_shape) or "x" not in positions or "y" not in positions:
            return int(map_index)
        ny, nx = setup.map_shape
        row = min(max(int(round((positions["y"] - self.particle_offset_um[1]) / setup.map_step_um)), 0), ny - 1)
        col = min(max(int(round((positions["x"] - self.particle_offset_um[0]) / setup.map_step_um)), 0), nx - 1)
        return row * nx + col

    def follow_stage(self, map_index: int, positions: Mapping[str, float]) -> None:
        """Render what the beam hits at the piezo's (x, y): the particle is modelled on the grid of
        map pixels at 0 µm; a scan region moved off that grid, or a particle that crept, shifts
        which part of it each map pixel sees (in map pixels, so the renderer's `set_drift`). On a
        grid of another shape `crystal_pixel` places the beam instead (no shift)."""
        setup = self.renderer.setup
        step = setup.map_step_um
        shift = (0.0, 0.0)
        if self.map_shape == tuple(setup.map_shape):
            row, col = divmod(int(map_index), setup.map_shape[1])     # as `SxdmSetup.map_positions_um`
            x, y = positions.get("x", col * step), positions.get("y", row * step)
            shift = (round((self.particle_offset_um[1] - (y - row * step)) / step, 6),
                     round((self.particle_offset_um[0] - (x - col * step)) / step, 6))
        if shift != self._shift:
            self.renderer.set_drift(*shift)
            self._shift = shift

    def frame(self, map_index: int, positions: Mapping[str, float]) -> tuple[npt.NDArray[Any], dict[str, Any]]:
        self.follow_cell()
        self.follow_stage(map_index, positions)
        frame = self.renderer.frame(self.crystal_pixel(map_index, positions), positions["eta"], positions["phi"],
                                    positions["nu"], positions["delta"])
        return frame, {"cell_time": self.cell.time, "x_li": self.cell.x}


@dataclass
class BeamlineConfig:
    """Everything a simulated beamline needs; defaults follow seed 000 (LMNO, C/15, ID01).

    `acceleration` is simulated seconds per wall second (900: a 15 h charge in 1 min);
    `tick_s` the wall period of the clock.
    """

    setup: SxdmSetup = field(default_factory=SxdmSetup)
    cell: CellConfig = field(default_factory=CellConfig)
    limits: PotentiostatLimits = field(default_factory=PotentiostatLimits)
    safe_mode: str = "open_circuit"
    acceleration: float = 900.0
    tick_s: float = 0.01
    particle_mode: str = "paper"
    window: str = "all"  # "one-phase": the detector sees only the phase consumed on this plateau (the paper)
    cycles: float = 0.0
    seed: int = 0
    stage_drift_um: float = 0.0  # the particle creeps by up to this much (µm) between maps (`stage_drift`); 0: never


class SimulatedBeamline:
    """Owns the simulation and the connected devices: potentiostat, stage, diffractometer, detector.

    Create a RunEngine first (devices connect and the clock ticks on its event loop). `sink` is
    where the detector's frames go: a ZeroMQ publisher (`PublisherSink`), files
    (`opmon.streaming.archive.map_sink.Hdf5MapSink`, one raw file per map) or both (`TeeSink`).
    """

    def __init__(self, config: BeamlineConfig, sink: FrameSink) -> None:
        self.config = config
        s = config.setup
        self.clock = SimClock(acceleration=config.acceleration, tick_s=config.tick_s)
        self.cell = CellSimulator(config.cell)
        self.backend = SimCellBackend(self.cell, self.clock)
        self.particle = ParticleModel(s, seed=config.seed, mode=config.particle_mode,
                                      x_mean=min(max(config.cell.x0, 0.0), 1.0), cycles=config.cycles,
                                      window=config.window)
        self.renderer = FrameRenderer(s, self.particle, seed=config.seed)
        self.source = SimFrameSource(self.renderer, self.particle, self.cell, cycles=config.cycles)
        self.sink = sink
        self.potentiostat = Potentiostat(self.backend, config.limits, config.safe_mode, name="potentiostat")
        self.trigger_cable = TriggerCable()       # the trajectory triggers the detector in fly scans
        self.trajectory = SimPiezoTrajectory()
        self.stage = PiezoStage(name="stage", trajectory=self.trajectory, trigger_out=self.trigger_cable)
        self.diffractometer = Diffractometer(eta=s.eta_center, phi=s.phi, nu=s.nu, delta=s.delta, name="diffractometer")
        positioners = {"eta": self.diffractometer.eta, "phi": self.diffractometer.phi, "nu": self.diffractometer.nu,
                       "delta": self.diffractometer.delta, "x": self.stage.x, "y": self.stage.y}
        geometry = DetectorCalibration(energy_ev=s.energy_ev, distance_m=s.distance_m,
                                    pixel_size_m=(s.pixel_size_m, s.pixel_size_m), beam_center=s.frame_beam_center)
        self.detector = SxdmDetector(self.source, self.sink, geometry, positioners, name="detector",
                                     trigger_input=self.trigger_cable)
        self.stage_drift = StageDrift(config.stage_drift_um, seed=config.seed)
        self.drift_truth = StageDriftTruth(name="stage_drift")   # the truth, for the run's documents
        self._map_seen: int | None = None
        self.maps_started = 0
        if not in_bluesky_loop_running():
            raise ConfigError("SimulatedBeamline: create the RunEngine first; devices connect and the cell "
                              "clock ticks on the bluesky event loop")
        self._shape_reports = [0, 0]
        call_in_bluesky_event_loop(self._connect(), timeout=30.0)

    async def _connect(self) -> None:
        await asyncio.gather(*(d.connect() for d in (*self.devices, self.drift_truth)))
        for axis, signal in enumerate((self.detector.map_ny, self.detector.map_nx)):   # a steered grid
            signal.subscribe_reading(functools.partial(self._map_shape, axis))
        if self.config.stage_drift_um > 0:
            self.detector.map_number.subscribe_reading(self._on_map_number)
        self.clock.start()

    def _map_shape(self, axis: int, reading: Mapping[str, Any]) -> None:
        """The plan set the map's size along `axis` (before a map); the report on subscribing
        (the signal's unset 1) is not one."""
        self._shape_reports[axis] += 1
        if self._shape_reports[axis] == 1:
            return
        shape = list(self.source.map_shape)
        (shape[axis],) = (int(r["value"]) for r in reading.values())
        self.source.map_shape = tuple(shape)

    def _on_map_number(self, reading: Mapping[str, Any]) -> None:
        """A new map starts (the plan sets the detector's map number): the particle has crept on."""
        (value,) = (int(r["value"]) for r in reading.values())
        if self._map_seen is not None and value != self._map_seen:
            self.maps_started += 1
            x, y = self.stage_drift.position(self.maps_started)
            self.source.particle_offset_um = (x, y)
            self.drift_truth.show(x, y)      # one event per map in a monitored stream
        self._map_seen = value

    @property
    def devices(self) -> tuple[Potentiostat, PiezoStage, Diffractometer, SxdmDetector]:
        return (self.potentiostat, self.stage, self.diffractometer, self.detector)

    def grid(self) -> MapGrid:
        """The map raster of the setup (µm)."""
        return MapGrid(self.config.setup.map_shape, self.config.setup.map_step_um)

    def etas(self) -> list[float]:
        """The rocking angles of one map (deg)."""
        return [float(e) for e in self.config.setup.eta_values()]

    def map_args(self) -> dict[str, Any]:
        """``grid`` and ``etas`` keyword arguments for the plans: ``operando_series(*bl.devices, **bl.map_args(), ...)``."""
        return {"grid": self.grid(), "etas": self.etas()}

    def c_rate(self, rate: float) -> float:
        """Galvanostatic current (A) of a C-rate, e.g. `c_rate(1/15)`."""
        return self.config.cell.c_rate_current(rate)

    def close(self) -> None:
        """Stop the clock and close any open map file."""
        async def stop() -> None:
            self.clock.stop()
        call_in_bluesky_event_loop(stop())
        self.sink.close()
