"""The issue's browser tests against the real `opmon demo` (acquisition, live processor, archiver,
dashboard as separate processes): the d map fills in, Pause from the page pauses the RunEngine
(read back over the control channel's `status`, i.e. from the acquisition side), Resume runs it
again, and a page opened without the token cannot pause; and a charge with phase tracking,
proposing (the survey and the proposal show in the decisions panel with their reasons, one click
on its Accept button re-centres, and the maps go on on the next phase's reflection) and
re-centring by itself (`auto`: the survey and the re-centring show, no click asked).
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from opmon.acquisition.survey import two_theta_deg
from opmon.benchmarks.browser import Browser, browser_available
from opmon.dashboard.control_client import ControlClient
from opmon.port_picker import port_block
from opmon.streaming.archive.layout import DOCUMENTS, ENTRY, MAPS, maps_file_name
from opmon.streaming.archive.reader import RunArchive
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
    """A fast charge (maps every 1200 simulated s, 600x) imaging one phase, phase tracking proposing;
    maps until the charge ends (~50 maps, ~100 s), so a slow browser's click still finds the run
    going (the test stops the demo once it has what it checks)."""
    yield from _demo(tmp_path, "--phase-tracking", "propose", "--map-shape", "6", "6", "--angles", "8",
                     "--period", "1200", "--acceleration", "600", "--max-maps", "80")


@pytest.fixture
def auto_phase_demo(tmp_path):
    """The same charge with phase tracking re-centring by itself (`auto`)."""
    yield from _demo(tmp_path, "--phase-tracking", "auto", "--map-shape", "6", "6", "--angles", "8",
                     "--period", "1200", "--acceleration", "600", "--max-maps", "40")


@dataclass
class RunningDemo:
    """A running `opmon demo`: its dashboard URLs, control endpoint and archive directory."""

    urls: dict[str, str]
    control: str
    archive: Path
    proc: subprocess.Popen
    output: deque[str]               # the demo's newest output lines (read on a thread: the pipe never fills)

    def stop(self) -> None:
        """SIGTERM: the demo aborts the run and stops its children (the archive closed); idempotent."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        (self.archive.parent / "demo-output.txt").write_text("".join(self.output))   # for a failed test's reader


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
    output: deque[str] = deque(maxlen=200)
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()
    running = RunningDemo(urls, f"tcp://127.0.0.1:{base + 8}", tmp_path / "archive", proc, output)
    try:
        assert len(urls) == 2, "the demo did not print the dashboard URLs"
        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", http), timeout=1):
                    return True
            except OSError:
                return False

        assert until(listening, 60, interval_s=0.2), "the demo's dashboard never listened"   # it starts after the print
        yield running
    finally:
        running.stop()


def _state_shown(b: Browser) -> str | None:
    text = b.model_text("status") or ""
    return text.split('data-state="', 1)[1].split('"', 1)[0] if 'data-state="' in text else None


def test_demo_pause_resume_and_readonly(demo, artifacts):
    urls, control = demo.urls, demo.control
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


D_LI05 = 2.0184            # Å, the phase the survey should find (opmon.experiment.phase_candidates)
ACCEPT = f"Accept: re-centre on d = {D_LI05:.4f} Å (proposal, "


def _rows(text: str) -> list[tuple[str, str]]:
    """(decision, row text) of the decisions panel's table, newest first."""
    return re.findall(r'<tr data-decision="([^"]+)">(.*?)</tr>', text)


def _steering(run: Path) -> list[tuple[str, str, dict, list]]:
    """(decision, reason, detail, actions) of the archived run's `steering` stream, in order."""
    docs = [json.loads(line) for line in (run / DOCUMENTS).read_text().splitlines()]
    steer = {d["doc"]["uid"] for d in docs if d["name"] == "descriptor" and d["doc"]["name"] == "steering"}
    return [(e["steering-decision"], e["steering-reason"], json.loads(e["steering-detail"]),
             json.loads(e["steering-actions"]))
            for e in (d["doc"]["data"] for d in docs if d["name"] == "event" and d["doc"]["descriptor"] in steer)]


def _archived_map(run: Path, number: int) -> tuple[float, float]:
    """(Σ intensity, mean valid d) of an archived final map."""
    with h5py.File(run / maps_file_name(number), "r") as f:
        maps = f[ENTRY][MAPS]
        d = maps["d_spacing"][()]
        return float(np.nansum(maps["intensity"][()])), float(np.mean(d[np.isfinite(d)]))


def test_demo_phase_tracking_proposal_is_accepted_in_the_browser(phase_demo, artifacts):
    """`--phase-tracking propose` end to end: the imaged reflection fades, the plan surveys for the
    next phase's reflection and proposes re-centring on it; the decisions panel shows the survey
    and the proposal with their reasons and an Accept button (read from the run's `steering`
    stream); one real click re-centres, and the next maps are on the new reflection (d ≈ 2.0184 Å,
    Σ I back up); the archived run's `steering` stream holds the proposal and its acceptance.
    (`auto` mode: the test after this one.)"""
    b = Browser(1920, 1080)
    seen: set[str] = set()        # the panel shows the newest rows: remember what each look found
    after: set[int] = set()       # maps whose row stood above (newer than) the re-centring's

    def shown(*wanted: str) -> bool:
        text = b.model_text("decisions") or ""
        seen.update(w for w in ('data-decision="survey"', "faded", 'data-decision="proposal"', "accept in the dashboard",
                                'data-decision="re-centre"', "accepted in the dashboard") if w in text)
        rows = _rows(text)
        kinds = [k for k, _ in rows]
        if "re-centre" in kinds:
            after.update(int(m) for k, row in rows[:kinds.index("re-centre")] if k == "map"
                         for m in re.findall(r'<td style="color:#555">map (\d+)', row))
        return all(w in seen for w in wanted)
    try:
        b.get(phase_demo.urls["steering"])
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0, timeout=120)
        b.wait_for("the survey with its reason", lambda: shown('data-decision="survey"', "faded"), timeout=240)
        b.wait_for("the proposal with its reason and its Accept button",
                   lambda: shown('data-decision="proposal"', "accept in the dashboard") and b.buttons_starting(ACCEPT),
                   timeout=120)
        assert 'data-decision="re-centre"' not in seen                     # nothing moves unasked
        b.screenshot(str(artifacts / "demo_phase_proposal_1920x1080.png"))
        b.wait_for("one click on Accept", lambda: b.click_starting(ACCEPT))
        b.wait_for("the acquisition's answer", lambda: "accept_proposal: accepted" in (b.model_text("feedback") or ""))
        b.wait_for("the re-centring with its reason", lambda: shown('data-decision="re-centre"', "accepted in the dashboard"),
                   timeout=120)
        b.wait_for("the Accept button to go (the re-centring answered it)", lambda: not b.buttons_starting(ACCEPT))
        b.wait_for("two maps after the re-centring", lambda: shown() and len(after) >= 2, timeout=120)
        run = RunArchive.newest(phase_demo.archive)
        assert run is not None
        first = sorted(after)[:2]
        assert until(lambda: all(run.has_maps(m) for m in first), 60), f"maps {first} never archived"
    finally:
        b.quit()
        phase_demo.stop()
    decided = _steering(run.path)
    kinds = [k for k, _, _, _ in decided]
    survey, recentre = kinds.index("survey"), kinds.index("re-centre")
    proposal = max(i for i, k in enumerate(kinds[:recentre]) if k == "proposal")   # a newer one replaces the open one
    assert survey < kinds.index("survey result") < proposal < recentre, kinds
    assert "faded" in decided[survey][1]
    _, why, where, actions = decided[proposal]
    assert where["d_angstrom"] == D_LI05 and "accept in the dashboard" in why, decided[proposal]
    assert actions == [{"label": f"Accept: re-centre on d = {D_LI05:.4f} Å", "command": "accept_proposal",
                        "args": {"proposal": where["proposal"]}, "awaited": True}]
    _, why, moved, _ = decided[recentre]
    assert why == f"proposal {where['proposal']} accepted in the dashboard", why
    assert moved["answers"] == {"command": "accept_proposal", "args": {"proposal": where["proposal"]}}
    assert abs(moved["delta"] - two_theta_deg(D_LI05, 10000.0)) < 1e-6, moved
    before = [d["map"] for k, _, d, _ in decided[:survey] if k == "map" and run.has_maps(d["map"])]
    later = [d["map"] for k, _, d, _ in decided[recentre:] if k == "map"]
    assert first == later[:2], (first, later)
    sums = {m: _archived_map(run.path, m) for m in before + first}
    peak = max(sums[m][0] for m in before)
    assert sums[before[-1]][0] < 0.3 * peak, sums                        # faded before the survey
    assert max(sums[m][0] for m in first) > 0.6 * peak, sums             # bright again on the new reflection
    assert abs(sums[first[0]][1] - D_LI05) < 1e-3, sums                  # and it is Li0.5's


def test_demo_phase_tracking_auto_recentres_by_itself(auto_phase_demo, artifacts):
    """The imaged reflection fades, the plan surveys for the next phase's reflection and re-centres
    on it by itself (`--phase-tracking auto`, the issue's must-show); the page's decisions panel
    shows the survey, its result and the re-centring with their reasons (read from the run's
    `steering` stream), and maps go on."""
    b = Browser(1920, 1080)
    seen: set[str] = set()      # the panel shows the newest rows: remember what each look found

    def shown(*wanted: str) -> bool:
        text = b.model_text("decisions") or ""
        seen.update(w for w in ('data-decision="survey"', "faded", f"{D_LI05:.4f}", 'data-decision="re-centre"')
                    if w in text)
        return all(w in seen for w in wanted)

    def map_after_recentre() -> bool:       # rows are newest first: a map row above the re-centring's
        text = b.model_text("decisions") or ""
        centre = text.find('data-decision="re-centre"')
        return centre > 0 and 0 <= text.find('data-decision="map"') < centre
    try:
        b.get(auto_phase_demo.urls["read-only"])
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0, timeout=120)
        b.wait_for("the survey with its reason", lambda: shown('data-decision="survey"', "faded"), timeout=240)
        b.wait_for("the survey's result and the re-centring", lambda: shown(f"{D_LI05:.4f}", 'data-decision="re-centre"'),
                   timeout=120)
        assert not b.buttons_starting("Accept:"), "auto mode asked for a click"
        b.wait_for("a map taken after the re-centring", map_after_recentre, timeout=120)
        b.screenshot(str(artifacts / "demo_phase_tracking_1920x1080.png"))
    finally:
        b.quit()
        auto_phase_demo.stop()
    run = RunArchive.newest(auto_phase_demo.archive)
    assert run is not None
    kinds = [k for k, _, _, _ in _steering(run.path)]
    assert "proposal" not in kinds and kinds.index("survey") < kinds.index("re-centre"), kinds
