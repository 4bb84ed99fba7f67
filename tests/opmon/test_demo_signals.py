"""The demo's signal policy on a real RunEngine, with real signals sent to this process: the first
Ctrl-C pauses, the next one aborts; a resume starts the count again; SIGTERM aborts at once;
after the run one Ctrl-C ends it."""
from __future__ import annotations

import os
import signal
import threading

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine

from opmon.demo_signals import StopControl
from opmon.acquisition.steering import RunEngineSteering
from tests.waiting import until


def _plan(n: int = 5000):
    yield from bps.open_run()
    for _ in range(n):
        yield from bps.checkpoint()
        yield from bps.sleep(0.005)
    yield from bps.close_run()


def _until(predicate, timeout=30.0) -> bool:
    return until(predicate, timeout)


@pytest.fixture
def steering():
    RE = RunEngine({}, context_managers=[])
    stops: list[dict] = []
    RE.subscribe(lambda name, doc: stops.append(doc) if name == "stop" else None)
    s = RunEngineSteering(RE)
    s.stops = stops
    yield s


def _run_with(steering, script) -> tuple[str, StopControl]:
    """Run the plan in this (main) thread while `script(control)` sends signals from another."""
    control = StopControl(steering).install()
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            script(control)
        except BaseException as exc:       # reported by the test, not lost in the thread
            errors.append(exc)
            steering.abort("test failed")

    try:
        control.running()
        t = threading.Thread(target=drive, daemon=True)
        t.start()
        status = steering.run(_plan())
        control.finished()
        t.join(30)
    finally:
        control.restore()
    if errors:
        raise errors[0]
    return status, control


def test_first_ctrl_c_pauses_a_resume_rearms_it_the_second_aborts(steering, capsys):
    RE = steering.RE
    seen: list[str] = []

    def script(control: StopControl) -> None:
        assert _until(lambda: RE.state == "running")
        os.kill(os.getpid(), signal.SIGINT)
        assert _until(lambda: RE.state == "paused")
        seen.append("paused")
        steering.resume()                                  # as the dashboard does
        assert _until(lambda: RE.state == "running")
        os.kill(os.getpid(), signal.SIGINT)                # first again after a resume: pause, not stop
        assert _until(lambda: RE.state == "paused")
        assert not control.stop_requested.is_set()
        seen.append("paused again")
        os.kill(os.getpid(), signal.SIGINT)

    status, control = _run_with(steering, script)
    assert seen == ["paused", "paused again"]
    assert status == "abort" and steering.stops[-1]["exit_status"] == "abort"
    assert control.stop_reason == "second Ctrl-C" and control.stop_requested.is_set()
    err = capsys.readouterr().err
    assert err.count("Ctrl-C again to stop safely, or resume from the dashboard") == 2
    assert "opmon demo: second Ctrl-C: aborting the run safely" in err


def test_sigterm_aborts_at_once(steering, capsys):
    def script(control: StopControl) -> None:
        assert _until(lambda: steering.RE.state == "running")
        os.kill(os.getpid(), signal.SIGTERM)

    status, control = _run_with(steering, script)
    assert status == "abort" and control.stop_reason == "SIGTERM received"
    assert steering.stops[-1]["exit_status"] == "abort"


def test_after_the_run_one_ctrl_c_ends_it(steering, capsys):
    control = StopControl(steering).install()
    try:
        control.running()
        control.finished()
        os.kill(os.getpid(), signal.SIGINT)
        assert control.end_requested.wait(10) and control.quit.is_set()
        assert not control.stop_requested.is_set()      # nothing to abort
    finally:
        control.restore()
    assert "opmon demo: Ctrl-C: stopping the services" in capsys.readouterr().err
