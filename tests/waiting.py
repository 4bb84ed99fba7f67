"""Bounded waits for the tests: `until` is the product's own bounded poll (opmon.waiting);
`stop_processes` ends the services a test started."""
from __future__ import annotations

import signal
import subprocess

from opmon.waiting import until

__all__ = ["stop_processes", "until"]


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
