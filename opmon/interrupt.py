"""Ctrl-C that stops a command promptly and cleanly.

Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread happens to
be, including inside `__del__` methods and generator finalisers (h5py objects, tqdm), where
it is printed as "Exception ignored ... KeyboardInterrupt" and the run goes on. Here the
first Ctrl-C only sets a flag that the work loops check between blocks (`check`), so the
interrupt surfaces at a known point, temporary files are removed on the way out and the
command exits within a block's time. A second Ctrl-C raises at once, and so does a watchdog
when no check point was reached within `GRACE_S` (the main thread is blocked in a call, e.g. a
send waiting for a receiver): the signal is re-sent, which interrupts the blocking call.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

GRACE_S = 0.5

_requested = threading.Event()
_honoured = threading.Event()


def requested() -> bool:
    """True once Ctrl-C (SIGINT) was pressed inside `interruptible()`."""
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed: call between blocks of work."""
    if _requested.is_set():
        _honoured.set()
        raise KeyboardInterrupt


def _watchdog() -> None:
    if not _honoured.wait(GRACE_S) and _requested.is_set():
        # to the main thread itself: only there does the signal interrupt the blocked system call
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # type: ignore[arg-type]


def _handler(signum: int, frame: FrameType | None) -> None:
    if _requested.is_set():
        _honoured.set()
        raise KeyboardInterrupt  # second Ctrl-C (or the watchdog): now
    _requested.set()
    threading.Thread(target=_watchdog, name="opmon-interrupt-watchdog", daemon=True).start()


@contextmanager
def interruptible() -> Iterator[None]:
    """Defer SIGINT to the next `check()` for the duration (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    _honoured.clear()
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
        check()
    finally:
        signal.signal(signal.SIGINT, previous)
        _honoured.set()  # a late watchdog must not signal the default handler
        _requested.clear()


@contextmanager
def exit_promptly(command: str) -> Iterator[None]:
    """Wrap a command's whole run: after Ctrl-C and the cleanup on the way out, exit now with 130.

    By the time KeyboardInterrupt reaches here every `finally` inside has run (temporary files
    removed, HDF5 files closed). A normal interpreter exit would then still join worker threads
    and tear down numba, ZeroMQ and HDF5, which takes a second or more on a loaded machine; the
    user asked to stop, so the process ends at once.
    """
    try:
        yield
    except KeyboardInterrupt:
        import sys
        print(f"opmon {command}: interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
