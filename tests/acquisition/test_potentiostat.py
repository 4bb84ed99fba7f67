"""The potentiostat device: readings, limits that refuse before commanding, pause/resume hooks."""
from __future__ import annotations

import bluesky.plan_stubs as bps
import pytest
from bluesky.utils import FailedStatus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opmon.acquisition.mapping import MapGrid
from opmon.acquisition.plans import potentiostatic_steps, set_cell
from opmon.acquisition.potentiostat import CellCommand, PotentiostatLimits
from opmon.errors import ConfigError, LimitError
from opmon.acquisition.cell_state import CellMode


def test_readings_follow_the_cell(RE, make_beamline) -> None:
    bl = make_beamline(acceleration=600.0)
    RE(bps.mv(bl.potentiostat, CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15))))

    def read_twice():
        first = yield from bps.read(bl.potentiostat)
        yield from bps.sleep(0.2)
        second = yield from bps.read(bl.potentiostat)
        return first, second

    first, second = RE(read_twice()).plan_result
    assert second["potentiostat-elapsed"]["value"] > first["potentiostat-elapsed"]["value"]
    assert second["potentiostat-charge"]["value"] > first["potentiostat-charge"]["value"] >= 0
    assert second["potentiostat-mode"]["value"] == "galvanostatic"
    assert second["potentiostat-current"]["value"] == pytest.approx(bl.c_rate(1 / 15), rel=1e-3)


@pytest.mark.parametrize("command, field", [
    (CellCommand(CellMode.POTENTIOSTATIC, 5.2), "potentiostatic setpoint=5.2 V"),
    (CellCommand(CellMode.POTENTIOSTATIC, 2.0), "potentiostatic setpoint=2.0 V"),
    (CellCommand(CellMode.GALVANOSTATIC, 5e-3), "galvanostatic setpoint=0.005 A"),
    (CellCommand(CellMode.GALVANOSTATIC, 1e-5, cutoff=5.1), "cutoff=5.1 V"),
    (CellCommand(CellMode.POTENTIOSTATIC, float("nan")), "not a finite"),
])
def test_setpoint_beyond_a_limit_fails_before_anything_is_commanded(RE, make_beamline, command, field) -> None:
    bl = make_beamline()
    before = list(bl.cell.commands)
    with pytest.raises(LimitError, match=field):
        RE(set_cell(bl.potentiostat, command))
    with pytest.raises(FailedStatus) as info:  # the device refuses too, even without the plan's check
        RE(bps.mv(bl.potentiostat, command))
    assert isinstance(info.value.__cause__, LimitError)
    assert bl.cell.commands == before and bl.cell.mode is CellMode.OPEN_CIRCUIT


def test_galvanostatic_cutoff_defaults_to_the_voltage_limit() -> None:
    limits = PotentiostatLimits(v_min=3.0, v_max=4.9, i_max=1e-3)
    assert limits.check(CellCommand(CellMode.GALVANOSTATIC, 1e-5)).cutoff == 4.9
    assert limits.check(CellCommand(CellMode.GALVANOSTATIC, -1e-5)).cutoff == 3.0


def test_pause_goes_safe_and_resume_restores(make_beamline) -> None:
    bl = make_beamline(safe_mode="hold")
    pot = bl.potentiostat
    charge = CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15))
    pot._apply(charge)
    pot.pause()
    assert bl.cell.mode is CellMode.POTENTIOSTATIC  # hold at the present voltage
    assert bl.cell.setpoint == pytest.approx(bl.backend.latest().voltage, abs=5e-3)
    pot.resume()
    assert bl.cell.mode is CellMode.GALVANOSTATIC and bl.cell.setpoint == charge.setpoint
    with pytest.raises(ConfigError, match="safe_mode='off'"):
        type(pot)(bl.backend, safe_mode="off")


commands = st.one_of(
    st.builds(CellCommand, st.just(CellMode.POTENTIOSTATIC), st.floats(2.0, 6.0)),
    st.builds(CellCommand, st.just(CellMode.GALVANOSTATIC), st.floats(-3e-3, 3e-3),
              st.one_of(st.none(), st.floats(2.0, 6.0))),
    st.builds(CellCommand, st.sampled_from([CellMode.OPEN_CIRCUIT, CellMode.HIGH_IMPEDANCE]), st.floats(-10, 10)),
)


def test_random_plans_never_command_past_a_limit(RE, make_beamline) -> None:
    bl = make_beamline(setup=dict(map_shape=(1, 1), n_angles=1), acceleration=2000.0)
    lim = bl.potentiostat.limits
    grid = MapGrid((1, 1), 0.1)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(sequence=st.lists(commands, min_size=1, max_size=4), steps=st.lists(st.floats(2.5, 5.5), min_size=1, max_size=3))
    def check(sequence: list[CellCommand], steps: list[float]) -> None:
        n_before = len(bl.cell.commands)
        ok = all(lim.v_min <= v <= lim.v_max for v in steps)
        try:
            RE(potentiostatic_steps(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector, steps=steps,
                                    current_cutoff_a=1e-5, timeout_s=30.0, grid=grid, etas=[bl.etas()[0]]))
            assert ok
        except LimitError:
            assert not ok and len(bl.cell.commands) == n_before  # refused before anything was sent
        for command in sequence:
            try:
                RE(set_cell(bl.potentiostat, command))
            except LimitError:
                pass
        for _, mode, setpoint, cutoff in bl.cell.commands:
            if mode is CellMode.POTENTIOSTATIC:
                assert lim.v_min <= setpoint <= lim.v_max
            if mode is CellMode.GALVANOSTATIC:
                assert abs(setpoint) <= lim.i_max and cutoff is not None and lim.v_min <= cutoff <= lim.v_max
        assert bl.cell.compliance is None or bl.cell.compliance <= lim.i_max

    check()
