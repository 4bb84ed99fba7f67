"""The dashboard's end of the steering channel: one REQ socket, a timeout, a fresh socket after
every timeout (a REQ socket that missed its reply is stuck in the wrong state).

Requests and replies are JSON objects, never pickle (PEERS.md 3). The token is the one the
browser session presented; the acquisition side checks it, so a dashboard without a token
cannot steer even if its own check were bypassed.
"""
from __future__ import annotations

import json
import threading
from typing import Any

import zmq

from opmon.errors import OpmonError
from opmon.streaming.control import COMMANDS
from opmon.streaming.protocol import VERSION


class ControlError(OpmonError):
    """The control channel did not answer in time or answered with something unreadable."""


class ControlClient:
    """Send steering commands to the acquisition process and return its reply.

    Parameters
    ----------
    endpoint
        ZeroMQ address of the acquisition's control REP socket, e.g. ``tcp://127.0.0.1:5560``.
    timeout
        Seconds to wait for a reply before giving up (the run is never assumed steered).
    context
        ZeroMQ context to use; the global instance by default.
    """

    def __init__(self, endpoint: str, timeout: float = 3.0, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            s = self._ctx.socket(zmq.REQ)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, int(self.timeout * 1000))
            s.setsockopt(zmq.SNDTIMEO, int(self.timeout * 1000))
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def request(self, cmd: str, token: str | None, **args: Any) -> dict[str, Any]:
        """Send one command and return the reply (``{"v": 1, "ok": bool, "result"|"error": ...}``).

        Raises
        ------
        ControlError
            If `cmd` is unknown, or no valid reply arrives within `timeout`.
        """
        if cmd not in COMMANDS:
            raise ControlError(f"unknown control command {cmd!r}; known: {', '.join(COMMANDS)}")
        payload = json.dumps({"v": VERSION, "token": token or "", "command": cmd, "args": args}).encode()
        with self._lock:
            sock = self._socket()
            try:
                sock.send(payload)
                raw = sock.recv()
            except zmq.Again as exc:
                sock.close(0)
                self._sock = None
                raise ControlError(
                    f"control channel {self.endpoint}: no reply to {cmd!r} within {self.timeout} s") from exc
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise ControlError(f"control channel {self.endpoint}: reply to {cmd!r} is not JSON") from exc
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ControlError(f"control channel {self.endpoint}: reply to {cmd!r} lacks 'ok': {reply!r}")
        return reply

    def close(self) -> None:
        """Close the socket (the context stays)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None
