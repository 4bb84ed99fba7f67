"""The demo's supervisor restarts a dead service a bounded number of times and logs it."""
import time

from opmon.supervisor import Supervisor


def test_a_crashing_child_is_restarted_then_given_up(tmp_path):
    sup = Supervisor(tmp_path / "logs", max_restarts=1)
    sup.start("bad", ["plot", str(tmp_path / "missing.h5")])  # exits 2: no such file
    events: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any("not restarted" in e for e in events):
        events += sup.check()
        time.sleep(0.1)
    assert any("restart 1" in e for e in events)
    assert any("exited with 2; not restarted" in e for e in events)
    assert "no such file" in (tmp_path / "logs" / "bad.log").read_text()
    assert sup.stop_all(timeout_s=5) == {"bad": 2}
