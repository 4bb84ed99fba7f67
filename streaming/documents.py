"""DocumentPublisher: bluesky documents and potentiostat readings leave the acquisition process.

A RunEngine callback. Every document goes out twice: on the lossless `docs` PUSH socket (the
archiver keeps them) and on the lossy `display_acquisition` PUB socket (the dashboard follows
them, latest wins). Events of the `potentiostat` stream are also sent as compact `reading`
messages (docs/protocol.md), so consumers need not know the device's signal names.
Never pickle: msgpack with numpy arrays turned into lists.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import zmq

from opmon.errors import StreamStalledError
from opmon.streaming import protocol as P

log = logging.getLogger(__name__)

COULOMB_PER_MAH = 3.6
POTENTIOSTAT_STREAM = "potentiostat"


def reading_from_event(event: dict[str, Any], run: str | None, device: str = "potentiostat") -> dict[str, Any] | None:
    """The `reading` message of a potentiostat event, or None if the event lacks a voltage."""
    data = event.get("data", {})
    voltage = data.get(f"{device}-voltage")
    if voltage is None:
        return None
    reading: dict[str, Any] = {"v": P.VERSION, "kind": "reading", "run": run, "t": float(event.get("time", time.time())),
                               "voltage_v": float(voltage)}
    if f"{device}-current" in data:
        reading["current_a"] = float(data[f"{device}-current"])
    if f"{device}-charge" in data:
        reading["charge_mah"] = float(data[f"{device}-charge"]) / COULOMB_PER_MAH
    if f"{device}-elapsed" in data:
        reading["cell_time_s"] = float(data[f"{device}-elapsed"])
    if f"{device}-mode" in data:
        reading["mode"] = str(data[f"{device}-mode"])
    return reading


class DocumentPublisher:
    """RunEngine subscriber sending documents and readings to the archiver and the dashboard.

    Parameters
    ----------
    docs_endpoint : lossless PUSH endpoint (bound here; the archiver connects). None: no archive path.
    display_endpoint : lossy PUB endpoint (bound here; dashboards subscribe). None: no display path.
    stall_timeout_s : how long a full lossless queue may block before the run is told (an
        exception in the callback makes the RunEngine abort: better than losing documents).
    """

    def __init__(self, docs_endpoint: str | None, display_endpoint: str | None, *, context: zmq.Context | None = None,
                 stall_timeout_s: float = 30.0, sndhwm: int = 10_000) -> None:
        self.context = context or zmq.Context.instance()
        self.docs: zmq.Socket | None = None
        self.display: zmq.Socket | None = None
        if docs_endpoint:
            self.docs = self.context.socket(zmq.PUSH)
            self.docs.setsockopt(zmq.SNDHWM, sndhwm)
            self.docs.setsockopt(zmq.SNDTIMEO, int(stall_timeout_s * 1000))
            self.docs.setsockopt(zmq.LINGER, 5000)
            self.docs.bind(docs_endpoint)
        if display_endpoint:
            self.display = self.context.socket(zmq.PUB)
            self.display.setsockopt(zmq.SNDHWM, 100)
            self.display.setsockopt(zmq.LINGER, 0)
            self.display.bind(display_endpoint)
        self.run: str | None = None
        self.runs: list[str] = []  # every run uid started, in order
        self.descriptors: dict[str, str] = {}  # descriptor uid -> stream name
        self.sent = {"doc": 0, "reading": 0}

    def _send(self, topic: bytes, header: dict[str, Any]) -> None:
        payload = P.pack(header)
        if self.docs is not None:
            try:
                self.docs.send(payload)
            except zmq.Again as exc:
                raise StreamStalledError(f"archiver did not take documents for {self.docs.getsockopt(zmq.SNDTIMEO) / 1000:.0f} s "
                                           f"(docs channel full); stopping rather than losing them") from exc
        if self.display is not None:
            try:
                self.display.send_multipart([topic, payload], flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # display path: latest wins, a slow dashboard misses messages
        self.sent[topic.decode()] += 1

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "start":
            self.run = doc["uid"]
            self.runs.append(doc["uid"])
            self.descriptors.clear()
        elif name == "descriptor":
            self.descriptors[doc["uid"]] = doc.get("name", "")
        self._send(b"doc", {"v": P.VERSION, "kind": "doc", "name": name, "doc": doc})
        if name == "event" and self.descriptors.get(doc.get("descriptor", "")) == POTENTIOSTAT_STREAM:
            reading = reading_from_event(doc, self.run)
            if reading is not None:
                self._send(b"reading", reading)
        if name == "stop":
            self.run = None

    def publish_status(self, status: dict[str, Any]) -> None:
        """Acquisition status on the display channel only (docs/protocol.md, topic `status`)."""
        if self.display is None:
            return
        header = {"v": P.VERSION, "kind": "status", "source": "acquisition", "t": time.time(), **status}
        try:
            self.display.send_multipart([b"status", P.pack(header)], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        for sock in (self.docs, self.display):
            if sock is not None:
                sock.close()
