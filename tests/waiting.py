"""Bounded waits for the tests: until something observable happens, or until processes stop."""
from __future__ import annotations

import signal
import subprocess
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


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """SIGTERM every process still running (services flush and close), SIGKILL one that takes
    longer than `timeout_s`: a failing test leaves no service behind."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
