"""One bounded poll for the tests: wait until something observable happens, never longer."""
from __future__ import annotations

import time
from collections.abc import Callable


def until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> bool:
    """True as soon as `predicate()` is true; False after `timeout_s` (checked once more at the end)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
