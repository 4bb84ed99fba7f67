"""A simulated piezo motion controller: flies a line and fires the detector's trigger at each point.

It paces the pulses by the wall clock at the line's `point_time_s` (several pulses per event
loop turn when the points come faster than the loop turns; all at once for 0), so a simulated
fly scan runs at the speed of the detector it simulates.
"""
from __future__ import annotations

import asyncio
import time

from opmon.acquisition.flying import FlyLine, TriggerCable, TriggerPulse

TURN_S = 0.001     # longest wait between two batches of pulses


class SimPiezoTrajectory:
    """`TrajectoryBackend` of the simulated beamline (moves are instantaneous)."""

    def __init__(self) -> None:
        self.lines_flown = 0
        self.stopped = 0

    async def move_to(self, x_um: float, y_um: float) -> None:
        await asyncio.sleep(0)

    async def fly(self, line: FlyLine, cable: TriggerCable) -> None:
        t0 = time.monotonic()
        fired = 0
        while fired < line.n_points:
            if line.point_time_s <= 0:
                due = line.n_points
            else:
                due = min(line.n_points, int((time.monotonic() - t0) / line.point_time_s) + 1)
            if due > fired:
                cable.fire([TriggerPulse(line.first_index + k, line.x(k), line.y_um) for k in range(fired, due)])
                fired = due
            if fired < line.n_points:
                await asyncio.sleep(min(TURN_S, line.point_time_s))
        self.lines_flown += 1

    async def stop(self) -> None:
        self.stopped += 1
