"""`--dose-action stop|move`: at the dose limit the watch finishes the series or shifts the scan
region away from the over-dosed positions (pause when the grid leaves no room), through the
token-checked control channel, from real map messages with their dose field; switched off, it
does nothing."""
from __future__ import annotations

import numpy as np
import pytest

from opmon.dose_region import ScanGrid, clear_region, over_dosed
from opmon.dose_watch import DoseWatch
from opmon.processors.dose import DoseGrid
from opmon.processors.maps import MapResult
from opmon.streaming.control import ControlServer
from opmon.streaming.map_messages import encode_map

GRID = ScanGrid((0.5, 0.3), 0.1, (6, 8))      # x0, y0 µm; the dose grid is anchored at 0 µm


class _Steering:
    """Records what the control channel hands on (the RunEngine side: test_decisions_panel, test_plans)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict]] = []

    def pause(self, reason: str = "", automatic: str = "") -> dict:
        self.sent.append(("pause", {"reason": reason, "automatic": automatic}))
        return {}

    def stop(self, reason: str = "") -> dict:
        self.sent.append(("stop", {"reason": reason}))
        return {}

    def set_region(self, reason: str = "", **window: int) -> dict:
        self.sent.append(("set_region", {"reason": reason, **window}))
        return {}

    def status(self) -> dict:
        return {}


def _dose_on_grid(hot: list[tuple[int, int]], photons: float = 2e8) -> DoseGrid:
    """A dose map anchored at 0 µm covering the plan's grid, `photons` at the grid points `hot`."""
    dose = np.zeros((12, 16))
    for r, c in hot:
        dose[r + 3, c + 5] = photons             # grid (r, c) at y = 0.3 + 0.1 r, x = 0.5 + 0.1 c
    return DoseGrid(dose, (0.0, 0.0), 0.1)


def _message(number: int, dose: DoseGrid, run: str = "r1") -> list:
    ones = np.ones((6, 8))
    result = MapResult(d_spacing=2.04 * ones, tilt_altitude=0 * ones, tilt_azimuth=0 * ones, intensity=ones,
                       peak_width=ones, q=np.zeros((6, 8, 3)), mask=np.ones((6, 8), dtype=np.uint8),
                       mean_q=np.zeros(3), frames=np.ones((6, 8), dtype=np.int64))
    return encode_map(result, run=run, map_number=number, final=False, frames=4, n_frames=48, frames_lost=0, dose=dose)


def test_over_dosed_points_and_the_clear_region_the_grid_allows():
    over = over_dosed(_dose_on_grid([(1, 2), (4, 7)]).photons, (0.0, 0.0), 0.1, GRID, 1.5e8)
    assert sorted(zip(*np.nonzero(over))) == [(1, 2), (4, 7)]
    assert clear_region(over, (0, 3, 0, 3)) == (2, 5, 0, 3)           # the nearest 3 x 3 window without them
    assert clear_region(np.zeros((6, 8), bool), None) == (0, 6, 0, 8)
    whole = clear_region(over, None)                                  # no same-size room: the largest clear window
    assert whole is not None and not over[whole[0]:whole[1], whole[2]:whole[3]].any()
    assert (whole[1] - whole[0]) * (whole[3] - whole[2]) == 28        # rows 2-5 x columns 0-6
    assert clear_region(np.ones((6, 8), bool), None) is None          # nowhere to go


@pytest.mark.parametrize("action", ["stop", "move"])
def test_the_watch_stops_or_moves_the_scan_at_the_limit(action):
    steering = _Steering()
    server = ControlServer("tcp://127.0.0.1:0", "tok", steering).start()
    switch = {"dose": True}
    watch = DoseWatch("tcp://127.0.0.1:1", server.endpoint, "tok", limit=1.5e8, action=action, grid=GRID,
                      allowed=lambda name: switch[name])           # messages fed by hand, as the thread would
    try:
        message = _message(0, _dose_on_grid([(1, 2)], photons=1e8))
        watch.on_message(watch_header(message), message[2:])
        assert steering.sent == []                                   # under the limit
        message = _message(1, _dose_on_grid([(1, 2)]))
        watch.on_message(watch_header(message), message[2:])
        if action == "stop":
            ((command, args),) = steering.sent
            assert command == "stop" and "dose limit" in args["reason"] and "stopped" in args["reason"]
        else:
            ((command, args),) = steering.sent
            region = (args["r0"], args["r1"], args["c0"], args["c1"])
            assert command == "set_region" and "scan moved" in args["reason"] and region == watch.region
            assert not (region[0] <= 1 < region[1] and region[2] <= 2 < region[3])   # away from the hot point
            watch.on_message(watch_header(message), message[2:])      # the same dose: behind us, nothing sent
            assert len(steering.sent) == 1
            every = [(r, c) for r in range(6) for c in range(8)]
            message = _message(2, _dose_on_grid(every))                # everything over: no room, pause
            watch.on_message(watch_header(message), message[2:])
            assert steering.sent[-1][0] == "pause" and steering.sent[-1][1]["automatic"] == "dose"
            assert "no clear region" in steering.sent[-1][1]["reason"]
        sent = len(steering.sent)
        switch["dose"] = False                                         # overridden from the dashboard
        message = _message(3, _dose_on_grid([(0, 0), (5, 7)]), run="r2")
        watch.on_message(watch_header(message), message[2:])
        assert len(steering.sent) == sent
    finally:
        watch.close()
        server.close()


def watch_header(message: list) -> dict:
    from opmon.streaming.protocol import unpack
    return unpack(message[1])
