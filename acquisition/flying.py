"""Fly scans: the piezo sweeps a map row at constant speed and triggers the detector at each point.

A step scan pays the RunEngine's per-frame round trip (move, trigger, read, event: 170-450
frames/s); a fly scan pays it per line. The stage flies with ophyd-async's flyable pattern
(`PiezoTrajectory` is a `FlyableLogic`: prepare = go to the line's start, kickoff = start the
trajectory, complete = the line is done); the trajectory backend fires one `TriggerPulse` per
point into a `TriggerCable` that the detector, prepared for external edge triggers, listens
to. The detector records a line whole or not at all (see `detector.FrameRecorder.take_line`),
and the plan saves each line as one StreamDatum range, so a pause or an abort in the middle of
a line never leaves half a line recorded.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ophyd_async.core import FlyableLogic, SignalRW, StandardFlyable

from opmon.errors import ConfigError


@dataclass(frozen=True)
class FlyLine:
    """One row of a map flown at constant speed: `n_points` points `step_um` apart from
    (`x0_um`, `y_um`), map pixels `first_index`, +1, ...; the detector exposes `point_time_s` each."""

    y_um: float
    x0_um: float
    step_um: float
    n_points: int
    first_index: int
    point_time_s: float

    def __post_init__(self) -> None:
        if self.n_points < 1 or self.point_time_s < 0 or self.step_um <= 0:
            raise ConfigError(f"fly line n_points={self.n_points}, point_time_s={self.point_time_s}, "
                              f"step_um={self.step_um}: need >= 1 point, a time >= 0 and a positive step")

    def x(self, k: int) -> float:
        return self.x0_um + k * self.step_um

    @property
    def x_end_um(self) -> float:
        return self.x(self.n_points - 1)


@dataclass(frozen=True)
class TriggerPulse:
    """One detector trigger from the trajectory: which map pixel, and where the stage was."""

    map_index: int
    x_um: float
    y_um: float


class TriggerCable:
    """The trigger line from the motion controller to the detector (both on the RunEngine's loop).

    The detector arms it (dropping pulses of a line that was stopped) and waits for a number of
    pulses; the trajectory fires them."""

    def __init__(self) -> None:
        self._pulses: list[TriggerPulse] = []
        self._event: asyncio.Event | None = None

    def arm(self) -> None:
        self._pulses = []

    def fire(self, pulses: Sequence[TriggerPulse]) -> None:
        self._pulses.extend(pulses)
        if self._event is not None:
            self._event.set()

    async def wait(self, n: int) -> list[TriggerPulse]:
        """The pulses since `arm`, once there are at least `n` (all fired so far, in order)."""
        if self._event is None:
            self._event = asyncio.Event()
        while len(self._pulses) < n:
            self._event.clear()
            await self._event.wait()
        return list(self._pulses)


@runtime_checkable
class TrajectoryBackend(Protocol):
    """A motion controller that flies the piezo along a line and fires the detector's triggers."""

    async def move_to(self, x_um: float, y_um: float) -> None:
        """Go to a line's start (before kickoff)."""
        ...

    async def fly(self, line: FlyLine, cable: TriggerCable) -> None:
        """Sweep the line, firing one pulse per point as the stage passes it; return at its end."""
        ...

    async def stop(self) -> None:
        """Stop moving now (pause, abort)."""
        ...


LINE_MARGIN_S = 10.0      # how much longer than its nominal time a line may take to finish


async def finish(task: asyncio.Task[Any] | None, line: FlyLine | None) -> None:
    """Let a line's task run to its end (cancel it if it overruns its time by LINE_MARGIN_S)."""
    if task is None or task.done():
        return
    timeout = LINE_MARGIN_S + (line.n_points * line.point_time_s if line is not None else 0.0)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        task.cancel()
        await asyncio.wait({task})


class PiezoTrajectory(FlyableLogic[FlyLine, FlyLine]):
    """How the piezo stage flies (ophyd-async 0.21 `FlyableLogic`): one line per prepare/kickoff/complete."""

    def __init__(self, backend: TrajectoryBackend, cable: TriggerCable, x: SignalRW[float], y: SignalRW[float]) -> None:
        self.backend, self.cable, self.x, self.y = backend, cable, x, y
        self._task: asyncio.Task[None] | None = None
        self._line: FlyLine | None = None

    async def on_prepare(self, value: FlyLine) -> FlyLine:
        # A line still in flight (the RunEngine paused, and rewound to fly it again) is flown to
        # its end first, so the statuses of its kickoff and complete end normally.
        await finish(self._task, self._line)
        self._task, self._line = None, value
        await self.backend.move_to(value.x0_um, value.y_um)
        await asyncio.gather(self.x.set(value.x0_um), self.y.set(value.y_um))
        return value

    async def on_kickoff(self, ctx: FlyLine) -> FlyLine:
        self._task = asyncio.create_task(self.backend.fly(ctx, self.cable))
        return ctx

    async def on_complete(self, ctx: FlyLine) -> None:
        task = self._task
        if task is not None:
            await asyncio.wait({task})
            if task.cancelled():
                return                    # stopped (abort): the line ends here, not in error
            task.result()                 # the trajectory's own failure, if any
        await self.x.set(ctx.x_end_um)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self.backend.stop()


class PiezoFlyer(StandardFlyable[FlyLine, FlyLine]):
    """The piezo stage as a flyer: `prepare(FlyLine)`, `kickoff()`, `complete()`.

    A line in flight when the RunEngine pauses is flown to its end (the detector drops it
    unless the plan saved it); the rewound plan prepares it again from its start."""

    def __init__(self, logic: PiezoTrajectory, name: str = "") -> None:
        self._logic = logic
        super().__init__(name=name)

    @property
    def flyable_logic(self) -> PiezoTrajectory:   # type: ignore[override]
        return self._logic



def fly_lines(grid_shape: tuple[int, int], step_um: float, origin_um: tuple[float, float],
              region: tuple[int, int, int, int] | None, point_time_s: float) -> list[FlyLine]:
    """The rows of a map (or of a region r0, r1, c0, c1 of it) as lines, top to bottom."""
    ny, nx = grid_shape
    r0, r1, c0, c1 = (0, ny, 0, nx) if region is None else region
    x0, y0 = origin_um
    return [FlyLine(y_um=y0 + r * step_um, x0_um=x0 + c0 * step_um, step_um=step_um, n_points=c1 - c0,
                    first_index=r * nx + c0, point_time_s=point_time_s) for r in range(r0, r1)]
