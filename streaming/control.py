"""The acquisition's end of the steering channel (docs/protocol.md, `control`, REQ/REP JSON).

This module is only the transport and the credential check: it decodes a request, checks the
token in constant time, and hands the command to a `Steerable` that the acquisition supplies
(its adapter acts through the RunEngine: `request_pause`, `resume`, `abort`, and the plan's
thread-safe map-request object). It imports nothing from acquisition, so data still flow one
way. Reading (`status`) needs no token; every other command does (PEERS.md 5).
"""
from __future__ import annotations

import hmac
import json
import logging
import threading
from typing import Any, Protocol, runtime_checkable

import zmq

from opmon.errors import OpmonError

log = logging.getLogger(__name__)

VERSION = 1
#: Commands that change the run; each needs the token.
STEERING_COMMANDS = ("pause", "resume", "abort", "stop", "start_map", "set_trigger", "set_region")
#: Commands anyone may send.
READ_COMMANDS = ("status",)
MAX_REQUEST_BYTES = 65536


class ControlCommandError(OpmonError):
    """A steering command has bad arguments or cannot act in the run's current state."""


@runtime_checkable
class Steerable(Protocol):
    """What the acquisition offers the control channel; every method returns a result dict.

    Implementations act through the RunEngine and must be safe to call from the control
    thread. Raise `ControlCommandError` (or any `OpmonError`) to refuse with a message.
    """

    def pause(self) -> dict[str, Any]: ...
    def resume(self) -> dict[str, Any]: ...
    def abort(self, reason: str = "") -> dict[str, Any]: ...
    def stop(self) -> dict[str, Any]: ...
    def start_map(self) -> dict[str, Any]: ...
    def set_trigger(self, **rule: Any) -> dict[str, Any]: ...
    def set_region(self, **region: Any) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...


def check_token(given: Any, expected: str) -> bool:
    """Constant-time token comparison; an empty expected token refuses everything."""
    if not expected or not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def handle_request(raw: bytes, token: str, target: Steerable) -> dict[str, Any]:
    """Decode, authorise and execute one request; always returns a reply dict, never raises."""
    if len(raw) > MAX_REQUEST_BYTES:
        return {"v": VERSION, "ok": False, "error": f"request of {len(raw)} bytes is too large"}
    try:
        req = json.loads(raw)
    except ValueError:
        return {"v": VERSION, "ok": False, "error": "request is not JSON"}
    if not isinstance(req, dict) or req.get("v") != VERSION:
        return {"v": VERSION, "ok": False, "error": f"request must be a JSON object with v = {VERSION}"}
    command = req.get("command")
    args = req.get("args") or {}
    if not isinstance(args, dict):
        return {"v": VERSION, "ok": False, "error": "args must be a JSON object"}
    if command not in STEERING_COMMANDS + READ_COMMANDS:
        return {"v": VERSION, "ok": False,
                "error": f"unknown command {command!r}; known: {', '.join(STEERING_COMMANDS + READ_COMMANDS)}"}
    if command in STEERING_COMMANDS and not check_token(req.get("token"), token):
        log.warning("control: refused %r with a bad or missing token", command)
        return {"v": VERSION, "ok": False, "error": "bad token"}
    try:
        result = getattr(target, command)(**args)
    except TypeError as exc:
        return {"v": VERSION, "ok": False, "error": f"{command}: bad arguments {sorted(args)}: {exc}"}
    except OpmonError as exc:
        return {"v": VERSION, "ok": False, "error": f"{command}: {exc}"}
    except Exception as exc:   # the control loop must survive a failing command
        log.exception("control: %s failed", command)
        return {"v": VERSION, "ok": False, "error": f"{command} failed: {type(exc).__name__}: {exc}"}
    return {"v": VERSION, "ok": True, "result": result if isinstance(result, dict) else {}}


class ControlServer:
    """A REP socket on a thread, answering steering requests for one acquisition.

    Parameters
    ----------
    endpoint
        Address to bind, e.g. ``tcp://127.0.0.1:5558`` (port 0 picks a free port; see `endpoint`).
    token
        Shared secret steering needs; must be non-empty.
    target
        The acquisition adapter that executes commands.
    """

    def __init__(self, endpoint: str, token: str, target: Steerable,
                 context: zmq.Context | None = None) -> None:
        if not token:
            raise ControlCommandError("control token must not be empty (set [control] token or OPMON_CONTROL_TOKEN)")
        self.token, self.target = token, target
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        if endpoint.endswith(":0"):
            port = self._sock.bind_to_random_port(endpoint.rsplit(":", 1)[0])
            endpoint = f"{endpoint.rsplit(':', 1)[0]}:{port}"
        else:
            self._sock.bind(endpoint)
        self.endpoint = endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="opmon-control", daemon=True)
        self.requests = 0
        self.refused = 0

    def start(self) -> ControlServer:
        """Start answering on a daemon thread."""
        self._thread.start()
        return self

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            raw = self._sock.recv()
            reply = handle_request(raw, self.token, self.target)
            self.requests += 1
            self.refused += 0 if reply["ok"] else 1
            self._sock.send(json.dumps(reply, default=str).encode())
        self._sock.close(0)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self._sock.close(0)
