"""Ctrl-C, SIGTERM and SIGHUP for `opmon demo`: a safe pause first, a safe stop second.

The terminal's Ctrl-C reaches only `opmon demo` (its services run in their own session), and
this is where it is decided what it means:

* during the run, the first Ctrl-C asks the RunEngine for a deferred pause (the frame being
  taken completes; the cell keeps its mode) and says so in one line; the next one, or
  SIGTERM/SIGHUP at any time, aborts the run through the RunEngine (its cleanup leaves the
  cell safe) and starts the orderly shutdown;
* after the run (the dashboard stays up), one Ctrl-C or SIGTERM ends the program.

Signal handlers only put the signal on a queue (SimpleQueue.put is reentrant); a thread acts
on it, so printing and RunEngine calls never run inside a handler.
"""
from __future__ import annotations

import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from opmon.errors import OpmonError
from opmon.waiting import until

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SOFT_STOP_S = 2.0     # how long a stop waits for the plan's next checkpoint before pausing hard


def say(message: str) -> None:
    """One line on stderr, where a user at the terminal looks for what just happened."""
    print(f"opmon demo: {message}", file=sys.stderr, flush=True)


class StopControl:
    """The demo's signal policy over a `RunEngineSteering` (pause/abort through the RunEngine).

    Parameters
    ----------
    steering
        The acquisition's steering adapter (`pause`, `abort`, and its `RE`).
    resume_hint
        How to resume a paused run, for the one-line message ("from the dashboard").
    """

    def __init__(self, steering: Any, resume_hint: str = "resume from the dashboard") -> None:
        self.steering = steering
        self.resume_hint = resume_hint
        self.phase = "starting"           # starting -> run -> (stopping | after)
        self.stop_reason: str | None = None
        self.stop_requested = threading.Event()
        self.end_requested = threading.Event()   # "after" phase: leave the dashboard
        self.quit = threading.Event()            # either of the two: stop waiting, stop the services
        self.stop_time = 0.0                     # time.monotonic() of the stop
        self.run_over = threading.Event()
        self._ctrl_c = 0                  # Ctrl-C since the run last (re)started running
        self._told_stopping = False
        self._queue: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self._previous: dict[int, Any] = {}
        self._thread = threading.Thread(target=self._serve, name="opmon-stop-control", daemon=True)
        self._lock = threading.Lock()
        RE = steering.RE
        chained: Callable[[str, str], None] | None = RE.state_hook

        def on_state(new: str, old: str) -> None:
            if new == "running" and old == "paused":
                self._ctrl_c = 0          # resumed: the next Ctrl-C pauses again
            if chained is not None:
                chained(new, old)

        RE.state_hook = on_state

    # -- installation -----------------------------------------------------------------------
    def install(self) -> StopControl:
        """Take over SIGINT, SIGTERM and SIGHUP (main thread only) and start the worker."""
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handler)
        self._thread.start()
        return self

    def restore(self) -> None:
        """Give the signals back and end the worker (signals arriving now get the old handlers)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self._queue.put(("close", ""))

    def _handler(self, signum: int, frame: object) -> None:
        self._queue.put(("signal", signal.Signals(signum).name))

    # -- what the owner tells us ---------------------------------------------------------------
    def running(self) -> None:
        """The RunEngine is about to run the plan."""
        with self._lock:
            if self.phase == "starting":
                self.phase = "run"

    def finished(self) -> None:
        """The plan returned: from now on one Ctrl-C ends the program."""
        self.run_over.set()
        with self._lock:
            if self.phase in ("starting", "run"):
                self.phase = "after"

    def request_stop(self, reason: str) -> None:
        """Stop as on SIGTERM (a service gone for good, say); callable from any thread."""
        self._queue.put(("stop", reason))

    # -- the worker --------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            kind, what = self._queue.get()
            if kind == "close":
                return
            try:
                if kind == "signal" and what == "SIGINT":
                    self._on_ctrl_c()
                elif kind == "signal":
                    self._stop(f"{what} received")
                else:
                    self._stop(what)
            except Exception:     # the policy must outlive any one failure
                log.exception("stop control: handling %s %s failed", kind, what)

    def _on_ctrl_c(self) -> None:
        phase = self.phase
        if phase == "starting":
            self._stop("Ctrl-C before the run started")
        elif phase == "after":
            self._stop("Ctrl-C")
        elif phase == "stopping":
            if not self._told_stopping:
                self._told_stopping = True
                say("already stopping safely; the summary follows in a few seconds")
        elif self._ctrl_c == 0:
            self._ctrl_c = 1
            try:
                self.steering.pause()
                say(f"Ctrl-C: pausing at the next safe point. Ctrl-C again to stop safely, or {self.resume_hint}")
            except OpmonError:
                say(f"Ctrl-C: the run is {self.steering.RE.state}. Ctrl-C again to stop safely, or {self.resume_hint}")
        else:
            self._stop("second Ctrl-C")

    def _pause_softly(self) -> None:
        """A deferred pause before the abort: the plan stops right after the frame it is taking,
        so every frame sent has its event in the documents. Only if no checkpoint comes within
        `SOFT_STOP_S` (the plan is waiting for something) does the abort pause it hard."""
        RE = self.steering.RE
        if RE.state != "running":
            return
        try:
            self.steering.pause()
        except OpmonError:
            return
        until(lambda: RE.state != "running", SOFT_STOP_S, interval_s=0.02, cancel=self.run_over)

    def _stop(self, reason: str) -> None:
        with self._lock:
            if self.phase == "stopping":
                return
            after, self.phase = self.phase == "after", "stopping"
            self.stop_reason, self.stop_time = reason, time.monotonic()
        if after:
            say(f"{reason}: stopping the services")
            self.end_requested.set()
            self.quit.set()
            return
        say(f"{reason}: aborting the run safely, archiving the frames in flight, stopping every service")
        self.stop_requested.set()
        self.quit.set()
        self._pause_softly()
        # The RunEngine may not be running yet (or be between states): retry until it takes
        # the abort or the plan is over.
        while not self.run_over.is_set():
            try:
                self.steering.abort(reason)
                return
            except OpmonError:
                self.run_over.wait(0.1)
