"""End to end in Debian's chromium: live maps fill in, pause/resume act on the RunEngine, the
token URL leaves a session cookie (HttpOnly, SameSite=Strict) and a URL without the token.

Marked `browser`; skipped only when /usr/bin/chromium or chromedriver is missing
(run scripts/install-browser.sh).
"""
from __future__ import annotations

import pytest

from opmon.benchmarks.browser import Browser, browser_available
from opmon.dashboard.auth import cookie_name

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not browser_available(),
                                 reason="Debian chromium/chromium-driver missing: run scripts/install-browser.sh")]


def _state_shown(browser: Browser) -> str | None:
    text = browser.model_text("status") or ""
    marker = 'data-state="'
    return text.split(marker, 1)[1].split('"', 1)[0] if marker in text else None


def test_pause_resume_from_the_page_acts_on_the_run_engine(experiment, dashboard, token, artifacts):
    b = Browser(1920, 1080)
    try:
        b.get(dashboard.steering_url)
        assert b.driver.current_url == dashboard.url            # redirected: the token left the URL
        cookie = {c["name"]: c for c in b.driver.get_cookies()}[cookie_name(dashboard.port)]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]
        assert b.js("return document.cookie") == ""              # the page's scripts cannot read it
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


def test_without_token_pause_is_refused(experiment, dashboard, token, artifacts):
    b = Browser(1366, 768)
    try:
        b.get(f"{dashboard.url}?token=not-{token}")            # a wrong token: no cookie ...
        assert b.driver.current_url == dashboard.url and b.driver.get_cookies() == []
        b.get(dashboard.url)                                   # ... and no token at all
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


def _drag_box_on_intensity(b: Browser, fx0: float, fy0: float, fx1: float, fy1: float) -> None:
    """Drag with the mouse over the intensity plot, from/to fractions of its data frame."""
    from selenium.webdriver.common.action_chains import ActionChains

    x, y, w, h = b.js("""
        const m = Bokeh.documents[0].get_model_by_name('intensity_fig');
        const v = Bokeh.index.find_one(m);
        const r = v.el.getBoundingClientRect(), f = v.frame.bbox;
        return [r.left + f.left, r.top + f.top, f.width, f.height];""")
    actions = ActionChains(b.driver)
    pointer = actions.w3c_actions.pointer_action
    pointer.move_to_location(int(x + fx0 * w), int(y + fy0 * h))
    pointer.pointer_down()
    for k in range(1, 6):
        pointer.move_to_location(int(x + (fx0 + (fx1 - fx0) * k / 5) * w), int(y + (fy0 + (fy1 - fy0) * k / 5) * h))
    pointer.pointer_up()
    actions.perform()


def test_box_on_intensity_map_sets_the_next_region_and_triggers_change(experiment, dashboard, artifacts):
    b = Browser(1920, 1080)
    try:
        b.get(dashboard.steering_url)
        b.wait_for("the d map to hold data", lambda: b.d_pixels() > 0)
        _drag_box_on_intensity(b, 0.2, 0.3, 0.7, 0.8)       # screen y grows downward
        b.wait_for("the box to be taken", lambda: "Set region" in (b.model_text("feedback") or ""))
        b.click("Set region")
        b.wait_for("the acquisition to accept the region",
                   lambda: "set_region: accepted" in (b.model_text("feedback") or ""))
        b.wait_for("the next map to use the region", lambda: experiment.regions, timeout=60)
        r0, r1, c0, c1 = experiment.regions[-1]
        ny, nx = experiment.map_shape
        assert 0 <= r0 < r1 <= ny and 0 <= c0 < c1 <= nx and (r1 - r0, c1 - c0) != (ny, nx)
        b.input_with_placeholder("thresholds").send_keys("4.75, 4.8\n")
        b.click("Set triggers")
        b.wait_for("the acquisition to accept the rule",
                   lambda: "set_trigger: accepted" in (b.model_text("feedback") or ""))
        b.wait_for("the plan to take the new rule", lambda: experiment.rules, timeout=60)
        assert [r.pending for r in experiment.rules[-1].rules] == [[4.75, 4.8]]
        b.screenshot(str(artifacts / "dashboard_region_1920x1080.png"))
    finally:
        b.quit()


def test_an_automatic_pause_is_undone_from_the_decisions_panel(experiment, dashboard, token, artifacts):
    """A pause an automatic action sent (as the dose watch does) shows in the decisions panel with
    its reason and an undo button; clicking it resumes the RunEngine, and the override switches
    that action off at the acquisition."""
    from selenium.common.exceptions import StaleElementReferenceException

    from opmon.benchmarks.browser import DEEP_FIND_JS
    from opmon.dashboard.control_client import ControlClient

    def click(start: str) -> bool:
        """Click the enabled button whose label starts so; False while there is none (the panel
        re-renders its buttons as decisions change: an element may go stale, then look again)."""
        try:
            found = [e for e in b.js(DEEP_FIND_JS, "button", None)
                     if e.get_attribute("textContent").strip().startswith(start) and e.get_attribute("disabled") is None]
            if found:
                found[0].click()
            return bool(found)
        except StaleElementReferenceException:
            return False
    b = Browser(1920, 1080)
    client = ControlClient(experiment.control.endpoint)
    try:
        b.get(dashboard.steering_url)
        b.wait_for("the run to publish", lambda: _state_shown(b) == "running")
        assert client.request("pause", token, reason="dose limit: 2e8 photons (test)", automatic="dose")["ok"]
        b.wait_for("the RunEngine to pause", lambda: experiment.RE.state == "paused")
        b.wait_for("the pause and its reason in the decisions panel",
                   lambda: 'data-decision="pause"' in (b.model_text("decisions") or "")
                   and "2e8 photons (test)" in b.model_text("decisions"))
        b.wait_for("the override button", lambda: click("Disable dose actions"))
        b.wait_for("the switch at the acquisition", lambda: not experiment.steering.allows("dose"))
        b.wait_for("the undo button", lambda: click("Undo: resume"))
        b.wait_for("the RunEngine to run again", lambda: experiment.RE.state == "running")
        b.wait_for("the pause row to go", lambda: 'data-decision="pause"' not in (b.model_text("decisions") or ""))
        b.screenshot(str(artifacts / "dashboard_undo_1920x1080.png"))
    finally:
        client.close()
        b.quit()
