"""The acquisition's end of the steering channel (docs/protocol.md, `control`, REQ/REP JSON).

This module is only the transport and the credential check: it decodes a request, checks the
token in constant time, and hands the command to a `Steerable` that the acquisition supplies
(`opmon.acquisition.steering.RunEngineSteering` acts through the RunEngine: `request_pause`,
`resume`, `abort`, and the plan's steering soft signals). Reading (`status`) needs no token; every other command does (PEERS.md 5).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import threading
from collections import Counter
from typing import Any, Protocol, runtime_checkable

import zmq

from opmon.errors import ControlCommandError, OpmonError
from opmon.streaming.protocol import VERSION

log = logging.getLogger(__name__)

#: Commands that change the run; each needs the token.
STEERING_COMMANDS = ("pause", "resume", "abort", "stop", "start_map", "set_trigger", "set_region", "set_grid",
                     "set_automatic", "accept_proposal", "shift_region")
#: Commands anyone may send.
READ_COMMANDS = ("status",)
#: Every command of the control channel (docs/protocol.md): the one table server and client check.
COMMANDS = STEERING_COMMANDS + READ_COMMANDS
MAX_REQUEST_BYTES = 65536


@runtime_checkable
class Steerable(Protocol):
    """What the acquisition offers the control channel; every method returns a result dict.

    Implementations act through the RunEngine and must be safe to call from the control
    thread. Raise `ControlCommandError` (or any `OpmonError`) to refuse with a message.
    """

    def pause(self, reason: str = "", automatic: str = "") -> dict[str, Any]: ...
    def resume(self, reason: str = "") -> dict[str, Any]: ...
    def abort(self, reason: str = "") -> dict[str, Any]: ...
    def stop(self) -> dict[str, Any]: ...
    def start_map(self) -> dict[str, Any]: ...
    def set_trigger(self, **rule: Any) -> dict[str, Any]: ...
    def set_region(self, **region: Any) -> dict[str, Any]: ...
    def set_grid(self, shape: list[int], step_um: float, origin_um: list[float], reason: str = "") -> dict[str, Any]: ...
    def set_automatic(self, name: str, enabled: bool, reason: str = "") -> dict[str, Any]: ...
    def accept_proposal(self, proposal: int) -> dict[str, Any]: ...
    def shift_region(self, **shift: Any) -> dict[str, Any]: ...
    def status(self) -> dict[str, Any]: ...


def resolve_token(*configured: str | None, generate: bool = True) -> str | None:
    """The steering token: the first non-empty of `configured`, else $OPMON_CONTROL_TOKEN, else a
    fresh random one (or None with ``generate=False``). One rule for acquisition and dashboard."""
    for value in (*configured, os.environ.get("OPMON_CONTROL_TOKEN")):
        if value:
            return value
    return secrets.token_urlsafe(16) if generate else None


def check_token(given: Any, expected: str) -> bool:
    """Constant-time token comparison; an empty expected token refuses everything.

    Both sides are compared as UTF-8 bytes with `hmac.compare_digest`, whose time does not
    depend on where they differ; a token JSON cannot encode as UTF-8 (a lone surrogate) is
    refused like any other wrong token instead of raising.
    """
    if not expected or not isinstance(given, str) or not given:
        return False
    try:
        given_bytes = given.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given_bytes, expected.encode("utf-8"))


def _refuse(reason: str, error: str) -> dict[str, Any]:
    """A refusal; `reason` is a short counter key the server counts refusals by (not sent)."""
    return {"v": VERSION, "ok": False, "error": error, "reason": reason}


def handle_request(raw: bytes, token: str, target: Steerable) -> dict[str, Any]:
    """Decode, authorise and execute one request; always returns a reply dict, never raises."""
    if len(raw) > MAX_REQUEST_BYTES:
        return _refuse("size", f"request of {len(raw)} bytes is too large")
    try:
        req = json.loads(raw)
    except (ValueError, RecursionError):    # RecursionError: deeply nested JSON
        return _refuse("json", "request is not JSON")
    if not isinstance(req, dict) or req.get("v") != VERSION:
        return _refuse("version", f"request must be a JSON object with v = {VERSION}")
    command = req.get("command")
    args = req.get("args") or {}
    if not isinstance(args, dict):
        return _refuse("args", "args must be a JSON object")
    if not isinstance(command, str) or command not in COMMANDS:
        return _refuse("command", f"unknown command {command!r:.80}; known: {', '.join(COMMANDS)}")
    if command in STEERING_COMMANDS and not check_token(req.get("token"), token):
        log.warning("control: refused %r with a bad or missing token", command)
        return _refuse("token", "bad token")
    try:
        result = getattr(target, command)(**args)
    except TypeError as exc:
        return _refuse("args", f"{command}: bad arguments {sorted(args)}: {exc}")
    except (OpmonError, ValueError) as exc:   # ValueError: int("x") and the like in the arguments
        return _refuse("refused", f"{command}: {exc}")
    except Exception as exc:   # the control loop must survive a failing command
        log.exception("control: %s failed", command)
        return _refuse("error", f"{command} failed: {type(exc).__name__}: {exc}")
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
        self.rejected: Counter[str] = Counter()   # refusals by reason (token, json, args, ...)

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
            reason = reply.pop("reason", "error")   # counted here, not sent (the wire reply stays v1)
            if not reply["ok"]:
                self.refused += 1
                self.rejected[reason] += 1
            # REP must answer every request, or the socket (and every later client) is stuck
            self._sock.send(json.dumps(reply, default=str).encode("utf-8", "backslashreplace"))
        self._sock.close(0)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread and close the socket."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        else:
            self._sock.close(0)
