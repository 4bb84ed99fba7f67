"""Keep the steering token out of every log line the dashboard process writes.

Why: tornado's access log prints each request's URI with its query string (``GET /?token=...``),
and its error logs print the whole request; the demo keeps these logs in the archive, which
the group can read. The access log is written without query strings, and a filter on the log
handlers rewrites any ``token=...`` (and the literal secrets it is told about) in other lines.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from tornado.log import access_log
from tornado.web import RequestHandler

#: ``token=<value>`` in a URL, a repr or a header, up to a separator.
_TOKEN_ARG = re.compile(r"(token=)[^&\s'\"(),;]+", re.IGNORECASE)
REDACTED = "<redacted>"
#: Loggers that print request URLs: tornado's own (access, uncaught exceptions, HTTP errors).
URL_LOGGERS = ("tornado.access", "tornado.application", "tornado.general")


def log_request(handler: RequestHandler) -> None:
    """Tornado ``log_function``: the default access line, with the path instead of the URI."""
    status = handler.get_status()
    log = access_log.info if status < 400 else access_log.warning if status < 500 else access_log.error
    r = handler.request
    log("%d %s %s (%s) %.2fms", status, r.method, r.path, r.remote_ip, 1000.0 * r.request_time())


class RedactSecrets(logging.Filter):
    """Rewrites a record's message without token arguments or the given secret strings."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        text = _TOKEN_ARG.sub(rf"\g<1>{REDACTED}", text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:      # a malformed record: let logging report it as usual
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:     # tracebacks may quote the request too
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install(secrets: Iterable[str] = ()) -> RedactSecrets:
    """Attach one filter to tornado's URL loggers and to every handler of the root logger.

    A filter on a logger sees only that logger's own records; one on the root handlers sees
    everything that reaches the log file, whichever library wrote it.
    """
    f = RedactSecrets(secrets)
    for name in URL_LOGGERS:
        logging.getLogger(name).addFilter(f)
    for handler in logging.getLogger().handlers:
        handler.addFilter(f)
    return f


def uninstall(f: RedactSecrets) -> None:
    """Remove a filter `install` attached (tests start several servers in one process)."""
    for name in URL_LOGGERS:
        logging.getLogger(name).removeFilter(f)
    for handler in logging.getLogger().handlers:
        handler.removeFilter(f)
