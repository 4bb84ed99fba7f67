"""Steering by session cookie: the token is exchanged once for a random session id, then gone.

Why: a token in the page URL is recorded by every access log, by the browser history and in the
Bokeh session payload, and whoever reads any of them could steer the experiment. So the first
load of ``/?token=...`` is answered with a redirect (303) to the same URL without the token and,
if the token is right, an HttpOnly, SameSite=Strict cookie holding a random session id. The
server keeps the map session id -> token in memory only; the Bokeh session (and every steering
command) is authorised by the cookie. The cookie is named after the port because browsers share
cookies between the ports of one host.
"""
from __future__ import annotations

import logging
import secrets
import threading
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

from bokeh.server.auth_provider import AuthProvider
from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler

from opmon.dashboard.steering import token_allows

log = logging.getLogger(__name__)

#: The query argument that carries the token on the first load only.
TOKEN_ARG = "token"
#: Sessions kept; the oldest is forgotten beyond this (a tab reopened with the token gets a new one).
MAX_SESSIONS = 256


def cookie_name(port: int) -> str:
    """Name of the session cookie of the dashboard on `port`."""
    return f"opmon_steer_{port}"


class SteeringSessions:
    """Session ids that may steer, each mapped to the token its commands carry.

    With a configured `expected` token only that token is exchanged. Without one the dashboard
    cannot judge, so any non-empty token is exchanged and the acquisition decides on every
    command (as it always does).
    """

    def __init__(self, expected: str | None, cookie: str, max_sessions: int = MAX_SESSIONS) -> None:
        self.expected, self.cookie, self.max_sessions = expected, cookie, max_sessions
        self._sessions: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def exchange(self, given: str | None) -> str | None:
        """A new session id for a valid token, else None."""
        if not token_allows(given, self.expected):
            return None
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[sid] = given  # type: ignore[assignment]
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return sid

    def token_for(self, sid: str | None) -> str | None:
        """The token a session may steer with, or None (unknown, forged or forgotten id)."""
        if not sid:
            return None
        with self._lock:
            return self._sessions.get(sid)

    def token_of_cookies(self, cookies: Any) -> str | None:
        """The steering token of a request's cookies (a dict of name -> value), or None."""
        value = (cookies or {}).get(self.cookie)
        return self.token_for(value if isinstance(value, str) else getattr(value, "value", None))

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)


def url_without_token(handler: RequestHandler) -> str:
    """The request's path and query, minus the token argument."""
    args = [(k, v.decode("utf-8", "replace")) for k, vs in handler.request.query_arguments.items()
            if k != TOKEN_ARG for v in vs]
    path = "/" + handler.request.path.lstrip("/")     # never "//host": that would leave the site
    return path + (f"?{urlencode(args)}" if args else "")


class TokenExchange(AuthProvider):
    """Bokeh auth hook that swaps ``?token=`` for the session cookie before any page is served.

    Everybody may view (the read-only dashboard needs no credential), so every request gets a
    user; a request carrying the token is answered with the redirect instead of the page.
    """

    def __init__(self, sessions: SteeringSessions) -> None:
        self.sessions = sessions
        super().__init__()

    @property
    def get_user_async(self):  # type: ignore[override]
        return self._exchange

    @property
    def login_url(self) -> str:  # type: ignore[override]
        return "/"      # Bokeh needs one with user hooks; never used, as nobody is turned away

    async def _exchange(self, handler: RequestHandler) -> str:
        if TOKEN_ARG not in handler.request.query_arguments or isinstance(handler, WebSocketHandler):
            return "viewer"      # a websocket of an old page: the token is ignored, the cookie decides
        sid = self.sessions.exchange(handler.get_query_argument(TOKEN_ARG, None))
        if sid is not None:
            handler.set_cookie(self.sessions.cookie, sid, path="/", httponly=True, samesite="Strict")
        else:
            log.warning("a page was opened with a wrong steering token from %s: read-only",
                        handler.request.remote_ip)
        handler.redirect(url_without_token(handler), status=303)   # ends the request: no page
        return "viewer"
