"""The cell's vocabulary, shared by the potentiostat device and every backend that drives a cell.

`CellMode` says what the potentiostat does to the cell and `CellSample` is one reading of it.
They live in acquisition, beside the device that commands and reads the cell, so a backend
(the simulated cell in `opmon.simulators`, a vendor driver at the beamline) imports them from
here and acquisition never imports a simulator.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class CellMode(str, enum.Enum):
    """What the potentiostat does to the cell."""

    GALVANOSTATIC = "galvanostatic"  # setpoint is a current (A), positive = charge
    POTENTIOSTATIC = "potentiostatic"  # setpoint is a voltage (V)
    OPEN_CIRCUIT = "open_circuit"  # no current, voltage measured
    HIGH_IMPEDANCE = "high_impedance"  # output disconnected while imaging (seed 001)


@dataclass(frozen=True)
class CellSample:
    """One reading of the cell, in the backend's time (s since its clock started)."""

    time: float
    voltage: float
    current: float
    charge: float  # coulombs passed since the start, positive = charged
    x: float  # lithium content (truth, not measurable by a potentiostat)
    mode: CellMode
    setpoint: float
    cutoff_reached: bool
