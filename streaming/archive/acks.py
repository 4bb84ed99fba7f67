"""The archiver's side of archive acknowledgements (docs/protocol.md, "Archive acknowledgements").

The sender holds every archive-stream message until this side says it is durable. So the
archiver says `hello` with a token of its own (about once a second, so a sender that starts
later or lost track of it finds it), recognises the sender's `sync` answer on the frame
stream, counts the messages after it, and after each flush acknowledges how many are on
disk: one small message per flush, never one per frame.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

import zmq

from opmon.streaming import protocol as P


class ArchiveAcks:
    """Hello, sync bookkeeping and per-flush acknowledgements over one connected PUSH socket."""

    def __init__(self, context: zmq.Context, endpoint: str, hello_interval_s: float = 1.0) -> None:
        self.token = uuid.uuid4().hex
        self.sock = context.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100)
        self.sock.connect(endpoint)
        self.hello_interval_s = hello_interval_s
        self.epoch: int | None = None     # of the last sync addressed to this archiver
        self.handled = 0                  # messages received since that sync
        self.acked = -1
        self.resend_left = 0
        self.syncs = 0
        self._last_hello = float("-inf")

    def _send(self, header: dict[str, Any]) -> None:
        try:
            self.sock.send(P.pack(header), zmq.NOBLOCK)
        except zmq.Again:
            pass        # no sender bound yet: it will get the next hello

    def on_sync(self, header: dict[str, Any]) -> bool:
        """A `sync` arrived on the frame stream; False if it was meant for another archiver."""
        if header["token"] != self.token:
            return False
        self.epoch, self.handled, self.acked = header["epoch"], 0, -1
        self.resend_left = max(0, header["resend"])
        self.syncs += 1
        return True

    def note(self) -> bool:
        """Count one stream message after the sync; True if the sender re-sent it."""
        if self.epoch is None:
            return False
        self.handled += 1
        if self.resend_left:
            self.resend_left -= 1
            return True
        return False

    def flushed(self) -> None:
        """Everything received so far is on disk: acknowledge it (if anything new)."""
        if self.epoch is not None and self.handled != self.acked:
            self._send(P.ack_header(self.token, self.epoch, self.handled))
            self.acked = self.handled

    def tick(self) -> None:
        """Say hello now and then, so a sender finds this archiver whenever it (re)appears."""
        now = time.monotonic()
        if now - self._last_hello >= self.hello_interval_s:
            self._last_hello = now
            self._send(P.hello_header(self.token))

    def close(self) -> None:
        self.sock.close(linger=500)     # let the last acknowledgement out if the sender is there
