"""Debian chromium + chromedriver driven by Selenium, for the dashboard's browser tests and `opmon bench dashboard`.

Only the distribution's browser (scripts/install-browser.sh); never a downloaded build. The
flags keep chromium from reaching for the network, which hangs it on a closed network.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")

#: Find elements through every shadow root (Bokeh 3 widgets live in shadow DOM).
DEEP_FIND_JS = """
const sel = arguments[0], text = arguments[1];
const out = [];
(function walk(root) {
  root.querySelectorAll(sel).forEach(e => out.push(e));
  root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) walk(e.shadowRoot); });
})(document);
return text === null ? out : out.filter(e => e.textContent.trim() === text);
"""

#: Number of finite pixels in the live d-spacing map as the browser holds it.
D_MAP_PIXELS_JS = """
const docs = (window.Bokeh && Bokeh.documents) || [];
if (!docs.length) return -1;
const src = docs[0].get_model_by_name('d_source');
if (!src) return -1;
const img = src.data.image[0];
let n = 0;
const flat = img.length !== undefined && typeof img[0] === 'number' ? img : [].concat(...img);
for (const v of flat) { if (Number.isFinite(v)) n++; }
return n;
"""

#: Text of a named Bokeh model (a Div) as the browser holds it.
MODEL_TEXT_JS = """
const docs = (window.Bokeh && Bokeh.documents) || [];
if (!docs.length) return null;
const m = docs[0].get_model_by_name(arguments[0]);
return m ? m.text : null;
"""


def browser_available() -> bool:
    """True if Debian's chromium and chromedriver are installed."""
    return os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)


class Browser:
    """One headless chromium with a fresh profile and an exact viewport size."""

    def __init__(self, width: int = 1920, height: int = 1080) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="opmon-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in FLAGS + (f"--user-data-dir={self.profile}", f"--window-size={width},{height}"):
            opts.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(30)
        self.viewport(width, height)

    def viewport(self, width: int, height: int) -> None:
        """Make the page see exactly width x height CSS pixels (headless chrome counts chrome UI)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def get(self, url: str) -> None:
        self.driver.get(url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def buttons(self, label: str) -> list[Any]:
        return self.js(DEEP_FIND_JS, "button", label)

    def click(self, label: str) -> None:
        """Click the visible button with this label, as a user would (a real mouse event)."""
        found = self.buttons(label)
        if not found:
            raise AssertionError(f"no button labelled {label!r} on the page")
        found[0].click()

    def buttons_starting(self, prefix: str) -> list[Any]:
        """Visible buttons whose label starts with `prefix` (for labels that end in a time)."""
        from selenium.common.exceptions import StaleElementReferenceException

        found = []
        for e in self.js(DEEP_FIND_JS, "button", None):
            try:
                if e.text.strip().startswith(prefix):
                    found.append(e)
            except StaleElementReferenceException:      # re-drawn meanwhile: looked for again next poll
                continue
        return found

    def click_starting(self, prefix: str) -> bool:
        """Click the first visible button whose label starts with `prefix`, as a user would;
        False when there is none or Bokeh re-drew it under the pointer (poll with `wait_for`)."""
        from selenium.common.exceptions import StaleElementReferenceException

        try:
            self.buttons_starting(prefix)[0].click()
            return True
        except (IndexError, StaleElementReferenceException):
            return False

    def input_with_placeholder(self, words: str) -> Any:
        """The text input whose placeholder contains `words`."""
        found = [e for e in self.js(DEEP_FIND_JS, "input", None) if words in (e.get_attribute("placeholder") or "")]
        if not found:
            raise AssertionError(f"no input with a placeholder containing {words!r}")
        return found[0]

    def d_pixels(self) -> int:
        return int(self.js(D_MAP_PIXELS_JS))

    def model_text(self, name: str) -> str | None:
        return self.js(MODEL_TEXT_JS, name)

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
        """Poll until `predicate()` is truthy; raise AssertionError naming `what` if it never is.

        The timeout only bounds a hung test; nothing asserts on how long it took.
        """
        from selenium.common.exceptions import TimeoutException

        deadline = time.monotonic() + timeout
        while True:
            try:
                value = predicate()
            except TimeoutException:      # a busy page answered a script too late: ask again
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(step)

    def screenshot(self, path: str) -> None:
        self.driver.save_screenshot(path)

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
