"""The archiver's side of archive acknowledgements (docs/protocol.md, "Archive acknowledgements").

The sender holds every archive-stream message until this side says it is durable. So the
archiver says `hello` with a token of its own (four times a second, so a sender that starts
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

    def __init__(self, context: zmq.Context, endpoint: str, hello_interval_s: float = 0.25) -> None:
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


#: A newly started archiver holds what reaches it before the sender's first `sync` this long,
#: or this many messages: an acknowledging sender re-sends all of it, in order, right after the
#: sync. A sender without acknowledgements never syncs; its messages are then taken in order.
PRESYNC_HOLD_S = 1.0
PRESYNC_HOLD_MAX = 512


class PreSyncHold:
    """Messages that reached a restarted archiver before its first sync.

    The sender's PUSH socket delivers new frames to a restarted archiver as soon as it connects,
    before hello and sync; the re-sent older frames come after the sync. Taken in arrival order,
    the newer ones would advance the sequence and the re-sent ones be refused as already seen:
    frames lost from the archive. So they wait here: dropped at the sync (they are re-sent after
    it, in order), taken in order if no sync comes (`PRESYNC_HOLD_S`, `PRESYNC_HOLD_MAX`).
    """

    def __init__(self, hold_s: float = PRESYNC_HOLD_S, max_messages: int = PRESYNC_HOLD_MAX) -> None:
        self.hold_s, self.max_messages = hold_s, max_messages
        self.held: list[list[Any]] = []
        self.since: float | None = None
        self.over = False            # synced once, or gave up waiting: hold nothing any more

    def hold(self, parts: list[Any]) -> bool:
        """Keep `parts` until the first sync; False once there is nothing to wait for."""
        if self.over:
            return False
        if self.since is None:
            self.since = time.monotonic()
        self.held.append(parts)
        return True

    def synced(self) -> int:
        """The first sync came: what was held is re-sent after it. Returns how many are dropped."""
        dropped = len(self.held)
        self.held, self.over = [], True
        return dropped

    def release_due(self) -> list[list[Any]]:
        """The held messages, in order, once waiting for a sync is over (none came)."""
        if self.over or not self.held:
            return []
        if len(self.held) < self.max_messages and time.monotonic() - (self.since or 0.0) < self.hold_s:
            return []
        held, self.held, self.over = self.held, [], True
        return held
