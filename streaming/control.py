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
import os
import secrets
import threading
from collections import Counter
from typing import Any, Protocol, runtime_checkable

import zmq
from bluesky.utils import RunEngineInterrupted

from opmon.errors import OpmonError
from opmon.streaming.protocol import VERSION

log = logging.getLogger(__name__)

#: Commands that change the run; each needs the token.
STEERING_COMMANDS = ("pause", "resume", "abort", "stop", "start_map", "set_trigger", "set_region")
#: Commands anyone may send.
READ_COMMANDS = ("status",)
#: Every command of the control channel (docs/protocol.md): the one table server and client check.
COMMANDS = STEERING_COMMANDS + READ_COMMANDS
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


class RunEngineSteering:
    """`Steerable` over a bluesky RunEngine and the plan's map-request mailbox.

    Pause, resume and abort act on the RunEngine; map-now, trigger rule, region and stop go to
    `requests` (duck-typed like `opmon.acquisition.MapRequests`: `map_now`, `set_rule`,
    `set_region`, `finish`), which the running plan drains between frames. The thread that
    runs the plan must call `run(plan)`: after a pause it waits there for resume or abort,
    because `RE.resume()` has to run where `RE(plan)` ran.

    Parameters
    ----------
    RE
        The RunEngine executing the plan.
    requests
        The plan's mailbox, or None (then only pause/resume/abort/status work).
    make_rule
        Builds a trigger rule from the `set_trigger` arguments (e.g. thresholds, period_s);
        the acquisition supplies it so this module never imports acquisition.
    """

    def __init__(self, RE: Any, requests: Any = None, make_rule: Any = None) -> None:
        self.RE, self.requests, self.make_rule = RE, requests, make_rule
        self._wake = threading.Event()
        #: Why the run is being aborted (the `abort` command's reason), None while it is not.
        self.abort_reason: str | None = None
        self.exit_status: str | None = None

    # -- Steerable -----------------------------------------------------------------------
    def pause(self) -> dict[str, Any]:
        if self.RE.state != "running":
            raise ControlCommandError(f"cannot pause: the run is {self.RE.state}")
        # Deferred: the plan pauses at its next checkpoint (after the frame being taken), so a
        # pause never leaves a frame on disk that no document references.
        self.RE.request_pause(defer=True)
        return {"state": str(self.RE.state)}

    def resume(self) -> dict[str, Any]:
        if self.RE.state != "paused":
            raise ControlCommandError(f"cannot resume: the run is {self.RE.state}")
        self._wake.set()
        return {"state": "resuming"}

    def abort(self, reason: str = "") -> dict[str, Any]:
        if self.RE.state not in ("running", "paused"):
            raise ControlCommandError(f"cannot abort: the run is {self.RE.state}")
        self.abort_reason = reason or "aborted from the control channel"
        if self.RE.state == "running":
            self.RE.request_pause(defer=False)
        self._wake.set()
        return {"state": "aborting"}

    def stop(self) -> dict[str, Any]:
        self._need_requests("stop").finish()
        return {"state": str(self.RE.state), "stopping": "after the current map"}

    def start_map(self) -> dict[str, Any]:
        self._need_requests("start_map").map_now("steering: map now")
        return {"state": str(self.RE.state)}

    def set_trigger(self, **rule: Any) -> dict[str, Any]:
        requests = self._need_requests("set_trigger")
        if self.make_rule is None:
            raise ControlCommandError("set_trigger: this acquisition has no rule factory")
        requests.set_rule(self.make_rule(**rule))
        return {"trigger": rule}

    def set_region(self, r0: int | None = None, r1: int | None = None, c0: int | None = None,
                   c1: int | None = None) -> dict[str, Any]:
        """Grid rows [r0, r1) and columns [c0, c1) from the next map on; no arguments: whole grid."""
        requests = self._need_requests("set_region")
        given = [v for v in (r0, r1, c0, c1) if v is not None]
        if not given:
            requests.set_region(None)
            return {"region": None}
        if len(given) != 4:
            raise ControlCommandError(f"set_region: need all of r0, r1, c0, c1, got {dict(r0=r0, r1=r1, c0=c0, c1=c1)}")
        region = (int(r0), int(r1), int(c0), int(c1))  # type: ignore[arg-type]
        requests.set_region(region)
        return {"region": list(region)}

    def status(self) -> dict[str, Any]:
        return {"state": str(self.RE.state), "exit_status": self.exit_status}

    def _need_requests(self, command: str) -> Any:
        if self.requests is None:
            raise ControlCommandError(f"{command}: this plan takes no map requests")
        return self.requests

    # -- the plan's thread ---------------------------------------------------------------
    def run(self, plan: Any, stop: threading.Event | None = None) -> str:
        """Run `plan` on the RunEngine, waiting out pauses; returns "success" or "abort"."""
        try:
            self.RE(plan)
            self.exit_status = "success"
            return self.exit_status
        except RunEngineInterrupted:
            pass
        while True:
            while not self._wake.wait(0.2):
                if stop is not None and stop.is_set():
                    self.abort_reason = self.abort_reason or "shut down"
                    break
            self._wake.clear()
            if self.abort_reason is not None:
                self.RE.abort(self.abort_reason)
                self.exit_status = "abort"
                return self.exit_status
            try:
                self.RE.resume()
                self.exit_status = "success"
                return self.exit_status
            except RunEngineInterrupted:
                continue
