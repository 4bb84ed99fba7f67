"""Ctrl-C that stops a command promptly and cleanly.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to
be, including inside `__del__` methods and generator finalisers (h5py objects, tqdm), where
it is printed as "Exception ignored ... KeyboardInterrupt" and the run goes on. Here the
first Ctrl-C only sets a flag that the work loops check between blocks (`check`), so the
interrupt surfaces at a known point, temporary files are removed on the way out and the
command exits within a block's time. A second Ctrl-C raises at once.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_requested = threading.Event()


def requested() -> bool:
    """True once Ctrl-C (SIGINT) was pressed inside `interruptible()`."""
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed: call between blocks of work."""
    if _requested.is_set():
        raise KeyboardInterrupt


def _handler(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():
        raise KeyboardInterrupt  # second Ctrl-C: now
    _requested.set()


@contextmanager
def interruptible() -> Iterator[None]:
    """Defer SIGINT to the next `check()` for the duration (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
        check()
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
