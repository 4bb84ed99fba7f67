"""Run the dashboard: an embedded Bokeh (tornado) server on 127.0.0.1 with a steering token.

Security (issues 6 §3, 11 §5): binds 127.0.0.1 unless told otherwise, accepts websocket
connections only from the page's own host:port, and enables steering only in sessions that
hold the session cookie a first load with ``?token=...`` exchanged (`opmon.dashboard.auth`);
the read-only view needs none. No log line carries the token (`opmon.dashboard.redact`).
Port 0 binds any free port; `port` and `url` then tell which.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import BaseServer
from bokeh.server.tornado import BokehTornado
from bokeh.server.util import create_hosts_allowlist
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from opmon.dashboard import redact
from opmon.dashboard.app import DashboardOptions, make_app
from opmon.dashboard.auth import SteeringSessions, TokenExchange, cookie_name
from opmon.dashboard.control_client import ControlClient
from opmon.dashboard.model import DashboardModel
from opmon.dashboard.subscriber import DisplaySubscriber
from opmon.errors import ConfigError

log = logging.getLogger(__name__)
#: The app lives at the root, so ``http://127.0.0.1:5006/?token=...`` works as printed and
#: redirects to ``http://127.0.0.1:5006/``.
APP_PATH = "/"


@dataclass
class DashboardConfig:
    """Where the dashboard listens and what it follows."""

    display_endpoints: Sequence[str] = ()
    control_endpoint: str | None = None
    host: str = "127.0.0.1"
    port: int = 5006                # 0: any free port (DashboardServer.port tells which)
    token: str | None = None        # expected steering token; None: acquisition decides alone
    options: DashboardOptions = field(default_factory=DashboardOptions)


class DashboardServer:
    """The Bokeh server plus the display subscriber, on a background thread.

    Use `start()` then `url` / `steering_url`; `stop()` when done. `model` is the shared
    in-process state, fed by the subscriber (or directly, in tests).
    """

    def __init__(self, config: DashboardConfig, model: DashboardModel | None = None) -> None:
        if not 0 <= config.port < 65536:
            raise ConfigError(f"dashboard port {config.port} is not a TCP port (1..65535, or 0 for any)")
        self.config = config
        self.model = model or DashboardModel()
        self.control = ControlClient(config.control_endpoint) if config.control_endpoint else None
        self.subscriber = DisplaySubscriber(self.model, config.display_endpoints) if config.display_endpoints else None
        self.sessions: SteeringSessions | None = None   # made once the port is known
        self._redact: redact.RedactSecrets | None = None
        self._server: BaseServer | None = None
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
    def port(self) -> int:
        """The port the server listens on (the bound one when configured as 0)."""
        return self.config.port

    @property
    def steering_url(self) -> str:
        """URL with the token, to open once (only if a token is configured): the page swaps it
        for a session cookie and redirects to `url`. Print it to a terminal, never to a log."""
        return f"{self.url}?token={self.config.token}" if self.config.token else self.url

    def start(self, timeout: float = 20.0) -> DashboardServer:
        """Start subscriber and server thread; return once the server listens."""
        if self.subscriber is not None:
            self.subscriber.start()
        self._redact = redact.install([self.config.token] if self.config.token else [])
        self._thread = threading.Thread(target=self._run, name="opmon-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise ConfigError(f"dashboard could not start on {self.config.host}:{self.config.port}: {self._error}")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        try:
            self._loop = IOLoop.current()
            # bind first (port 0 included) and keep the sockets: the port is known before the
            # origins and the cookie name are, and nothing can take it in between
            sockets = bind_sockets(self.config.port, self.config.host)
            self.config.port = int(sockets[0].getsockname()[1])
            self.sessions = SteeringSessions(self.config.token, cookie_name(self.config.port))
            app = Application(FunctionHandler(make_app(self.model, self.control, self.sessions,
                                                       self.config.options)))
            tornado_app = BokehTornado({APP_PATH: app}, absolute_url=self.url.rstrip("/"),
                                       extra_websocket_origins=create_hosts_allowlist(self.origins, self.config.port),
                                       auth_provider=TokenExchange(self.sessions),
                                       include_cookies=[self.sessions.cookie],   # the session payload: ours only
                                       check_unused_sessions_milliseconds=2000,
                                       unused_session_lifetime_milliseconds=5000,
                                       log_function=redact.log_request)
            http = HTTPServer(tornado_app)
            http.add_sockets(sockets)
            self._server = BaseServer(self._loop, tornado_app, http)
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
        if self._redact is not None:
            redact.uninstall(self._redact)
            self._redact = None

    def session_count(self) -> int:
        """Open browser sessions (for tests)."""
        if self._server is None:
            return 0
        return sum(len(ctx.sessions) for ctx in self._server._tornado._applications.values())
