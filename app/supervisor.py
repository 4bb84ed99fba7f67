"""Supervised child processes for `opmon demo`: start, watch, restart, stop.

Each service (archiver, live processor, dashboard) runs as its own `opmon <command>` process,
so a crash of one neither takes the others down nor loses acquired data: the supervisor
restarts it (the live processor recovers its map from the archive) and logs to a file per
service.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def stop_on_signals(service: Any) -> None:
    """SIGTERM and SIGINT set ``service.stopped``: its loop ends and it flushes and closes cleanly
    (what the supervisor's stop_all relies on for the archiver and the live processor)."""

    def stop(signum: int, frame: object) -> None:
        service.stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


@dataclass
class Child:
    """One supervised service."""

    name: str
    argv: list[str]
    restart: bool = True
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    exit_codes: list[int] = field(default_factory=list)


class Supervisor:
    """Starts `opmon` subcommands as child processes and restarts those that die."""

    def __init__(self, log_dir: str | Path, max_restarts: int = 5) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.max_restarts = max_restarts
        self.children: dict[str, Child] = {}
        self.stopping = False

    def _spawn(self, child: Child) -> None:
        logfile = open(self.log_dir / f"{child.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        child.process = subprocess.Popen([sys.executable, "-m", "opmon.cli", *child.argv], stdout=logfile,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1", **child.env})
        logfile.close()
        log.info("started %s (pid %d): opmon %s", child.name, child.process.pid, " ".join(child.argv))

    def start(self, name: str, argv: list[str], restart: bool = True, env: dict[str, str] | None = None) -> Child:
        """Start `opmon <argv>`; `env` adds variables (secrets go there, not on the command line)."""
        child = Child(name, argv, restart, dict(env or {}))
        self.children[name] = child
        self._spawn(child)
        return child

    def check(self) -> list[str]:
        """Restart children that exited; returns messages about what happened."""
        events = []
        for child in self.children.values():
            proc = child.process
            if proc is None or proc.poll() is None or self.stopping:
                continue
            child.exit_codes.append(proc.returncode)
            if child.restart and child.restarts < self.max_restarts:
                child.restarts += 1
                events.append(f"{child.name} exited with {proc.returncode}; restart {child.restarts}")
                self._spawn(child)
            else:
                events.append(f"{child.name} exited with {proc.returncode}; not restarted")
                child.process = None
        for message in events:
            log.warning(message)
        return events

    def pid(self, name: str) -> int | None:
        proc = self.children[name].process
        return None if proc is None else proc.pid

    def stop_all(self, timeout_s: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every child, then SIGKILL what is left after `timeout_s`; returns exit codes."""
        self.stopping = True
        for child in self.children.values():
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for child in self.children.values():
            if child.process is None:
                codes[child.name] = child.exit_codes[-1] if child.exit_codes else None
                continue
            try:
                codes[child.name] = child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                codes[child.name] = child.process.wait()
                log.warning("%s did not stop within %.0f s: killed", child.name, timeout_s)
        return codes
