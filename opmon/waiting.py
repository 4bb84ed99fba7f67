"""One bounded poll: wait until a condition observed from outside holds, or give up after a
deadline, instead of a hand-written `while ...: time.sleep(...)` in each place that waits.

Used wherever a loop polls something it cannot be notified of (files another process writes,
a socket that starts listening, a RunEngine's state, processes appearing in /proc). Product
packages may import it (it imports nothing of opmon).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable


def until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05,
          cancel: threading.Event | None = None) -> bool:
    """True as soon as `predicate()` is true; False once `timeout_s` seconds have passed or
    `cancel` is set (the predicate is checked once more then, so a condition met during the
    last interval still counts).

    Parameters
    ----------
    predicate
        Called every `interval_s` seconds; its truth value is what is waited for.
    timeout_s
        Longest wait in seconds (monotonic clock).
    interval_s
        Pause between two checks, in seconds; a set `cancel` ends the pause at once.
    cancel
        Optional event that stops the wait early (a user's Ctrl-C, a service that died).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (cancel is not None and cancel.is_set()):
        if predicate():
            return True
        pause = min(interval_s, max(0.0, deadline - time.monotonic()))
        if cancel is not None:
            cancel.wait(pause)
        else:
            time.sleep(pause)
    return bool(predicate())
