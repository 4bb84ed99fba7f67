"""Thin adapter from the display channels (docs/protocol.md, PUB/SUB, latest wins) to the model.

One SUB socket connects to every display publisher (live processor, acquisition, archiver)
and a daemon thread decodes `[topic, header, *buffers]` messages into `DashboardModel`
calls. Bad messages are counted by reason and skipped; nothing is ever unpickled. The
channel is lossy by design: a slow dashboard misses intermediate partial maps, which is
exactly what a display should do.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from opmon.dashboard.model import DashboardModel, MapMessageError, MapUpdate
from opmon.errors import ProtocolError
from opmon.streaming.map_messages import decode_dose, decode_map
from opmon.streaming.protocol import VERSION, RejectedMessage, unpack

log = logging.getLogger(__name__)

TOPICS = (b"map", b"status", b"reading", b"doc")


class DisplayMessageError(ProtocolError):
    """A display-channel message does not follow docs/protocol.md; `reason` is its counter key."""

    def __init__(self, message: str, reason: str = "field") -> None:
        super().__init__(message)
        self.reason = reason


#: Status keys the dashboard does arithmetic on: each must be a number (or nil) when present.
_STATUS_NUMBERS = ("frames_per_s", "frames_lost", "map", "map_progress", "maps_done", "frames")
#: Extra map-header keys a producer may send that the model turns into numbers (the codec checks the rest).
_MAP_NUMBERS = ("seq", "t_start", "voltage", "capacity")


def _number(value: Any) -> bool:
    """None or a finite int/float (int() of NaN or inf raises)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def map_update(header: dict[str, Any], buffers: Sequence[Any]) -> MapUpdate:
    """A `map` header plus its buffers -> `MapUpdate` (arrays are copies, safe to keep).

    The message is checked by the one map codec (`opmon.streaming.map_messages`); this adds
    only what the display needs: the map's progress and the producer's extra header keys.

    Raises
    ------
    DisplayMessageError
        Naming the field whose description or buffer is inconsistent.
    """
    bad = [k for k in _MAP_NUMBERS if not _number(header.get(k))]
    bad += [k for k in ("t_start", "voltage", "capacity") if k in header and header[k] is None]  # the model float()s them
    if bad:
        raise DisplayMessageError(f"map: {bad[0]} = {header.get(bad[0])!r:.40} is not a number")
    try:
        views = decode_map(header, buffers)
        decode_dose(header, views)          # a dose field must come with its grid
    except RejectedMessage as exc:
        raise DisplayMessageError(str(exc), exc.reason) from exc
    arrays = {name: np.array(view, dtype=view.dtype.newbyteorder("=")) for name, view in views.items()}
    n_frames = int(header["n_frames"])
    frames = int(header["frames"])
    final = bool(header.get("final", False))
    if final:
        progress = 1.0
    elif n_frames > 0:
        progress = frames / n_frames
    elif "frames" in arrays and arrays["frames"].size:
        # frames per map pixel (live processor): the share of pixels already visited
        progress = float(np.count_nonzero(arrays["frames"])) / arrays["frames"].size
    else:
        progress = 0.0
    meta = {k: v for k, v in header.items() if k not in ("fields",)}
    try:
        seq = header.get("seq")
        return MapUpdate(map_number=int(header["map"]), arrays=arrays, progress=min(progress, 1.0),
                         final=final, seq=int(frames if seq is None else seq), t_processed=float(header["t"]),
                         extent=_extent(header.get("extent")), meta=meta)
    except MapMessageError as exc:
        raise DisplayMessageError(str(exc), "shape") from exc


def _extent(value: Any) -> tuple[float, float, float, float] | None:
    if isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    return None


def dispatch(model: DashboardModel, parts: Sequence[Any]) -> str:
    """Decode one display message into the model; returns its kind. Raises DisplayMessageError."""
    if len(parts) < 2:
        raise DisplayMessageError(f"{len(parts)} parts, expected [topic, header, *buffers]", "parts")
    raw = parts[1].buffer if hasattr(parts[1], "buffer") else parts[1]
    try:
        header = unpack(raw)
    except Exception as exc:
        raise DisplayMessageError(f"header is not msgpack: {type(exc).__name__}", "header") from exc
    if not isinstance(header, dict) or header.get("v") != VERSION or isinstance(header.get("v"), bool):
        version = header.get("v") if isinstance(header, dict) else None
        raise DisplayMessageError(f"version {version!r:.40}, expected {VERSION}", "version")
    kind = header.get("kind")
    if kind == "map":
        model.on_map(map_update(header, parts[2:]))
    elif kind == "status":
        bad = [k for k in _STATUS_NUMBERS if not _number(header.get(k))]
        if bad or not isinstance(header.get("source", ""), str):
            raise DisplayMessageError(f"status: {(bad or ['source'])[0]} has the wrong type")
        model.on_status(header)
    elif kind == "reading":
        try:
            # the potentiostat's own clock when it reports one (a simulated cell may run faster
            # than the wall clock); markers use the same readings, so the axes stay consistent
            t = header["cell_time_s"] if isinstance(header.get("cell_time_s"), (int, float)) else header["t"]
            model.on_reading(float(t), float(header["voltage_v"]), float(header.get("current_a", np.nan)),
                             float(header.get("charge_mah", np.nan)))
        except (KeyError, TypeError, ValueError) as exc:
            raise DisplayMessageError(f"reading: bad or missing field {exc}") from exc
    elif kind == "doc":
        if not isinstance(header.get("name"), str) or not isinstance(header.get("doc"), dict):
            raise DisplayMessageError("doc: needs a string 'name' and a map 'doc'")
        model.on_document(header["name"], header["doc"])
    else:
        raise DisplayMessageError(f"unknown kind {kind!r:.40}", "kind")
    return str(kind)


class DisplaySubscriber:
    """Follow the display channels on a daemon thread and feed the model.

    Parameters
    ----------
    model
        Where decoded messages go.
    endpoints
        Display publishers to connect to (e.g. the `display_live`, `display_acquisition`
        and `display_archive` endpoints of the config).
    """

    def __init__(self, model: DashboardModel, endpoints: Sequence[str], context: zmq.Context | None = None) -> None:
        self.model = model
        self.endpoints = list(endpoints)
        self._ctx = context or zmq.Context.instance()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="opmon-dashboard-sub", daemon=True)
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self._last_log = 0.0

    def start(self) -> DisplaySubscriber:
        self._thread.start()
        return self

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 50)
        for topic in TOPICS:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        for ep in self.endpoints:
            sock.connect(ep)
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not poller.poll(100):
                    continue
                parts = sock.recv_multipart(copy=False)
                try:
                    self.counts[dispatch(self.model, parts)] += 1
                except DisplayMessageError as exc:
                    self.rejected[exc.reason] += 1
                    if time.monotonic() - self._last_log > 5.0:
                        self._last_log = time.monotonic()
                        log.warning("display message rejected: %s (%d so far)", exc, sum(self.rejected.values()))
                except Exception:   # a message no check foresaw must not end the dashboard's only feed
                    self.rejected["error"] += 1
                    log.exception("display message broke the subscriber (counted as 'error', skipped)")
        finally:
            sock.close(0)

    def close(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
