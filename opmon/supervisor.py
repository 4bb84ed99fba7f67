"""Supervised child processes for `opmon demo`: start, watch, restart, stop.

Each service (archiver, live processor, dashboard) runs as its own `opmon <command>` process,
so a crash of one neither takes the others down nor loses acquired data: the supervisor
restarts it (the live processor recovers its map from the archive) and logs to a file per
service.

Who decides when to stop is the supervisor alone: children run in their own session, so the
terminal's Ctrl-C (SIGINT to the foreground process group) never reaches them, and they die
with the supervisor (PR_SET_PDEATHSIG, set by the child: `become_supervised`), so a SIGKILL of
`opmon demo` leaves no service holding its ports. A child that exits because it was asked to
(SIGTERM, SIGINT, SIGHUP) or because its configuration is bad (exit 2, e.g. a port in use) is
not restarted; one that keeps dying soon after each start is given up. Either way `on_down`
tells the owner, who stops the experiment rather than carry on without the service.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUPERVISOR_ENV = "OPMON_SUPERVISOR_PID"
#: Exit statuses of a child that stopped because it was asked to (by a signal).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
CONFIG_ERROR = 2   # what `opmon` returns on bad input: restarting cannot help


def asked_to_stop(returncode: int) -> bool:
    """True for a child killed by, or exiting (128 + signal) after handling, a stop signal."""
    return any(returncode in (-sig, 128 + sig) for sig in STOP_SIGNALS)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    if returncode > 128 and returncode - 128 in set(signal.Signals):
        return f"exit {returncode} (stopped on {signal.Signals(returncode - 128).name})"
    return f"exit {returncode}"


def become_supervised() -> None:
    """In a child started by `Supervisor`: die with the supervisor, and quit at once if it
    already died between fork and now (PR_SET_PDEATHSIG only covers later deaths)."""
    expected = os.environ.pop(SUPERVISOR_ENV, None)
    if not expected:
        return
    from opmon.processors.live.worker import die_with_parent   # the fan-out workers' own mechanism
    die_with_parent()
    if os.getppid() != int(expected):
        os._exit(1)


def stop_on_signals(service: Any) -> Callable[[], int]:
    """SIGTERM, SIGINT and SIGHUP set ``service.stopped``: its loop ends and it flushes and closes
    cleanly (what the supervisor's stop_all relies on for the archiver and the live processor).

    Returns a function giving the exit status once the loop ended: 128 + the signal that
    stopped it (so the supervisor knows it was asked to stop and does not restart it), else 0.
    """
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
        service.stopped = True

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    return lambda: 128 + received[0] if received else 0


@dataclass
class Child:
    """One supervised service."""

    name: str
    argv: list[str]
    restart: bool = True
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    quick_failures: int = 0      # consecutive deaths within `min_uptime_s` of their start
    exit_codes: list[int] = field(default_factory=list)
    down: str | None = None      # why it is not running and will not be restarted


class Supervisor:
    """Starts `opmon` subcommands as child processes and restarts those that crash.

    Parameters
    ----------
    log_dir
        One ``<name>.log`` per child (stdout and stderr).
    max_restarts
        Consecutive quick failures (death within `min_uptime_s` of a start) before a child
        is given up. A child that ran longer than that starts the count again, so a service
        killed now and then (the OOM killer, `kill -9` in a reliability run) keeps coming back.
    on_down
        Called (from the watch thread) with the child's name and a one-line reason when a child
        is gone for good while not stopping.
    """

    def __init__(self, log_dir: str | Path, max_restarts: int = 5, min_uptime_s: float = 10.0,
                 on_down: Callable[[str, str], None] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_restarts = max_restarts
        self.min_uptime_s = min_uptime_s
        self.on_down = on_down
        self.children: dict[str, Child] = {}
        self.stopping = False
        self._lock = threading.RLock()
        self._watch_stop = threading.Event()
        self._watch: threading.Thread | None = None

    def _spawn(self, child: Child) -> None:
        logfile = open(self.log_dir / f"{child.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **child.env, SUPERVISOR_ENV: str(os.getpid())}
        # own session: the terminal's Ctrl-C goes to `opmon demo` only, which decides
        child.process = subprocess.Popen([sys.executable, "-m", "opmon.cli", *child.argv], stdout=logfile,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        child.started_at = time.monotonic()
        logfile.close()
        log.info("started %s (pid %d): opmon %s", child.name, child.process.pid, " ".join(child.argv))

    def start(self, name: str, argv: list[str], restart: bool = True, env: dict[str, str] | None = None) -> Child:
        """Start `opmon <argv>`; `env` adds variables (secrets go there, not on the command line).

        Children die with the thread that started them (PR_SET_PDEATHSIG): call this from the
        main thread, as restarts come from the watch thread, which lives until `stop_all`.
        """
        child = Child(name, argv, restart, dict(env or {}))
        with self._lock:
            self.children[name] = child
            self._spawn(child)
        return child

    def last_line(self, name: str) -> str:
        """The last non-empty line of a child's log: usually why it stopped."""
        try:
            lines = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return next((line.strip() for line in reversed(lines) if line.strip()), "")

    def _give_up(self, child: Child, reason: str) -> str:
        child.process, child.down = None, reason
        return f"{child.name} {reason}; not restarted"

    def check(self) -> list[str]:
        """Restart children that crashed; returns messages about what happened."""
        events, gone = [], []
        with self._lock:
            for child in self.children.values():
                proc = child.process
                if proc is None or proc.poll() is None or self.stopping:
                    continue
                code = proc.returncode
                child.exit_codes.append(code)
                how = describe_exit(code)
                quick = time.monotonic() - child.started_at < self.min_uptime_s
                child.quick_failures = child.quick_failures + 1 if quick else 1
                if asked_to_stop(code):
                    events.append(self._give_up(child, f"stopped ({how})"))
                elif code == CONFIG_ERROR:
                    detail = self.last_line(child.name)
                    events.append(self._give_up(child, f"failed ({how}: {detail})" if detail else f"failed ({how})"))
                elif not child.restart:
                    events.append(self._give_up(child, f"ended ({how})"))
                elif child.quick_failures > self.max_restarts:
                    events.append(self._give_up(child, f"keeps failing ({how}, {child.quick_failures} times in a row "
                                                       f"within {self.min_uptime_s:.0f} s of starting)"))
                else:
                    child.restarts += 1
                    events.append(f"{child.name} {how}; restart {child.restarts}")
                    self._spawn(child)
                if child.down is not None:
                    gone.append(child)
        for message in events:
            log.warning(message)
        if self.on_down is not None:
            for child in gone:
                self.on_down(child.name, f"{child.name} {child.down}")
        return events

    def watch(self, interval_s: float = 0.5) -> None:
        """Check the children every `interval_s` on a thread that lives until `stop_all`."""
        def loop() -> None:
            while not self._watch_stop.wait(interval_s):
                self.check()

        self._watch = threading.Thread(target=loop, name="opmon-supervisor", daemon=True)
        self._watch.start()

    def pid(self, name: str) -> int | None:
        proc = self.children[name].process
        return None if proc is None else proc.pid

    def running(self) -> list[str]:
        return [c.name for c in self.children.values() if c.process is not None and c.process.poll() is None]

    def stop(self, names: list[str], timeout_s: float) -> dict[str, int | None]:
        """SIGTERM the named children and wait for them together; SIGKILL what is left."""
        with self._lock:
            self.stopping = True
            procs = {n: self.children[n].process for n in names if n in self.children}
        for proc in procs.values():
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, proc in procs.items():
            child = self.children[name]
            if proc is None:
                codes[name] = child.exit_codes[-1] if child.exit_codes else None
                continue
            try:
                codes[name] = proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
                log.warning("%s did not stop within %.1f s: killed", name, timeout_s)
        return codes

    def stop_all(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every child, then SIGKILL what is left after `timeout_s`; returns exit codes.
        The watch thread ends last: children it restarted die with it."""
        codes = self.stop(list(self.children), timeout_s)
        self._watch_stop.set()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(5.0)
        return codes
