"""The simulated cell: OCV models, galvanostatic plateaus, relaxation, potentiostatic decay, clock."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from opmon.errors import ConfigError
from opmon.acquisition.cell_state import CellMode
from opmon.simulators.cell import CellConfig, CellSimulator, SimClock
from opmon.simulators.ocv import LCO, LMNO, LMO, MATERIALS, OcvCurve, material


@pytest.mark.parametrize("curve", [LMNO, LMO, LCO], ids=lambda c: c.name)
def test_ocv_is_monotone_and_slope_matches_finite_difference(curve: OcvCurve) -> None:
    xs, v = curve.curve(4001)
    assert np.all(np.diff(v) >= -1e-12)  # voltage never falls while charging (x decreasing)
    for x in np.linspace(0.01, 0.99, 37):
        h = 1e-6
        fd = (curve.voltage(x + h) - curve.voltage(x - h)) / (2 * h)
        assert curve.slope(x) == pytest.approx(fd, rel=1e-3, abs=1e-3)


def test_ocv_plateaus_of_the_three_materials() -> None:
    # LMNO: sloping below 4.6 V, plateaus at 4.70 (x 0.9..0.56) and 4.75 V (x 0.44..0.06)
    assert LMNO.voltage(1.0) == pytest.approx(4.05)
    assert LMNO.voltage(0.96) < 4.6
    assert all(abs(LMNO.voltage(x) - 4.70) < 0.006 for x in np.linspace(0.56, 0.9, 20))
    assert all(abs(LMNO.voltage(x) - 4.75) < 0.006 for x in np.linspace(0.06, 0.44, 20))
    assert all(abs(LMO.voltage(x) - 4.0) < 0.01 for x in np.linspace(0.6, 0.9, 10))
    assert all(abs(LMO.voltage(x) - 4.15) < 0.01 for x in np.linspace(0.1, 0.4, 10))
    assert all(abs(LCO.voltage(x) - 3.93) < 0.02 for x in np.linspace(0.75, 0.93, 10))
    assert material("LMNO") is LMNO and set(MATERIALS) == {"lmno", "lmo", "lco"}


def test_bad_material_and_config_name_the_value() -> None:
    with pytest.raises(ConfigError, match="'nmc'"):
        material("nmc")
    with pytest.raises(ConfigError, match="x0=1.5"):
        CellSimulator(CellConfig(x0=1.5))
    with pytest.raises(ConfigError, match="increasing"):
        OcvCurve("bad", x=(0.0, 0.5, 0.4), volts=(4.0, 3.9, 3.8), specific_capacity_mah_g=100)


def _charge(cell: CellSimulator, dt: float = 30.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t, v, x = [], [], []
    while cell.mode is CellMode.GALVANOSTATIC and cell.time < 20 * 3600:
        cell.advance(dt)
        s = cell.sample()
        t.append(s.time), v.append(s.voltage), x.append(s.x)
    return np.array(t), np.array(v), np.array(x)


def test_c15_charge_shows_both_plateaus_and_stops_at_cutoff() -> None:
    cell = CellSimulator(CellConfig())
    current = cell.config.c_rate_current(1 / 15)
    assert current / cell.config.active_mass_g * 1e3 == pytest.approx(147 / 15)  # mA/g
    cell.command(CellMode.GALVANOSTATIC, current, cutoff=4.9)
    t, v, x = _charge(cell)
    assert cell.cutoff_reached and cell.mode is CellMode.OPEN_CIRCUIT
    assert 14.0 < t[-1] / 3600 < 15.5  # a C/15 charge lasts about 15 h
    hist, edges = np.histogram(v, bins=np.arange(4.0, 4.95, 0.01))
    top2 = sorted(edges[np.argsort(hist)[-2:]])
    assert top2[0] == pytest.approx(4.70, abs=0.011) and top2[1] == pytest.approx(4.75, abs=0.011)
    # each plateau holds roughly half the lithium
    assert 0.3 < np.mean(np.abs(v - 4.705) < 0.01) < 0.5
    assert 0.3 < np.mean(np.abs(v - 4.752) < 0.01) < 0.5


def test_relaxation_after_current_stops() -> None:
    cell = CellSimulator(CellConfig(voltage_noise_v=0.0))
    cell.command(CellMode.GALVANOSTATIC, cell.config.c_rate_current(1.0))
    cell.advance(600)
    loaded = cell.sample().voltage
    ocv = cell.ocv.voltage(cell.x)
    cell.command(CellMode.OPEN_CIRCUIT)
    just_after = cell.sample().voltage
    cell.advance(cell.config.relaxation_s)
    later = cell.sample().voltage
    cell.advance(10 * cell.config.relaxation_s)
    rested = cell.sample().voltage
    assert loaded > just_after > later > rested  # I·R drops at once, η decays slowly
    assert rested == pytest.approx(ocv, abs=1e-4)
    assert (later - ocv) == pytest.approx((just_after - ocv) / np.e, rel=0.05)


def test_potentiostatic_current_decays_and_respects_compliance() -> None:
    cell = CellSimulator(CellConfig(current_noise_a=0.0))
    cell.command(CellMode.POTENTIOSTATIC, 4.4, compliance=5e-4)
    currents = []
    for _ in range(400):
        cell.advance(30.0)  # large steps: the implicit update must stay stable
        currents.append(cell.current)
    currents = np.array(currents)
    assert currents.max() <= 5e-4 + 1e-15 and currents[0] == pytest.approx(5e-4)
    assert np.all(np.diff(currents[5:]) <= 1e-12)  # monotone decay, no oscillation
    assert abs(currents[-1]) < 1e-6
    assert cell.sample().voltage == pytest.approx(4.4, abs=1e-3)


def test_high_impedance_and_open_circuit_pass_no_current() -> None:
    cell = CellSimulator(CellConfig())
    for mode in (CellMode.HIGH_IMPEDANCE, CellMode.OPEN_CIRCUIT):
        cell.command(mode, 1.0)
        q = cell.charge
        cell.advance(1000)
        assert cell.charge == q and cell.sample().current == 0.0


def test_noise_is_seeded() -> None:
    a, b, c = (CellSimulator(CellConfig(seed=s)) for s in (3, 3, 4))
    va = [a.sample().voltage for _ in range(5)]
    assert va == [b.sample().voltage for _ in range(5)]
    assert va != [c.sample().voltage for _ in range(5)]


def test_clock_steps_are_bounded_and_notify() -> None:
    clock = SimClock(acceleration=1000.0, tick_s=0.005)
    seen: list[float] = []
    clock.listeners.append(seen.append)

    async def run() -> None:
        clock.start()
        while len(seen) < 5:
            await asyncio.sleep(0.005)
        clock.stop()

    asyncio.run(run())
    assert all(0.0 < dt <= 2 * 5.0 + 1e-9 for dt in seen)  # never more than max_lag ticks at once
    assert clock.time == pytest.approx(sum(seen))
    clock.step()
    assert seen[-1] == clock.step_s == 5.0
    with pytest.raises(ConfigError, match="acceleration"):
        SimClock(acceleration=0.0)
