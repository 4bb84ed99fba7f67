"""The steering token is exchanged once for a session cookie and never logged (issue 11 §5).

Real dashboard server on a port it bound itself, plain HTTP requests that do not follow
redirects, so every header the browser would see is checked.
"""
from __future__ import annotations

import logging
from http.cookies import SimpleCookie

from dashboard_http import http_get, session_document
from opmon.dashboard.auth import SteeringSessions, cookie_name
from opmon.dashboard.redact import RedactSecrets
from tests.waiting import until


def _may_steer(dashboard, page: str) -> bool:
    """Whether the Bokeh session the server made for this page enabled steering (its Pause
    button and feedback line, as the browser will receive them)."""
    doc = session_document(dashboard, page)
    enabled = not doc.get_model_by_name("pause").disabled
    assert enabled == ("steering enabled" in doc.get_model_by_name("feedback").text)
    return enabled


def test_first_load_sets_an_httponly_strict_cookie_and_redirects_without_the_token(dashboard, token):
    port = dashboard.port
    status, headers, _ = http_get(port, f"/?token={token}")
    assert status == 303 and headers["location"] == "/"
    cookie = SimpleCookie(headers["set-cookie"])
    name = cookie_name(port)
    morsel = cookie[name]
    assert morsel["httponly"] is True and morsel["samesite"] == "Strict" and morsel["path"] == "/"
    assert token not in headers["set-cookie"] and len(morsel.value) >= 32   # a session id, not the token
    # the page behind the redirect: with the cookie it may steer, and holds no token anywhere
    status, _, page = http_get(port, headers["location"], cookie=f"{name}={morsel.value}")
    assert status == 200 and _may_steer(dashboard, page) and token not in page
    # other query arguments survive the redirect
    status, headers, _ = http_get(port, f"/?a=1&token={token}&b=x+y")
    assert status == 303 and headers["location"] == "/?a=1&b=x+y"


def test_wrong_token_or_forged_cookie_gives_a_read_only_page(dashboard, token):
    port = dashboard.port
    status, headers, _ = http_get(port, "/?token=not-" + token)
    assert status == 303 and headers["location"] == "/" and "set-cookie" not in headers
    _, _, page = http_get(port, "/")
    assert not _may_steer(dashboard, page)
    _, _, page = http_get(port, "/", cookie=f"{cookie_name(port)}={token}")      # the token is not a cookie
    assert not _may_steer(dashboard, page)
    _, _, page = http_get(port, "/", cookie=f"{cookie_name(port + 1)}=x")
    assert not _may_steer(dashboard, page)
    assert len(dashboard.sessions) == 0


def test_access_log_has_paths_without_query_strings(dashboard, token, caplog):
    caplog.set_level(logging.INFO, logger="tornado.access")
    http_get(dashboard.port, f"/?token={token}")
    http_get(dashboard.port, f"/ws?token={token}")             # an old page's websocket URL

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "tornado.access"]

    until(lambda: len(lines()) >= 2, 20, interval_s=0.02)    # the server logs a request after it has answered it
    assert any("GET / (127.0.0.1)" in line for line in lines()), lines()
    assert any("GET /ws (127.0.0.1)" in line for line in lines()), lines()
    assert not [line for line in caplog.messages if token in line]


def test_redact_filter_rewrites_urls_reprs_and_known_secrets():
    f = RedactSecrets(["s3cr3t-value"])
    record = logging.LogRecord("tornado.application", logging.ERROR, __file__, 1,
                               "Uncaught exception %s\n%r", ("GET /?a=1&token=abc (127.0.0.1)",
                                                              "HTTPServerRequest(uri='/ws?token=abc')"), None)
    assert f.filter(record)
    assert "abc" not in record.getMessage() and record.getMessage().count("token=<redacted>") == 2
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "printed %s", ("s3cr3t-value",), None)
    f.filter(record)
    assert record.getMessage() == "printed <redacted>"


def test_sessions_without_a_configured_token_keep_the_one_given_for_the_acquisition_to_judge():
    open_sessions = SteeringSessions(None, "c")
    sid = open_sessions.exchange("anything")
    assert sid and open_sessions.token_for(sid) == "anything"
    assert open_sessions.exchange("") is None and open_sessions.token_for("forged") is None
    strict = SteeringSessions("right", "c", max_sessions=2)
    assert strict.exchange("wrong") is None
    first, second, third = (strict.exchange("right") for _ in range(3))
    assert strict.token_for(first) is None                  # the oldest is forgotten
    assert strict.token_for(second) == strict.token_for(third) == "right"
    assert strict.token_of_cookies({"c": third}) == "right" and strict.token_of_cookies({}) is None
