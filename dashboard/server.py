"""Run the dashboard: an embedded Bokeh (tornado) server on 127.0.0.1 with a steering token.

Security (issue 6 §3): binds 127.0.0.1 unless told otherwise, accepts websocket connections
only from the page's own host:port, and enables steering only in sessions whose URL carries
the token; the read-only view needs none.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server
from tornado.ioloop import IOLoop

from opmon.dashboard.app import DashboardOptions, make_app
from opmon.dashboard.control_client import ControlClient
from opmon.dashboard.model import DashboardModel
from opmon.dashboard.subscriber import DisplaySubscriber
from opmon.errors import ConfigError

log = logging.getLogger(__name__)
#: The app lives at the root, so ``http://127.0.0.1:5006/?token=...`` works as printed (Bokeh's
#: redirect from "/" to a named app would drop the query string, and with it the token).
APP_PATH = "/"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for tests and `--port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class DashboardConfig:
    """Where the dashboard listens and what it follows."""

    display_endpoints: Sequence[str] = ()
    control_endpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = 5006
    token: str | None = None        # expected steering token; None: acquisition decides alone
    options: DashboardOptions = field(default_factory=DashboardOptions)


class DashboardServer:
    """The Bokeh server plus the display subscriber, on a background thread.

    Use `start()` then `url` / `steering_url`; `stop()` when done. `model` is the shared
    in-process state, fed by the subscriber (or directly, in tests).
    """

    def __init__(self, config: DashboardConfig, model: DashboardModel | None = None) -> None:
        if config.port == 0:
            config.port = free_port(config.host)
        if not 0 < config.port < 65536:
            raise ConfigError(f"dashboard port {config.port} is not a TCP port (1..65535)")
        self.config = config
        self.model = model or DashboardModel()
        self.control = ControlClient(config.control_endpoint) if config.control_endpoint else None
        self.subscriber = DisplaySubscriber(self.model, config.display_endpoints) if config.display_endpoints else None
        self._server: Server | None = None
        self._loop: IOLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def origins(self) -> list[str]:
        """Websocket origins the server accepts: only this page's own address."""
        h, p = self.config.host, self.config.port
        names = {h} | ({"localhost", "127.0.0.1"} if h in ("127.0.0.1", "localhost") else set())
        return sorted(f"{n}:{p}" for n in names)

    @property
    def url(self) -> str:
        """Read-only URL."""
        return f"http://{self.config.host}:{self.config.port}{APP_PATH}"  # ends with "/"

    @property
    def steering_url(self) -> str:
        """URL with the token: steering enabled (only if a token is configured)."""
        return f"{self.url}?token={self.config.token}" if self.config.token else self.url

    def start(self, timeout: float = 20.0) -> DashboardServer:
        """Start subscriber and server thread; return once the server listens."""
        if self.subscriber is not None:
            self.subscriber.start()
        self._thread = threading.Thread(target=self._run, name="opmon-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise ConfigError(f"dashboard could not start on {self.config.host}:{self.config.port}: {self._error}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self._loop = IOLoop.current()
            app = Application(FunctionHandler(make_app(self.model, self.control, self.config.token,
                                                       self.config.options)))
            self._server = Server({APP_PATH: app}, io_loop=self._loop, address=self.config.host,
                                  port=self.config.port, allow_websocket_origin=self.origins,
                                  check_unused_sessions_milliseconds=2000,
                                  unused_session_lifetime_milliseconds=5000)
            self._server.start()
        except BaseException as exc:   # report to start(), do not die silently
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.start()
        self._server.stop()

    def serve_forever(self) -> None:
        """Block until the server thread ends (Ctrl-C in the command)."""
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop the server, the subscriber and the control client."""
        if self._loop is not None:
            self._loop.add_callback(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5.0)
        if self.subscriber is not None:
            self.subscriber.close()
        if self.control is not None:
            self.control.close()

    def session_count(self) -> int:
        """Open browser sessions (for tests)."""
        if self._server is None:
            return 0
        return sum(len(ctx.sessions) for ctx in self._server._tornado._applications.values())
