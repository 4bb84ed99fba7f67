"""The piezo stage and the diffractometer circles as small readable, movable devices.

Each axis is a `SignalRW[float]`, so plans move them with `bps.mv(stage.x, v)` and an EPICS
motor record can replace a soft axis without touching a plan. Soft axes refuse positions
beyond their travel with `LimitError`, before anything moves.
"""
from __future__ import annotations

from collections.abc import Mapping

from ophyd_async.core import SignalRW, StandardReadable, soft_signal_rw
from ophyd_async.core import StandardReadableFormat as Format

from opmon.acquisition.flying import PiezoFlyer, PiezoTrajectory, TrajectoryBackend, TriggerCable
from opmon.errors import LimitError

Travel = tuple[float, float]


class Axis:
    """Travel limits of one soft axis, checked by `check` before a plan starts."""

    def __init__(self, name: str, signal: SignalRW[float], travel: Travel, units: str) -> None:
        self.name, self.signal, self.travel, self.units = name, signal, travel, units

    def check(self, value: float) -> float:
        lo, hi = self.travel
        if not lo <= value <= hi:
            raise LimitError(f"{self.signal.name or self.name}={value} {self.units} lies outside its travel [{lo}, {hi}] {self.units}")
        return float(value)


class _Axes(StandardReadable):
    _axes: dict[str, Axis]

    def check(self, **positions: float) -> None:
        """Raise LimitError if any named position is beyond its axis travel."""
        for key, value in positions.items():
            if key not in self._axes:
                raise LimitError(f"{self.name}: no axis named {key!r}; axes are {sorted(self._axes)}")
            self._axes[key].check(value)

    def axis_signals(self) -> Mapping[str, SignalRW[float]]:
        return {k: a.signal for k, a in self._axes.items()}


class PiezoStage(_Axes):
    """Sample scanning stage (x, y) in micrometres; `flyer` flies it along map rows (None: step only)."""

    def __init__(self, travel_um: Travel = (-50.0, 50.0), name: str = "",
                 trajectory: TrajectoryBackend | None = None, trigger_out: TriggerCable | None = None) -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.x = soft_signal_rw(float, 0.0, units="um", precision=4)
            self.y = soft_signal_rw(float, 0.0, units="um", precision=4)
        # with a motion controller that flies it and a trigger line to the detector: fly scans
        self.flyer: PiezoFlyer | None = None
        if trajectory is not None and trigger_out is not None:
            self.flyer = PiezoFlyer(PiezoTrajectory(trajectory, trigger_out, self.x, self.y))
        super().__init__(name=name)
        self._axes = {"x": Axis(f"{name}-x", self.x, travel_um, "um"), "y": Axis(f"{name}-y", self.y, travel_um, "um")}


class Diffractometer(_Axes):
    """Sample circles eta, phi and detector circles nu, delta (SCIENCE.md §2), in degrees."""

    def __init__(self, eta: float = 0.0, phi: float = 0.0, nu: float = 0.0, delta: float = 0.0,
                 travel_deg: Travel = (-180.0, 180.0), name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.eta = soft_signal_rw(float, eta, units="deg", precision=5)
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.phi = soft_signal_rw(float, phi, units="deg", precision=5)
            self.nu = soft_signal_rw(float, nu, units="deg", precision=5)
            self.delta = soft_signal_rw(float, delta, units="deg", precision=5)
        super().__init__(name=name)
        self._axes = {k: Axis(f"{name}-{k}", getattr(self, k), travel_deg, "deg") for k in ("eta", "phi", "nu", "delta")}
