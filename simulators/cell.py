"""A simulated electrochemical cell that behaves like the one on the diffractometer.

Voltage = OCV(x) + I·R + η, with η a polarisation that builds up under current and relaxes
with time constant τ after the current stops (the drift seen in seed 003's pauses). The cell
advances in simulated time: a `SimClock` ticks in fixed simulated steps, so a stalled machine
slows the experiment down instead of letting it jump ahead between two readings. Integration
is implicit, so the potentiostatic current decay stays stable at any step size.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from opmon.acquisition.cell_state import CellMode, CellSample
from opmon.errors import ConfigError
from opmon.simulators.ocv import OcvCurve, material

FARADAY_MAH = 3.6  # coulomb per mAh


@dataclass
class CellConfig:
    """Everything that defines a simulated cell.

    Parameters
    ----------
    material : OCV curve name (lmno, lmo, lco) or an OcvCurve.
    active_mass_g : mass of active material; with the specific capacity it fixes the capacity.
    x0 : initial lithium content.
    resistance_ohm : ohmic resistance R (instant I·R step).
    polarization_ohm, relaxation_s : the slow polarisation η -> I·R_p with time constant τ.
    voltage_noise_v, current_noise_a : measurement noise (seeded).
    seed : seed of the noise generator, so runs are reproducible.
    """

    material: str | OcvCurve = "lmno"
    active_mass_g: float = 4.0e-3
    x0: float = 1.0
    resistance_ohm: float = 40.0
    polarization_ohm: float = 60.0
    relaxation_s: float = 300.0
    voltage_noise_v: float = 1.0e-4
    current_noise_a: float = 2.0e-9
    seed: int = 0

    def curve(self) -> OcvCurve:
        return self.material if isinstance(self.material, OcvCurve) else material(self.material)

    @property
    def capacity_c(self) -> float:
        """Capacity for x from 1 to 0 in coulombs."""
        return self.curve().specific_capacity_mah_g * self.active_mass_g * FARADAY_MAH

    def c_rate_current(self, rate: float) -> float:
        """Current (A) of a C/n charge: `c_rate_current(1/15)` is C/15."""
        return self.capacity_c / 3600.0 * rate


class CellSimulator:
    """State and dynamics of one cell; `advance(dt)` moves it dt simulated seconds forward.

    The potentiostat-side limits live in the device (acquisition.Potentiostat); the cell only
    obeys what it is told, as a real cell would. A galvanostatic charge stops itself (switches
    to open circuit) at its cut-off voltage.
    """

    max_substep_s = 5.0

    def __init__(self, config: CellConfig | None = None) -> None:
        self.config = config or CellConfig()
        if not 0.0 <= self.config.x0 <= 1.0:
            raise ConfigError(f"cell x0={self.config.x0}: lithium content must lie in [0, 1]")
        if self.config.active_mass_g <= 0 or self.config.resistance_ohm <= 0 or self.config.relaxation_s <= 0:
            raise ConfigError("cell active_mass_g, resistance_ohm and relaxation_s must be positive")
        self.ocv = self.config.curve()
        self.capacity_c = self.config.capacity_c
        self.x = float(self.config.x0)
        self.eta = 0.0
        self.current = 0.0
        self.charge = 0.0
        self.time = 0.0
        self.mode = CellMode.OPEN_CIRCUIT
        self.setpoint = 0.0
        self.cutoff: float | None = None
        self.compliance: float | None = None
        self.cutoff_reached = False
        self.commands: list[tuple[float, CellMode, float, float | None]] = []
        self._rng = np.random.default_rng(self.config.seed)

    def command(self, mode: CellMode, setpoint: float = 0.0, cutoff: float | None = None,
                compliance: float | None = None) -> None:
        """Switch mode; galvanostatic takes a current (A) and an optional cut-off voltage (V).

        `compliance` (A) caps the potentiostatic current, as a real instrument's range does.
        """
        self.compliance = None if compliance is None else abs(float(compliance))
        self.mode = CellMode(mode)
        self.setpoint = float(setpoint)
        self.cutoff = None if cutoff is None else float(cutoff)
        self.cutoff_reached = False
        self.commands.append((self.time, self.mode, self.setpoint, self.cutoff))
        # The instrument applies the new state at once: the next reading already shows it.
        if self.mode is CellMode.GALVANOSTATIC:
            full = (self.setpoint > 0 and self.x <= 0.0) or (self.setpoint < 0 and self.x >= 1.0)
            self.current = 0.0 if full else self.setpoint
        elif self.mode is CellMode.POTENTIOSTATIC:
            i = (self.setpoint - self.ocv.voltage(self.x) - self.eta) / self.config.resistance_ohm
            self.current = i if self.compliance is None else min(max(i, -self.compliance), self.compliance)
        else:
            self.current = 0.0

    def terminal_voltage(self) -> float:
        """Noise-free voltage at the terminals with the present current."""
        return self.ocv.voltage(self.x) + self.current * self.config.resistance_ohm + self.eta

    def _step(self, dt: float) -> None:
        cfg = self.config
        a = 1.0 / (1.0 + dt / cfg.relaxation_s)
        b = (dt / cfg.relaxation_s) * cfg.polarization_ohm * a
        if self.mode is CellMode.GALVANOSTATIC:
            current = self.setpoint
        elif self.mode is CellMode.POTENTIOSTATIC:
            # Implicit step: the current that puts the terminals at the setpoint at the end of dt.
            k = -self.ocv.slope(self.x) / self.capacity_c
            current = (self.setpoint - self.ocv.voltage(self.x) - a * self.eta) / (cfg.resistance_ohm + k * dt + b)
            if self.compliance is not None:
                current = min(max(current, -self.compliance), self.compliance)
        else:
            current = 0.0
        x_new = self.x - current * dt / self.capacity_c
        if not 0.0 <= x_new <= 1.0:  # a fully (de)lithiated cathode takes no more current
            x_new = min(max(x_new, 0.0), 1.0)
            current = (self.x - x_new) * self.capacity_c / dt
        self.x = x_new
        self.charge += current * dt
        self.eta = a * self.eta + b * current
        self.current = current
        self.time += dt
        if self.mode is CellMode.GALVANOSTATIC and self.cutoff is not None:
            v = self.terminal_voltage()  # charge stops above the cut-off, discharge below it
            if (current > 0 and v >= self.cutoff) or (current < 0 and v <= self.cutoff):
                self.mode, self.current, self.cutoff_reached = CellMode.OPEN_CIRCUIT, 0.0, True

    def advance(self, dt: float) -> None:
        """Integrate dt simulated seconds in sub-steps of at most `max_substep_s`."""
        if dt <= 0:
            return
        n = max(1, int(np.ceil(dt / self.max_substep_s)))
        for _ in range(n):
            self._step(dt / n)

    def sample(self) -> CellSample:
        """What a potentiostat reads now, with seeded measurement noise."""
        cfg = self.config
        v = self.terminal_voltage() + cfg.voltage_noise_v * float(self._rng.standard_normal())
        i = self.current + (cfg.current_noise_a * float(self._rng.standard_normal()) if self.current else 0.0)
        return CellSample(time=self.time, voltage=v, current=i, charge=self.charge, x=self.x, mode=self.mode,
                          setpoint=self.setpoint, cutoff_reached=self.cutoff_reached)


@dataclass
class SimClock:
    """Simulated time: simulated seconds = wall seconds x `acceleration`, in bounded steps.

    The tick task wakes every `tick_s` of wall time and advances by the wall time elapsed,
    capped at `max_lag` ticks: under load the simulation slows down rather than skipping
    ahead between two readings. Listeners are called after every step with its length (s).
    """

    acceleration: float = 900.0
    tick_s: float = 0.01
    max_lag: float = 2.0
    time: float = 0.0
    listeners: list[Callable[[float], None]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _paused: bool = False

    def __post_init__(self) -> None:
        if self.acceleration <= 0 or self.tick_s <= 0:
            raise ConfigError(f"clock acceleration={self.acceleration} and tick_s={self.tick_s} must be positive")

    @property
    def step_s(self) -> float:
        """Simulated seconds per tick."""
        return self.acceleration * self.tick_s

    def step(self, dt: float | None = None) -> None:
        """Advance by one tick (or dt simulated seconds) and notify listeners."""
        dt = self.step_s if dt is None else float(dt)
        self.time += dt
        for listener in list(self.listeners):
            listener(dt)

    async def run(self) -> None:
        """Tick forever; cancel the task to stop.

        Each step covers the wall time since the last one (so the nominal rate holds despite
        timer overhead) but at most `max_lag` ticks, so a stalled loop never jumps far ahead.
        """
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            elapsed, last = min(now - last, self.max_lag * self.tick_s), now
            if not self._paused:
                self.step(self.acceleration * elapsed)

    def start(self) -> asyncio.Task[None]:
        """Start ticking on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def freeze(self, frozen: bool = True) -> None:
        """Stop or restart the flow of simulated time (tests that need a still cell)."""
        self._paused = frozen
