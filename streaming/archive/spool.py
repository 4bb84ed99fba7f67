"""The sending end of the acknowledged archive stream: nothing leaves the spool until it is on disk.

A PUSH socket forgets what it queued towards a peer that dies, so the archive stream keeps
every message it sends (frames and control messages, zero-copy: the spool holds references
to the caller's buffers) until the archiver acknowledges it flushed. A (re)started archiver
says `hello` with a token on the acknowledgement channel; the sender answers on the stream
with `sync` and re-sends everything unacknowledged, in order, before anything new. Until a
hello arrives, and from the moment the archiver's connection drops, the sender sends nothing
to the archive socket (it only spools), so a new archiver can never see a new message before
the old ones it must get first. The spool is bounded in bytes: when full, a frame waits up to
the stall timeout for acknowledgements (back-pressure), then is dropped and reported lost.
See docs/protocol.md, "Archive acknowledgements".
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from opmon.streaming import protocol as P

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    parts: list[Any]
    nbytes: int
    index: int = -1        # position among the messages sent since the last sync


class AckedStream:
    """One archive PUSH socket plus its spool, acknowledgement PULL socket and peer monitor.

    Parameters
    ----------
    sock
        the bound PUSH socket of the archive stream (messages go out only through `send`).
    ack_endpoint
        where this sender binds the PULL socket the archiver connects its acknowledgements to.
    spool_bytes
        bound on the bytes held unacknowledged; a frame that does not fit waits, then is dropped.
    stall_timeout_s
        how long a frame waits for room in a full spool before it is dropped.
    """

    #: an archiver acknowledges after every flush; one silent this long after its sync never got it
    SYNC_TIMEOUT_S = 5.0

    def __init__(self, sock: zmq.Socket, ack_endpoint: str, *, spool_bytes: int, stall_timeout_s: float,
                 context: zmq.Context, bind: bool = True, service_interval_s: float = 0.05) -> None:
        self.sock = sock
        self.ack = context.socket(zmq.PULL)
        self.ack.setsockopt(zmq.LINGER, 0)
        (self.ack.bind if bind else self.ack.connect)(ack_endpoint)
        self.ack_endpoint = self.ack.getsockopt_string(zmq.LAST_ENDPOINT)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.spool_bytes = int(spool_bytes)
        self.stall_timeout_s = stall_timeout_s
        self.spool: list[_Entry | None] = []
        self.head = 0                  # first unacknowledged entry
        self.cursor = 0                # first entry not sent since the last sync
        self.held_bytes = 0
        self.token: str | None = None  # the archiver synced with (None: send nothing)
        self._sync: list[bytes] | None = None
        self._next_index = 0
        self._sync_deadline: float | None = None
        self._ignored: set[str] = set()
        self.overflowing = False
        self.dropped = 0
        self.resyncs = 0
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(service_interval_s,), name="opmon-archive-acks",
                                        daemon=True)
        self._thread.start()

    @property
    def held(self) -> int:
        """Messages sent or queued but not yet acknowledged as durable."""
        return len(self.spool) - self.head

    # -- acknowledgement channel ------------------------------------------------------------
    def _on_ack_channel(self, data: bytes) -> None:
        try:
            header = P.parse_ack(data)
        except P.RejectedMessage as exc:
            log.warning("archive acknowledgement rejected (%s)", exc)
            return
        token = header["token"]
        if header["kind"] == "hello":
            # Only while no archiver is synced: a hello from a second archiver (a stray one on
            # this port) must not take the stream from the one connected and acknowledging.
            if self.token is None:
                self._resync(token)
            elif token != self.token and token not in self._ignored:
                self._ignored.add(token)
                log.warning("ignoring hello of a second archiver %s while synced with %s", token[:8], self.token[:8])
        elif token == self.token and header["epoch"] == self.resyncs:
            self._sync_deadline = None
            self._release(header["handled"])

    def _resync(self, token: str) -> None:
        """A new archiver (or one whose connection dropped): re-send every held message."""
        self.token = token
        self._next_index = 0
        self.cursor = self.head
        self.resyncs += 1
        self._sync_deadline = time.monotonic() + self.SYNC_TIMEOUT_S
        self._sync = [P.pack(P.sync_header(token, self.resyncs, self.held))]
        log.info("archiver %s: re-sending %d unacknowledged message(s)", token[:8], self.held)

    def _release(self, handled: int) -> None:
        spool = self.spool
        while self.head < self.cursor:
            entry = spool[self.head]
            if entry is None or entry.index < 0 or entry.index >= handled:
                break
            self.held_bytes -= entry.nbytes
            spool[self.head] = None
            self.head += 1
        if self.head > 1024 and self.head * 2 > len(spool):
            del spool[:self.head]
            self.cursor -= self.head
            self.head = 0

    def _service(self) -> None:
        """Handle waiting acknowledgements and peer events, then send what the socket takes."""
        # Peer events first: a dead archiver's disconnect is queued before its successor's hello.
        while self.monitor.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            event = recv_monitor_message(self.monitor)
            if event["event"] == zmq.EVENT_DISCONNECTED and self.token is not None:
                log.warning("archiver %s disconnected with %d message(s) unacknowledged; holding them",
                            self.token[:8], self.held)
                self.token = None
        while self.ack.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self._on_ack_channel(self.ack.recv())
        if self._sync_deadline is not None and time.monotonic() > self._sync_deadline and self.token is not None:
            # it acknowledges after every flush: silence means it never got our sync (not
            # connected to the frame stream); wait for the next hello
            log.warning("archiver %s never acknowledged its sync; waiting for another hello", self.token[:8])
            self.token, self._sync_deadline = None, None
        self._pump()

    def _pump(self) -> None:
        if self.token is None:
            return
        if self._sync is not None:
            try:
                self.sock.send_multipart(self._sync, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._sync = None
        spool = self.spool
        while self.cursor < len(spool):
            entry = spool[self.cursor]
            try:
                self.sock.send_multipart(entry.parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            entry.index = self._next_index
            self._next_index += 1
            self.cursor += 1

    def _wait(self, timeout_s: float) -> None:
        poller = zmq.Poller()
        poller.register(self.ack, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        if self.token is not None and (self._sync is not None or self.cursor < len(self.spool)):
            poller.register(self.sock, zmq.POLLOUT)
        poller.poll(max(1, int(timeout_s * 1000)))
        self._service()

    def _serve(self, interval_s: float) -> None:
        """Background service: acknowledgements and re-sends also flow while the sender is idle."""
        while not self._stop.wait(interval_s):
            with self.lock:
                try:
                    self._service()
                except zmq.ZMQError:
                    return

    # -- public ---------------------------------------------------------------------------
    def send(self, parts: list[Any], nbytes: int, droppable: bool) -> bool:
        """Spool one message and send it when the archiver can take it.

        Returns False if a `droppable` message (a frame) was dropped because the spool stayed
        full for the stall timeout (the archiver is gone or stuck): it is really lost.
        """
        with self.lock:
            self._service()
            if droppable and self.held and self.held_bytes + nbytes > self.spool_bytes:
                if not self._wait_for_room(nbytes):
                    self.dropped += 1
                    return False
            self.spool.append(_Entry(parts, nbytes))
            self.held_bytes += nbytes
            self._pump()
            return True

    def _wait_for_room(self, nbytes: int) -> bool:
        deadline = time.monotonic() + (0.0 if self.overflowing else self.stall_timeout_s)
        while True:
            if not self.held or self.held_bytes + nbytes <= self.spool_bytes:
                if self.overflowing:
                    log.warning("archive spool has room again; %d frame(s) were dropped", self.dropped)
                self.overflowing = False
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wait(min(remaining, 0.1))
        if not self.overflowing:
            log.error("archive spool full (%d bytes unacknowledged for %.1f s): dropping frames until the archiver "
                      "acknowledges", self.held_bytes, self.stall_timeout_s)
        self.overflowing = True
        return False

    def drain(self, timeout_s: float) -> bool:
        """Wait until the archiver acknowledged everything; False if time ran out first."""
        deadline = time.monotonic() + timeout_s
        with self.lock:
            self._service()
            while self.held:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._wait(min(remaining, 0.1))
        return True

    def close(self) -> None:
        """Stop the service thread and close the acknowledgement and monitor sockets (once)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(2.0)
        with self.lock:
            self.sock.disable_monitor()
            self.monitor.close(linger=0)
            self.ack.close(linger=0)
