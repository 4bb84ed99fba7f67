"""End to end in Debian's chromium: live maps fill in, pause/resume act on the RunEngine.

Marked `browser`; skipped only when /usr/bin/chromium or chromedriver is missing
(run scripts/install-browser.sh).
"""
from __future__ import annotations

import pytest

from dashboard_browser import Browser, browser_available

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not browser_available(),
                                 reason="Debian chromium/chromium-driver missing: run scripts/install-browser.sh")]


def _state_shown(browser: Browser) -> str | None:
    text = browser.model_text("status") or ""
    marker = 'data-state="'
    return text.split(marker, 1)[1].split('"', 1)[0] if marker in text else None


def test_pause_resume_from_the_page_acts_on_the_run_engine(experiment, dashboard, artifacts):
    b = Browser(1920, 1080)
    try:
        b.get(dashboard.steering_url)
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0)
        b.wait_for("the page to show the run running", lambda: _state_shown(b) == "running")
        b.click("Pause")
        b.wait_for("the RunEngine to pause", lambda: experiment.RE.state == "paused")
        b.wait_for("the page to show the pause reported by the acquisition",
                   lambda: _state_shown(b) == "paused")
        rows = experiment.rows_published
        b.wait_for("the feedback line to confirm", lambda: "pause: accepted" in (b.model_text("feedback") or ""))
        assert experiment.rows_published == rows       # paused: the plan publishes nothing
        b.click("Resume")
        b.wait_for("the RunEngine to run again", lambda: experiment.RE.state == "running")
        b.wait_for("new rows after resuming", lambda: experiment.rows_published > rows)
        b.wait_for("the page to show running", lambda: _state_shown(b) == "running")
        b.wait_for("a second map in the gallery", lambda: experiment.maps_done >= 1, timeout=60)
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0)
        b.screenshot(str(artifacts / "dashboard_1920x1080.png"))
        b.viewport(1366, 768)
        b.wait_for("a relayout at laptop size", lambda: b.js("return window.innerWidth") == 1366)
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0)
        b.screenshot(str(artifacts / "dashboard_1366x768.png"))
        assert b.js("return document.documentElement.scrollWidth") <= 1366   # no sideways scrolling
    finally:
        b.quit()


def test_without_token_pause_is_refused(experiment, dashboard, artifacts):
    b = Browser(1366, 768)
    try:
        b.get(dashboard.url)                                   # no ?token=
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0)
        (pause,) = b.buttons("Pause")
        assert pause.get_attribute("disabled") is not None      # the widget is disabled ...
        # ... and even a forged click (enable the model in the page, then click) is refused
        # by the server: the run keeps going.
        b.js("Bokeh.documents[0].get_model_by_name('pause').disabled = false;")
        b.wait_for("the forged enable", lambda: b.buttons("Pause")[0].get_attribute("disabled") is None)
        b.click("Pause")
        b.wait_for("the refusal", lambda: "refused" in (b.model_text("feedback") or ""))
        rows = experiment.rows_published
        b.wait_for("the run to keep publishing", lambda: experiment.rows_published > rows + 2)
        assert experiment.RE.state == "running"
        assert experiment.control.requests == 0                 # nothing was even sent
        b.screenshot(str(artifacts / "dashboard_readonly_1366x768.png"))
    finally:
        b.quit()
