"""Plain HTTP to a real dashboard server, as a browser's first requests: the token exchange and
the page, and the server-side Bokeh document the page's session got."""
from __future__ import annotations

import http.client
import re
from http.cookies import SimpleCookie

from bokeh.document import Document
from bokeh.util.token import get_session_id

from opmon.dashboard.auth import cookie_name


def http_get(port: int, path: str, cookie: str | None = None) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) of one GET, redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
    finally:
        conn.close()


def session_document(dashboard, page: str) -> Document:
    """The server-side document of the Bokeh session the server made for `page`."""
    m = re.search(r'"token":\s*"([^"]+)"', page)
    assert m, "no Bokeh session token in the page"
    return dashboard._server.get_session("/", get_session_id(m.group(1))).document


def steering_page(dashboard, token: str) -> Document:
    """Open the steering URL as a browser does (token -> cookie -> page) and return the session's document."""
    status, headers, _ = http_get(dashboard.port, f"/?token={token}")
    assert status == 303, status
    sid = SimpleCookie(headers["set-cookie"])[cookie_name(dashboard.port)].value
    status, _, page = http_get(dashboard.port, headers["location"], cookie=f"{cookie_name(dashboard.port)}={sid}")
    assert status == 200, status
    return session_document(dashboard, page)
