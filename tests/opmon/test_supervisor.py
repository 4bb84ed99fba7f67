"""The demo's supervisor: crashed services come back, stopped or misconfigured ones do not, one that
keeps dying is given up, and the owner hears of every service gone for good. Real `opmon`
child processes and real signals."""
from __future__ import annotations

import os
import signal
from pathlib import Path

from opmon.supervisor import Supervisor
from tests.waiting import until


def _service(tmp_path: Path) -> list[str]:
    """A long-running `opmon` service that binds no fixed port: a dashboard on a port it picks,
    following channels nobody serves (it only connects to them)."""
    path = tmp_path / "dashboard.toml"
    names = ("display_live", "display_acquisition", "display_archive", "control")
    # distinct ports (the config refuses two channels on one port), low ones nobody serves here
    path.write_text("[ports]\n" + "".join(f"{name} = {port}\n" for port, name in enumerate(names, start=1)))
    return ["dashboard", "--config", str(path), "--port", "0"]


def _ready(sup: Supervisor, name: str) -> bool:
    """The service printed its URL: it runs its loop, its signal handlers installed."""
    return "opmon dashboard (read-only)" in (sup.log_dir / f"{name}.log").read_text()


def _until(predicate, timeout=60.0) -> bool:
    return until(predicate, timeout)


def test_a_killed_child_is_restarted_in_its_own_session(tmp_path):
    down: list[str] = []
    sup = Supervisor(tmp_path / "logs", on_down=lambda name, why: down.append(why))
    try:
        sup.start("dashboard", _service(tmp_path))
        first = sup.pid("dashboard")
        assert os.getsid(first) == first != os.getsid(0)   # the terminal's Ctrl-C cannot reach it
        os.kill(first, signal.SIGKILL)
        events: list[str] = []
        assert _until(lambda: bool(events.extend(sup.check()) or events))
        assert events == ["dashboard killed by SIGKILL; restart 1"]
        assert sup.pid("dashboard") not in (None, first)
        assert _until(lambda: _ready(sup, "dashboard"))
        assert not down
    finally:
        codes = sup.stop_all(timeout_s=20)
    assert codes["dashboard"] == 128 + signal.SIGTERM     # it handled the stop and closed cleanly


def test_a_child_stopped_by_a_signal_is_not_restarted_and_the_owner_hears_of_it(tmp_path):
    down: list[str] = []
    sup = Supervisor(tmp_path / "logs", on_down=lambda name, why: down.append(why))
    try:
        sup.start("dashboard", _service(tmp_path))
        assert _until(lambda: _ready(sup, "dashboard"))
        os.kill(sup.pid("dashboard"), signal.SIGTERM)     # stopped from outside, not by the supervisor
        assert _until(lambda: bool(sup.check()) or bool(down))
        assert sup.pid("dashboard") is None and sup.children["dashboard"].restarts == 0
        assert down == ["dashboard stopped (exit 143 (stopped on SIGTERM))"]
    finally:
        sup.stop_all(timeout_s=10)


def test_bad_configuration_is_not_restarted_and_its_line_is_passed_on(tmp_path):
    down: list[str] = []
    sup = Supervisor(tmp_path / "logs", on_down=lambda name, why: down.append(why))
    sup.start("bad", ["plot", str(tmp_path / "missing.h5")])  # exits 2: no such file
    sup.watch(0.05)
    try:
        assert _until(lambda: bool(down))
        assert sup.children["bad"].restarts == 0
        assert down[0].startswith("bad failed (exit 2: opmon plot: error:")
        assert "missing.h5" in down[0]
    finally:
        assert sup.stop_all(timeout_s=5) == {"bad": 2}


def test_a_child_that_keeps_dying_right_after_starting_is_given_up(tmp_path):
    down: list[str] = []
    sup = Supervisor(tmp_path / "logs", max_restarts=2, min_uptime_s=600, on_down=lambda name, why: down.append(why))
    events: list[str] = []
    try:
        sup.start("dashboard", _service(tmp_path))
        for _ in range(3):
            os.kill(sup.pid("dashboard"), signal.SIGKILL)
            before = len(events)
            assert _until(lambda: bool(events.extend(sup.check()) or len(events) > before))
    finally:
        sup.stop_all(timeout_s=10)
    assert [e.split("; ")[1] for e in events] == ["restart 1", "restart 2", "not restarted"]
    assert down == ["dashboard keeps failing (killed by SIGKILL, 3 times in a row within 600 s of starting)"]
