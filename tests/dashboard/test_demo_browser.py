"""The issue's browser tests against the real `opmon demo` (acquisition, live processor, archiver,
dashboard as separate processes): the d map fills in, Pause from the page pauses the RunEngine
(read back over the control channel's `status`, i.e. from the acquisition side), Resume runs it
again, and a page opened without the token cannot pause; and a charge with phase tracking whose
survey and re-centring show in the decisions panel with their reasons.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opmon.benchmarks.browser import Browser, browser_available
from opmon.dashboard.control_client import ControlClient
from opmon.port_picker import port_block
from tests.waiting import until

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not browser_available(),
                                 reason="Debian chromium/chromium-driver missing: run scripts/install-browser.sh")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo(tmp_path):
    yield from _demo(tmp_path, "--map-shape", "10", "10", "--max-maps", "50")


@pytest.fixture
def phase_demo(tmp_path):
    """A fast charge (maps every 1200 simulated s, 600x) imaging one phase with phase tracking on."""
    yield from _demo(tmp_path, "--phase-tracking", "auto", "--map-shape", "6", "6", "--angles", "8",
                     "--period", "1200", "--acceleration", "600", "--max-maps", "40")


def _demo(tmp_path, *options: str):
    base = port_block(10)
    http = base + 9
    proc = subprocess.Popen([sys.executable, "-m", "opmon.cli", "demo", "--no-browser", "--archive-dir",
                             str(tmp_path / "archive"), "--port-base", str(base), "--dashboard-port", str(http),
                             *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True, env=dict(os.environ, OPMON_CONTROL_TOKEN=""))
    urls = {}
    deadline = time.monotonic() + 120
    while len(urls) < 2 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        for kind in ("read-only", "steering"):
            if line.startswith(f"dashboard ({kind}):"):
                urls[kind] = line.split()[-1]
    try:
        assert len(urls) == 2, "the demo did not print the dashboard URLs"
        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", http), timeout=1):
                    return True
            except OSError:
                return False

        assert until(listening, 60, interval_s=0.2), "the demo's dashboard never listened"   # it starts after the print
        yield urls, f"tcp://127.0.0.1:{base + 8}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)          # the demo aborts the run and stops its children
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _state_shown(b: Browser) -> str | None:
    text = b.model_text("status") or ""
    return text.split('data-state="', 1)[1].split('"', 1)[0] if 'data-state="' in text else None


def test_demo_pause_resume_and_readonly(demo, artifacts):
    urls, control = demo
    acquisition = ControlClient(control, timeout=5.0)

    def state() -> str:
        return acquisition.request("status", None)["result"]["state"]

    b = Browser(1920, 1080)
    try:
        b.get(urls["steering"])
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0, timeout=120)
        # the plan's decision to take this map, with its reason, from the run's steering stream
        b.wait_for("the decisions panel to show the map's trigger",
                   lambda: 'data-decision="map"' in (b.model_text("decisions") or "")
                   and "voltage threshold" in b.model_text("decisions"), timeout=30)
        b.wait_for("the run to be running", lambda: state() == "running", timeout=60)
        b.click("Pause")
        b.wait_for("the page to report the acquisition's answer",
                   lambda: "pause:" in (b.model_text("feedback") or "") and "waiting" not in b.model_text("feedback"))
        assert "pause: accepted" in b.model_text("feedback"), b.model_text("feedback")
        b.wait_for("the acquisition's RunEngine to pause", lambda: state() == "paused")
        b.wait_for("the page to show the pause", lambda: _state_shown(b) == "paused")
        b.screenshot(str(artifacts / "demo_paused_1920x1080.png"))
        b.click("Resume")
        b.wait_for("the acquisition's RunEngine to run again", lambda: state() == "running")
        b.wait_for("the page to show running", lambda: _state_shown(b) == "running")
        b.screenshot(str(artifacts / "demo_1920x1080.png"))
        b.viewport(1366, 768)
        b.wait_for("a relayout at laptop size", lambda: b.js("return window.innerWidth") == 1366)
        b.screenshot(str(artifacts / "demo_1366x768.png"))

        b.driver.delete_all_cookies()           # another user: this browser's session cookie steers
        b.get(urls["read-only"])
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0, timeout=60)
        (pause,) = b.wait_for("the Pause button", lambda: b.buttons("Pause"))
        assert pause.get_attribute("disabled") is not None
        b.js("Bokeh.documents[0].get_model_by_name('pause').disabled = false;")
        b.wait_for("the forged enable", lambda: b.buttons("Pause")[0].get_attribute("disabled") is None)
        b.click("Pause")
        b.wait_for("the refusal", lambda: "refused" in (b.model_text("feedback") or ""))
        assert state() == "running"
    finally:
        b.quit()
        acquisition.close()


def test_demo_phase_tracking_decisions_show_in_the_dashboard(phase_demo, artifacts):
    """The imaged reflection fades, the plan surveys for the next phase's reflection and re-centres
    on it by itself; the page's decisions panel shows the survey, its result and the re-centring
    with their reasons (read from the run's `steering` stream), and maps go on."""
    urls, control = phase_demo
    b = Browser(1920, 1080)
    try:
        b.get(urls["read-only"])
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0, timeout=120)

        seen: set[str] = set()      # the panel shows the newest rows: remember what each look found

        def shown(*wanted: str) -> bool:
            text = b.model_text("decisions") or ""
            seen.update(w for w in ('data-decision="survey"', "faded", "2.0184", 'data-decision="re-centre"')
                        if w in text)
            return all(w in seen for w in wanted)
        b.wait_for("the survey with its reason", lambda: shown('data-decision="survey"', "faded"), timeout=240)
        b.wait_for("the survey's result and the re-centring", lambda: shown("2.0184", 'data-decision="re-centre"'),
                   timeout=120)

        def map_after_recentre() -> bool:       # rows are newest first: a map row above the re-centring's
            text = b.model_text("decisions") or ""
            centre = text.find('data-decision="re-centre"')
            return centre > 0 and 0 <= text.find('data-decision="map"') < centre
        b.wait_for("a map taken after the re-centring", map_after_recentre, timeout=120)
        b.screenshot(str(artifacts / "demo_phase_tracking_1920x1080.png"))
    finally:
        b.quit()
