"""The potentiostat as a bluesky device: readable cell state, one validated command path.

Plans move the cell with `bps.mv(potentiostat, CellCommand(...))`. Every command passes
`Potentiostat.check` first, which raises `LimitError` before anything reaches the instrument,
and plans call `check` on their whole protocol before the run opens. The transport is a
`CellBackend`: the simulated cell here, a vendor driver at the beamline.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from bluesky.protocols import Movable, Pausable
from ophyd_async.core import AsyncStatus, StandardReadable, soft_signal_r_and_setter
from ophyd_async.core import StandardReadableFormat as Format

from opmon.acquisition.cell_state import CellMode, CellSample
from opmon.errors import ConfigError, LimitError


@dataclass(frozen=True)
class CellCommand:
    """What to make the cell do.

    Parameters
    ----------
    mode : galvanostatic (setpoint in A, + = charge), potentiostatic (setpoint in V),
        open circuit or high impedance (setpoint ignored).
    setpoint : current (A) or voltage (V) depending on mode.
    cutoff : galvanostatic only: stop (open circuit) when the voltage reaches it (V).
    """

    mode: CellMode
    setpoint: float = 0.0
    cutoff: float | None = None


OPEN_CIRCUIT = CellCommand(CellMode.OPEN_CIRCUIT)
HIGH_IMPEDANCE = CellCommand(CellMode.HIGH_IMPEDANCE)


@dataclass(frozen=True)
class PotentiostatLimits:
    """Hard limits of the instrument and cell: nothing beyond them is ever commanded (V, A)."""

    v_min: float = 3.0
    v_max: float = 4.95
    i_max: float = 1.0e-3

    def check(self, command: CellCommand) -> CellCommand:
        """Return the command as it will be sent (galvanostatic cut-off filled in) or raise.

        Raises
        ------
        LimitError
            naming the field, its value and the limit it breaks.
        """
        mode = CellMode(command.mode)
        if not math.isfinite(command.setpoint):
            raise LimitError(f"potentiostat setpoint={command.setpoint!r} is not a finite number")
        if mode is CellMode.POTENTIOSTATIC and not self.v_min <= command.setpoint <= self.v_max:
            raise LimitError(f"potentiostatic setpoint={command.setpoint} V lies outside the voltage limits "
                             f"[{self.v_min}, {self.v_max}] V; nothing was commanded")
        if mode is CellMode.GALVANOSTATIC:
            if abs(command.setpoint) > self.i_max:
                raise LimitError(f"galvanostatic setpoint={command.setpoint} A exceeds the current limit "
                                 f"±{self.i_max} A; nothing was commanded")
            cutoff = command.cutoff
            if cutoff is None:  # the instrument's own limit stops the charge or discharge
                cutoff = self.v_max if command.setpoint >= 0 else self.v_min
            if not (math.isfinite(cutoff) and self.v_min <= cutoff <= self.v_max):
                raise LimitError(f"galvanostatic cutoff={cutoff} V lies outside the voltage limits "
                                 f"[{self.v_min}, {self.v_max}] V; nothing was commanded")
            return replace(command, mode=mode, cutoff=cutoff)
        return replace(command, mode=mode, cutoff=None)


@runtime_checkable
class CellBackend(Protocol):
    """Transport to a potentiostat: apply a checked command, deliver samples as they come."""

    def apply(self, command: CellCommand, compliance: float) -> None: ...

    def subscribe(self, callback: Callable[[CellSample], None]) -> None: ...

    def latest(self) -> CellSample: ...


class Potentiostat(StandardReadable, Movable[CellCommand], Pausable):
    """Readable voltage, current, charge, mode; settable with a `CellCommand`; limits enforced.

    Parameters
    ----------
    backend : the transport (simulated cell or a real driver).
    limits : hard voltage and current limits.
    safe_mode : "open_circuit" or "hold" (potentiostatic at the present voltage): what pause,
        abort and `make_safe` put the cell into.
    """

    def __init__(self, backend: CellBackend, limits: PotentiostatLimits | None = None,
                 safe_mode: str = "open_circuit", name: str = "") -> None:
        if safe_mode not in ("open_circuit", "hold"):
            raise ConfigError(f"potentiostat safe_mode={safe_mode!r}: expected 'open_circuit' or 'hold'")
        self.backend = backend
        self.limits = limits or PotentiostatLimits()
        self.safe_mode = safe_mode
        self._command: CellCommand = OPEN_CIRCUIT
        self._before_pause: CellCommand | None = None
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.voltage, self._set_voltage = soft_signal_r_and_setter(float, units="V", precision=5)
            self.current, self._set_current = soft_signal_r_and_setter(float, units="A", precision=9)
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.charge, self._set_charge = soft_signal_r_and_setter(float, units="C", precision=7)
            self.elapsed, self._set_elapsed = soft_signal_r_and_setter(float, units="s", precision=1)
            self.mode, self._set_mode = soft_signal_r_and_setter(str, initial_value=CellMode.OPEN_CIRCUIT.value)
            self.setpoint, self._set_setpoint = soft_signal_r_and_setter(float)
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.v_min, _ = soft_signal_r_and_setter(float, self.limits.v_min, units="V")
            self.v_max, _ = soft_signal_r_and_setter(float, self.limits.v_max, units="V")
            self.i_max, _ = soft_signal_r_and_setter(float, self.limits.i_max, units="A")
        super().__init__(name=name)
        backend.subscribe(self._on_sample)
        self._on_sample(backend.latest())

    def _on_sample(self, sample: CellSample) -> None:
        self._set_voltage(sample.voltage)
        self._set_current(sample.current)
        self._set_charge(sample.charge)
        self._set_elapsed(sample.time)
        self._set_mode(CellMode(sample.mode).value)
        self._set_setpoint(sample.setpoint)

    def check(self, command: CellCommand) -> CellCommand:
        """Validate a command against the hard limits without sending it (raises LimitError)."""
        return self.limits.check(command)

    @property
    def last_command(self) -> CellCommand:
        return self._command

    def _apply(self, command: CellCommand) -> None:
        checked = self.check(command)
        self.backend.apply(checked, self.limits.i_max)
        self._command = checked
        self._on_sample(self.backend.latest())

    @AsyncStatus.wrap
    async def set(self, value: CellCommand) -> None:
        """Check then command; the status fails with LimitError and nothing is sent if out of range."""
        self._apply(value)

    def safe_command(self) -> CellCommand:
        """The safe state: open circuit, or a potentiostatic hold at the present voltage."""
        if self.safe_mode == "hold":
            v = self.backend.latest().voltage
            v = min(max(v, self.limits.v_min), self.limits.v_max)
            return CellCommand(CellMode.POTENTIOSTATIC, v)
        return OPEN_CIRCUIT

    def make_safe(self) -> None:
        """Put the cell in the configured safe state now (used by pause, abort and cleanup)."""
        self._apply(self.safe_command())

    def pause(self) -> None:
        """RunEngine pause hook: remember the command, go safe."""
        if self._before_pause is None:  # a charge that already hit its cut-off stays stopped
            stopped = self.backend.latest().mode is not self._command.mode
            self._before_pause = OPEN_CIRCUIT if stopped else self._command
        self.make_safe()

    def resume(self) -> None:
        """RunEngine resume hook: restore the command that ran before the pause."""
        if self._before_pause is not None:
            command, self._before_pause = self._before_pause, None
            self._apply(command)
