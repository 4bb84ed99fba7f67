"""Trigger rules fed with readings of the simulated cell (the steering signals: test_steering_requests)."""
from __future__ import annotations

import pytest

from opmon.acquisition.triggers import (AnyOf, CellReading, PeriodicTrigger, PlateauTrigger, RestTrigger,
                                        VoltageThresholds)
from opmon.errors import ConfigError
from opmon.acquisition.cell_state import CellMode
from opmon.simulators.cell import CellConfig, CellSimulator


def r(t: float, v: float, i: float = 1e-5) -> CellReading:
    return CellReading(time=t, voltage=v, current=i)


def test_thresholds_fire_once_each_in_order() -> None:
    rule = VoltageThresholds([4.3, 4.2])
    fired = [rule.update(r(t, v)) for t, v in enumerate([4.1, 4.19, 4.21, 4.25, 4.31, 4.5, 4.6])]
    assert [f is not None for f in fired] == [False, False, True, False, True, False, False]
    assert [t for t, _ in rule.fired] == [4.2, 4.3]


def test_thresholds_already_passed_at_install_fire_at_once() -> None:
    rule = VoltageThresholds([4.2, 4.3, 4.8])
    reason = rule.update(r(0, 4.5))
    assert reason is not None and "4.3000" in reason
    assert [t for t, _ in rule.fired] == [4.2, 4.3] and rule.pending == [4.8]
    assert rule.update(r(1, 4.6)) is None


def test_discharge_thresholds() -> None:
    rule = VoltageThresholds([3.5, 4.0], direction="discharge")
    assert rule.update(r(0, 4.1)) is None
    assert rule.update(r(1, 3.99)) is not None
    assert rule.update(r(2, 3.4)) is not None
    with pytest.raises(ConfigError, match="direction='up'"):
        VoltageThresholds([4.0], direction="up")
    with pytest.raises(ConfigError, match="thresholds"):
        VoltageThresholds([])


def test_plateau_trigger_on_a_simulated_charge_fires_once_per_plateau() -> None:
    cell = CellSimulator(CellConfig())
    cell.command(CellMode.GALVANOSTATIC, cell.config.c_rate_current(1 / 15), cutoff=4.9)
    rule = PlateauTrigger(max_slope_v_per_s=5e-6, hold_s=300)
    xs = []
    while cell.mode is CellMode.GALVANOSTATIC:
        cell.advance(20.0)
        s = cell.sample()
        if rule.update(CellReading(s.time, s.voltage, s.current)):
            xs.append(s.x)
    assert len(xs) == 2
    assert 0.88 < xs[0] < 0.93 and 0.44 < xs[1] < 0.48


def test_plateau_trigger_installed_on_a_plateau_fires_after_one_hold() -> None:
    rule = PlateauTrigger(max_slope_v_per_s=1e-5, hold_s=100)
    out = [rule.update(r(t, 4.70 + 1e-7 * t)) for t in range(0, 200, 10)]
    assert [i for i, o in enumerate(out) if o] == [10]  # first reading with a full 100 s window


def test_plateau_trigger_ignores_rest_and_rearms_after_a_slope() -> None:
    rule = PlateauTrigger(max_slope_v_per_s=1e-5, hold_s=50)
    assert not any(rule.update(r(t, 4.0, i=0.0)) for t in range(0, 200, 10))  # resting cell
    flat = [rule.update(r(t, 4.7)) for t in range(200, 300, 10)]
    ramp = [rule.update(r(t, 4.7 + 1e-3 * (t - 300))) for t in range(300, 400, 10)]
    flat2 = [rule.update(r(t, 4.8)) for t in range(400, 500, 10)]
    assert sum(map(bool, flat)) == 1 and not any(ramp) and sum(map(bool, flat2)) == 1


def test_periodic_and_rest_triggers() -> None:
    p = PeriodicTrigger(90.0)
    fired = [t for t in range(0, 400, 10) if p.update(r(t, 4.0))]
    assert fired == [0, 90, 180, 270, 360]
    late = PeriodicTrigger(90.0, start_now=False)
    assert [t for t in range(0, 200, 10) if late.update(r(t, 4.0))] == [90, 180]
    rest = RestTrigger(1e-8)
    assert rest.update(r(0, 4.0, 0.0)) is not None  # already resting when installed
    assert rest.update(r(1, 4.0, 1e-5)) is None and rest.update(r(2, 4.0, 1e-5)) is None
    assert rest.update(r(3, 4.0, 0.0)) is not None and rest.update(r(4, 4.0, 0.0)) is None


def test_any_of_feeds_every_rule() -> None:
    a, b = VoltageThresholds([4.5]), PeriodicTrigger(100)
    rule = AnyOf(a, b)
    assert rule.update(r(0, 4.6)) is not None
    assert a.pending == [] and b.next_time == 100


def test_plateau_trigger_does_not_fire_twice_when_the_slope_hovers_around_the_limit() -> None:
    """At a plateau's edge noise lifts the fitted slope just over the limit now and then; that
    must not re-arm the rule (it fired a second map moments after the first, issue 11 item 7).
    A real rise between plateaus (several times the limit) still re-arms it."""
    limit = 1e-5
    rule = PlateauTrigger(max_slope_v_per_s=limit, hold_s=50)
    v, fired = 4.7, []
    for k, slope in enumerate([3.0, 0.5, 1.3, 0.5, 3.0, 0.5]):      # x limit, 100 s each
        for t in range(100 * k, 100 * (k + 1), 10):
            if rule.update(r(t, v)):
                fired.append(k)
            v += slope * limit * 10
    assert fired == [1, 5]
    with pytest.raises(ConfigError, match="rearm_factor"):
        PlateauTrigger(rearm_factor=0.5)
