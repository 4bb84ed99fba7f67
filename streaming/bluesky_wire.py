"""Documents of another process's RunEngine, received from bluesky's 0MQ proxy, never unpickled.

Wire format of bluesky 1.15's `bluesky.callbacks.zmq.Publisher` (through a `Proxy`, or
`bluesky-0MQ-proxy`): one ZeroMQ message ``prefix + b" " + name + b" " + serialized document``
on a PUB socket. bluesky's default serializer is pickle, and unpickling runs whatever code the
sender put in the bytes (bluesky #1207), so opmon refuses pickle and reads msgpack or JSON
(publish with ``Publisher(address, serializer=msgpack.packb)``). Every document is checked
against event-model's JSON schema before use.

Not `bluesky.callbacks.zmq.RemoteDispatcher`: it unpickles by default, prints (not counts)
what it drops, ends its loop on an unknown document name (`DocumentNames[name]` raises
KeyError inside its task) and runs its own asyncio loop that another thread must cancel; the
20 lines here give one bounded `receive` with every rejection counted by reason.
"""
from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import msgpack
import zmq
from event_model import DocumentNames, schema_validators
from jsonschema.exceptions import ValidationError

from opmon.errors import DocumentError

log = logging.getLogger(__name__)

NAMES = {n.name for n in DocumentNames}
PICKLE_PROTOCOL_2_TO_5 = range(2, 6)


class RejectedDocument(DocumentError):
    """A message that is not a valid bluesky document; `reason` is the counter it goes into."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _loads(payload: bytes, name: str) -> Any:
    """msgpack or JSON; pickle (and anything else) refused with a message saying what to do."""
    if payload[:1] == b"\x80" and len(payload) > 1 and payload[1] in PICKLE_PROTOCOL_2_TO_5:
        raise RejectedDocument("pickle", f"{name} document is pickled; opmon never unpickles (it runs code from the "
                                         f"wire): publish with Publisher(..., serializer=msgpack.packb)")
    try:
        if payload.lstrip()[:1] == b"{":
            return json.loads(payload)
        return msgpack.unpackb(payload, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RejectedDocument("encoding", f"{name} document is neither msgpack nor JSON ({exc})") from None


def decode_document(message: bytes, prefix: bytes = b"") -> tuple[str, dict[str, Any]] | None:
    """(name, document) of one Publisher message; None when its prefix is another publisher's.

    Raises
    ------
    RejectedDocument
        reason `parts`, `name`, `pickle`, `encoding` or `schema`, naming what is wrong.
    """
    try:
        got_prefix, raw_name, payload = bytes(message).split(b" ", 2)
    except ValueError:
        raise RejectedDocument("parts", f"message of {len(message)} bytes is not 'prefix name document'") from None
    if prefix and got_prefix != prefix:
        return None
    name = raw_name.decode("utf-8", "replace")
    if name not in NAMES:
        raise RejectedDocument("name", f"unknown document name {name!r:.40}")
    doc = _loads(payload, name)
    if not isinstance(doc, dict):
        raise RejectedDocument("schema", f"{name} document is a {type(doc).__name__}, not a map")
    try:
        schema_validators[DocumentNames[name]].validate(doc)
    except ValidationError as exc:
        where = "/".join(map(str, exc.absolute_path)) or "document"
        raise RejectedDocument("schema", f"{name} document {doc.get('uid', '')}: {where}: {exc.message:.200}") from None
    return name, doc


class DocumentSubscriber:
    """SUB socket on a bluesky 0MQ proxy's outbound address.

    Parameters
    ----------
    address
        ``tcp://HOST:PORT`` of the proxy's out side (where `RemoteDispatcher` would connect).
    prefix
        only documents of the Publisher with this prefix (default: every publisher).

    The receive queue is unbounded (documents are small; frames stay in the detector's file):
    a PUB socket drops what a full subscriber queue cannot take, silently.
    """

    def __init__(self, address: str, *, prefix: bytes = b"", context: zmq.Context | None = None) -> None:
        self.context = context or zmq.Context.instance()
        self.address = address
        self.prefix = prefix
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, 0)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SUBSCRIBE, prefix + b" " if prefix else b"")
        self.socket.connect(address)
        self.received = 0
        self.rejected: Counter[str] = Counter()

    def receive(self, timeout_ms: int = 100) -> tuple[str, dict[str, Any]] | None:
        """The next valid document, or None after `timeout_ms` (or a rejected message, logged and counted)."""
        if not self.socket.poll(timeout_ms):
            return None
        message = self.socket.recv(copy=True)
        self.received += 1
        try:
            return decode_document(message, self.prefix)
        except RejectedDocument as exc:
            self.rejected[exc.reason] += 1
            if self.rejected[exc.reason] <= 3 or self.rejected[exc.reason] % 1000 == 0:
                log.error("bluesky source %s: rejected (%s, %d so far): %s", self.address, exc.reason,
                          self.rejected[exc.reason], exc)
            return None

    def close(self) -> None:
        self.socket.close(linger=0)
