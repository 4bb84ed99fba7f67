"""Fuzzed messages for every opmon socket, and harnesses that push them through real services.

Each generator yields multipart messages (lists of bytes) from a seeded `random.Random`, so a
crash found once is found again with the same seed. Most messages start from a well-formed one
built by the real encoders and then break one thing (a field's type, a missing field, the part
count, a huge size, the dtype or shape, a truncated buffer); the rest are random bytes or random
msgpack. Some stay well formed, so the services also take good messages between the bad ones.

Every harness runs the real receiving code behind a real ZeroMQ socket on 127.0.0.1 and reports
what the service itself counted (its rejection counters) plus `crashes`: exceptions that escaped
the service's own message handling (each is a bug to fix, named by type and message).
"""
from __future__ import annotations

import json
import random
import shutil
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq

from opmon.streaming import protocol as P
from opmon.waiting import until

Parts = list[bytes]
FRAME_SHAPE = (16, 16)
MAP_SHAPE = (4, 4)
GEOMETRY = dict(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(-100.0, 8.0))

# Values of every type a mutated field may take (JSON/msgpack-able).
_ODD_VALUES: list[Any] = [None, True, False, 0, -1, -2**63, 2**64 - 1, 1e308, float("nan"), float("inf"), -0.0, "",
                          "x" * 300, "../../etc", "\x00", "\ud800", [], [1], [1, 2, 3], [[1, 2]], ["a", "b"],
                          [2**40, 2**40], [0, 0], [-1, 5], {}, {"a": 1}, {"k": [None]}, b"\xff\x00", 3.5]


def _odd(rng: random.Random) -> Any:
    return rng.choice(_ODD_VALUES)


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, unicode_errors="surrogatepass")


def _random_object(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(7 if depth < 3 else 4)
    if pick == 0:
        return rng.randrange(-2**31, 2**31)
    if pick == 1:
        return rng.random() * 10 ** rng.randrange(-5, 300)
    if pick == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(20)))
    if pick == 3:
        return rng.randbytes(rng.randrange(20))
    if pick == 4:
        return [_random_object(rng, depth + 1) for _ in range(rng.randrange(5))]
    if pick == 5:
        return {str(_random_object(rng, 3))[:10]: _random_object(rng, depth + 1) for _ in range(rng.randrange(5))}
    return {"v": 1, "kind": rng.choice(["frame", "start", "map", "doc", "reading", "status", "stop"]),
            **{rng.choice(["run", "map", "fields", "doc", "name", "seq", "shape"]): _random_object(rng, depth + 1)
               for _ in range(rng.randrange(4))}}


def mutate_header(rng: random.Random, header: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One broken copy of `header`: (strategy, header)."""
    h = dict(header)
    keys = list(h)
    pick = rng.randrange(5)
    if pick == 0 and keys:
        h[rng.choice(keys)] = _odd(rng)
        return "field_type", h
    if pick == 1 and keys:
        del h[rng.choice(keys)]
        return "field_missing", h
    if pick == 2:
        h[rng.choice(["v", "kind"])] = _odd(rng)
        return "version_kind", h
    if pick == 3:
        for key in rng.sample(keys, min(len(keys), rng.randrange(1, 4))):
            h[key] = _odd(rng)
        return "fields", h
    h["junk"] = "y" * rng.choice([10, 70000])
    return "huge", h


def _generic(rng: random.Random, valid: Callable[[], Parts], header_index: int) -> tuple[str, Parts]:
    """Break a valid multipart message whose msgpack header is part `header_index`."""
    parts = valid()
    pick = rng.random()
    if pick < 0.08:
        return "random_bytes", [rng.randbytes(rng.randrange(0, 300)) for _ in range(rng.randrange(1, 4))]
    if pick < 0.16:
        parts[header_index] = _packb(_random_object(rng))
        return "msgpack_junk", parts
    if pick < 0.24:
        cut = rng.randrange(len(parts[header_index]))
        parts[header_index] = parts[header_index][:cut]
        return "truncated_header", parts
    if pick < 0.32:
        if len(parts) > 1 and rng.random() < 0.5:
            del parts[rng.randrange(len(parts))]
        else:
            parts.insert(rng.randrange(len(parts) + 1), rng.randbytes(rng.randrange(64)))
        return "parts", parts
    strategy, header = mutate_header(rng, msgpack.unpackb(parts[header_index], raw=False))
    try:
        parts[header_index] = _packb(header)
    except (TypeError, ValueError, OverflowError):
        parts[header_index] = _packb({"v": 1})
    return strategy, parts


# --- frame stream ------------------------------------------------------------------------------

class FrameStreamFuzzer:
    """The detector's stream broken every way: a valid run interleaved with bad messages.

    A fresh valid `start` opens a new run every `run_every` messages, so frame checks that need
    a known run (shape against the run, map pixel index, sequence) are reached too.
    """

    def __init__(self, seed: int = 0, run_every: int = 2000) -> None:
        self.rng = random.Random(seed)
        self.run_every = run_every
        self.run = ""
        self.seq = 0
        self.map = 0

    def _start(self) -> Parts:
        self.run = f"fuzz-{self.rng.randrange(16**8):08x}"
        self.seq, self.map = 0, 0
        return [P.pack(P.start_header(self.run, frame_shape=FRAME_SHAPE, dtype="uint16", map_shape=MAP_SHAPE,
                                      **GEOMETRY))]

    def _frame(self) -> Parts:
        rng = self.rng
        n = MAP_SHAPE[0] * MAP_SHAPE[1]
        header = P.frame_header(self.run, self.map, self.seq, self.seq % n, self.seq % n, 10.0 + 0.01 * self.seq,
                                0.0, 0.0, 37.0, "uint16", FRAME_SHAPE)
        self.seq += 1
        frame = np.zeros(FRAME_SHAPE, np.uint16)
        frame[rng.randrange(16), rng.randrange(16)] = rng.randrange(1000)
        return [P.pack(header), frame.tobytes()]

    def _control(self) -> Parts:
        kind = self.rng.choice(["map_start", "map_end", "stop"])
        if kind == "map_start":
            return [P.pack(P.map_start_header(self.run, self.map, MAP_SHAPE, 16))]
        if kind == "map_end":
            return [P.pack(P.map_end_header(self.run, self.map, 16, self.seq - 1))]
        return [P.pack(P.stop_header(self.run, "success", self.seq, 1))]

    def messages(self, n: int) -> Iterator[tuple[str, Parts]]:
        """`n` messages, each with the strategy that made it."""
        rng = self.rng
        for i in range(n):
            if i % self.run_every == 0:
                yield "valid_start", self._start()
                continue
            pick = rng.random()
            if pick < 0.10:
                yield "valid_frame", self._frame()
            elif pick < 0.45:
                strategy, parts = _generic(rng, self._frame, 0)
                yield strategy, parts
            elif pick < 0.55:
                strategy, parts = _generic(rng, rng.choice([self._control, self._start]), 0)
                yield strategy, parts
            elif pick < 0.63:
                header, frame = self._frame()
                h = msgpack.unpackb(header)
                h["dtype"] = rng.choice(["float64", "int8", "<u2", "uint8", "uint64", "U4", "O", "V8"])
                yield "dtype", [_packb(h), frame]
            elif pick < 0.71:
                header, frame = self._frame()
                h = msgpack.unpackb(header)
                h["shape"] = rng.choice([[16, 8], [8, 32], [16], [16, 16, 1], [0, 16], [100000, 100000],
                                         [2**31, 2**31], [-16, -16]])
                yield "shape", [_packb(h), frame]
            elif pick < 0.79:
                header, frame = self._frame()
                yield "truncated_array", [header, frame[: rng.randrange(len(frame))]]
            elif pick < 0.84:
                header, _ = self._frame()
                yield "huge_array", [header, bytes(rng.choice([1 << 20, 4 << 20]))]
            elif pick < 0.90:
                header, frame = self._frame()
                h = msgpack.unpackb(header)
                h[rng.choice(["index", "map", "frame", "seq"])] = rng.choice([16, 10**9, 2**63 - 1, -5])
                yield "index", [_packb(h), frame]
            elif pick < 0.95:
                run = rng.choice(["../escape", "", ".", "a/b", "x" * 200, f"other-{rng.randrange(99)}", "\x00"])
                header = P.start_header(run, frame_shape=FRAME_SHAPE, dtype="uint16", map_shape=MAP_SHAPE, **GEOMETRY)
                yield "run_uid", [_packb(header)]
            else:
                yield "valid_control", self._control()


# --- documents, maps, display, control --------------------------------------------------------------

def document_messages(seed: int, n: int) -> Iterator[tuple[str, Parts]]:
    """The archiver's document channel: doc and reading headers, broken."""
    rng = random.Random(seed)

    def valid() -> Parts:
        if rng.random() < 0.5:
            return [_packb({"v": 1, "kind": "reading", "run": rng.choice([None, "fuzz-doc"]), "t": time.time(),
                            "voltage_v": 4.5, "current_a": 1e-5, "charge_mah": 0.1, "x_li": 0.5})]
        name = rng.choice(["start", "descriptor", "event", "stop"])
        doc = {"uid": f"u{rng.randrange(1000)}", "time": time.time(), "run_start": "fuzz-doc", "data": {"v": 1.0}}
        return [_packb({"v": 1, "kind": "doc", "name": name, "doc": doc})]

    for _ in range(n):
        if rng.random() < 0.1:
            yield "valid", valid()
        else:
            yield _generic(rng, valid, 0)
            if rng.random() < 0.3:   # nested breakage inside the document itself
                parts = valid()
                h = msgpack.unpackb(parts[0])
                if h["kind"] == "doc":
                    h["doc"] = {k: _odd(rng) for k in ("uid", "run_start", "time")}
                yield "doc_fields", [_packb(h)]


def _map_message(rng: random.Random, shape: tuple[int, int] = (4, 4)) -> Parts:
    """A well-formed final map message from the live processor's encoder."""
    from opmon.streaming.map_messages import encode_map
    from opmon.processors.maps import MapResult
    ny, nx = shape
    d = np.full(shape, 2.04)
    result = MapResult(d_spacing=d, tilt_altitude=np.zeros(shape), tilt_azimuth=np.zeros(shape),
                       intensity=np.ones(shape), peak_width=np.full(shape, 0.01), mask=np.ones(shape, np.uint8),
                       q=np.zeros((ny, nx, 3)), mean_q=np.array([0.0, 0.0, 3.08]),
                       frames=np.ones(shape, np.int64), background=0.001)
    parts = encode_map(result, run="fuzz-doc", map_number=rng.randrange(3), final=rng.random() < 0.5, frames=16,
                       n_frames=16, frames_lost=0, options={"roi": [0, 16, 0, 16], "threshold": 0, "background": "auto"})
    return [bytes(p) if isinstance(p, bytes) else np.ascontiguousarray(p).tobytes() for p in parts]


def map_messages(seed: int, n: int) -> Iterator[tuple[str, Parts]]:
    """Map messages (display channel, archiver's maps channel): fields, buffers and header broken."""
    rng = random.Random(seed)
    for _ in range(n):
        pick = rng.random()
        if pick < 0.1:
            yield "valid", _map_message(rng)
        elif pick < 0.55:
            yield _generic(rng, lambda: _map_message(rng), 1)
        else:
            parts = _map_message(rng)
            h = msgpack.unpackb(parts[1])
            strategy = rng.choice(["field_spec", "field_dtype", "field_shape", "truncated_array", "huge_shape",
                                   "buffers"])
            k = rng.randrange(len(h["fields"]))
            if strategy == "field_spec":
                h["fields"][k] = _odd(rng)
            elif strategy == "field_dtype":
                h["fields"][k]["dtype"] = rng.choice(["float16", "object", "<f8", ">f8", "uint64", "", None, 3])
            elif strategy == "field_shape":
                h["fields"][k]["shape"] = rng.choice([[4], [4, 4, 4, 4], [], [0, 4], [3, 5], "4x4", None, [4.0, 4.0]])
            elif strategy == "truncated_array":
                parts[2 + k] = parts[2 + k][: rng.randrange(len(parts[2 + k]))]
            elif strategy == "huge_shape":
                h["fields"][k]["shape"] = [16384, 16384, 16384]
            else:
                del parts[2 + k]
            parts[1] = _packb(h)
            yield strategy, parts


def display_messages(seed: int, n: int) -> Iterator[tuple[str, Parts]]:
    """What the dashboard subscriber takes: maps, status, readings, documents, broken."""
    rng = random.Random(seed)
    maps = map_messages(seed + 1, n)

    def status() -> Parts:
        return [b"status", _packb({"v": 1, "kind": "status", "source": rng.choice(["live", "archiver", "acquisition"]),
                                   "t": time.time(), "run": "r", "state": "running", "frames": 10})]

    def reading() -> Parts:
        return [b"reading", _packb({"v": 1, "kind": "reading", "run": "r", "t": time.time(), "voltage_v": 4.5,
                                    "current_a": 1e-5, "charge_mah": 0.2})]

    def doc() -> Parts:
        return [b"doc", _packb({"v": 1, "kind": "doc", "name": "event", "doc": {"uid": "x", "data": {}}})]

    for _ in range(n):
        pick = rng.random()
        if pick < 0.5:
            yield next(maps)
        elif pick < 0.6:
            yield "valid", rng.choice([status, reading, doc])()
        else:
            strategy, parts = _generic(rng, rng.choice([status, reading, doc]), 1)
            if parts and not parts[0] in (b"map", b"status", b"reading", b"doc"):
                parts[0] = rng.choice([b"map", b"status", b"reading", b"doc"])  # else the SUB filters it out
            yield strategy, parts


def control_requests(seed: int, n: int, token: str) -> Iterator[tuple[str, bytes]]:
    """Control requests: JSON broken every way; a quarter carry the right token (bad arguments)."""
    rng = random.Random(seed)
    commands = ["pause", "resume", "abort", "stop", "start_map", "set_trigger", "set_region", "status", "nope", ""]
    for _ in range(n):
        pick = rng.random()
        if pick < 0.1:
            yield "random_bytes", rng.randbytes(rng.randrange(0, 200))
        elif pick < 0.15:
            yield "deep_json", ("[" * rng.choice([1000, 60000])).encode()
        elif pick < 0.2:
            yield "huge", b'{"v": 1, "junk": "' + b"z" * 70000 + b'"}'
        elif pick < 0.25:
            yield "bad_utf8", b'{"v": 1, "command": "pause", "token": "\xff\xfe"}'
        else:
            req: dict[str, Any] = {"v": 1, "command": rng.choice(commands)}
            if rng.random() < 0.25:
                req["token"] = token
            elif rng.random() < 0.5:
                req["token"] = _odd(rng)
            if rng.random() < 0.7:
                req["args"] = rng.choice([_odd(rng), {"thresholds": _odd(rng), "period_s": _odd(rng)},
                                          {"r0": _odd(rng), "r1": 2, "c0": 0, "c1": 2}, {"reason": _odd(rng)},
                                          {"bogus": 1}])
            if rng.random() < 0.2:
                req[rng.choice(["v", "command"])] = _odd(rng)
            try:
                raw = json.dumps(req).encode("utf-8", "surrogatepass")
            except (TypeError, ValueError):
                raw = b"{}"
            yield "json_fields", raw


# --- harnesses ---------------------------------------------------------------------------------------

class Crashes:
    """Exceptions that escaped a service's message handling: count and first traceback line by type."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.where: dict[str, str] = {}

    def add(self, exc: BaseException) -> None:
        key = f"{type(exc).__name__}: {str(exc)[:80]}"
        self.count[key] += 1
        if key not in self.where:
            tb = traceback.extract_tb(exc.__traceback__)
            self.where[key] = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb) if "site-packages" not in f.filename and "pyx" not in f.filename) if tb else "?"

    def as_dict(self) -> dict[str, Any]:
        return {f"{k} at {self.where[k]}": v for k, v in self.count.items()}


def _send_all(sock: zmq.Socket, messages: list[Parts], done: threading.Event) -> None:
    try:
        for parts in messages:
            sock.send_multipart(parts)
    finally:
        done.set()


def _drive(step: Callable[[], None], sock_idle: Callable[[], bool], done: threading.Event, crashes: Crashes,
           quiet_s: float = 1.0, timeout_s: float = 600.0) -> None:
    """Call `step` (one service poll) until the sender is done and nothing arrived for `quiet_s`."""
    last_busy = time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - this is what the fuzz looks for
            crashes.add(exc)
            if sum(crashes.count.values()) > 2000:   # a poisoned service crashes on every step: enough
                return
            last_busy = time.monotonic()
            continue
        if not done.is_set() or not sock_idle():
            last_busy = time.monotonic()
        elif time.monotonic() - last_busy > quiet_s:
            return


def _idle(sock: zmq.Socket) -> Callable[[], bool]:
    return lambda: not sock.poll(0)


def fuzz_frames(target: str, n: int, seed: int = 0, context: zmq.Context | None = None,
                directory: Path | None = None) -> dict[str, Any]:
    """`n` fuzzed messages into the frame stream of the archiver or the live processor.

    Returns the service's own counters (accepted, rejected by reason, lost, duplicate), the
    strategies sent and the crashes.
    """
    ctx = context or zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    tmp = directory or Path(tempfile.mkdtemp(prefix=f"opmon-fuzz-{target}-"))
    messages = list(FrameStreamFuzzer(seed).messages(n))
    sent = Counter(s for s, _ in messages)
    crashes = Crashes()
    if target == "archiver":
        from opmon.streaming.archive.archiver import Archiver
        service: Any = Archiver(tmp, endpoint, context=ctx)
        receiver, step = service.frames, lambda: service.poll_once(50)
    elif target == "live":
        from opmon.processors.live import LiveProcessor
        service = LiveProcessor(endpoint, roi=None, context=ctx)
        receiver, step = service.receiver, lambda: service.poll_once(50)
    else:
        raise ValueError(f"unknown frame-stream target {target!r}")
    done = threading.Event()
    sender = threading.Thread(target=_send_all, args=(push, [p for _, p in messages], done), daemon=True)
    t0 = time.perf_counter()
    sender.start()
    try:
        _drive(step, _idle(receiver.socket), done, crashes)
    finally:
        elapsed = time.perf_counter() - t0
        sender.join(5)
        service.close()
        push.close(0)
        if directory is None:
            shutil.rmtree(tmp, ignore_errors=True)
    counters = receiver.counters.as_dict()
    return {"socket": f"frames -> {target}", "sent": n, "strategies": dict(sent), "counters": counters,
            "errors": getattr(service, "errors", 0), "crashes": crashes.as_dict(),
            "seconds": elapsed}


def fuzz_archiver_channel(channel: str, n: int, seed: int = 0, context: zmq.Context | None = None,
                          directory: Path | None = None) -> dict[str, Any]:
    """`n` fuzzed messages on the archiver's document channel or its final-maps channel."""
    from opmon.streaming.archive.archiver import Archiver
    ctx = context or zmq.Context.instance()
    tmp = directory or Path(tempfile.mkdtemp(prefix=f"opmon-fuzz-{channel}-"))
    frames = ctx.socket(zmq.PUSH)
    frames.setsockopt(zmq.LINGER, 0)
    fport = frames.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    if channel == "docs":
        dport = push.bind_to_random_port("tcp://127.0.0.1")
        archiver = Archiver(tmp, f"tcp://127.0.0.1:{fport}", docs_endpoint=f"tcp://127.0.0.1:{dport}", context=ctx)
        sock = archiver.docs
        messages = list(document_messages(seed, n))
    elif channel == "maps":
        archiver = Archiver(tmp, f"tcp://127.0.0.1:{fport}", maps_endpoint="tcp://127.0.0.1:*",   # zmq picks the port
                            context=ctx)
        push.connect(archiver.maps.getsockopt_string(zmq.LAST_ENDPOINT))
        sock = archiver.maps
        messages = list(map_messages(seed, n))
    else:
        raise ValueError(f"unknown archiver channel {channel!r}")
    # one real run, so documents and maps have somewhere to go (a bare directory is no run: the
    # archiver only takes maps of a run whose stream start it or an earlier archiver recorded)
    frames.send_multipart([P.pack(P.start_header("fuzz-doc", frame_shape=FRAME_SHAPE, dtype="uint16",
                                                 map_shape=MAP_SHAPE, **GEOMETRY))])
    while archiver.run_dir is None:
        archiver.poll_once(50)
    crashes = Crashes()
    done = threading.Event()
    sender = threading.Thread(target=_send_all, args=(push, [p for _, p in messages], done), daemon=True)
    t0 = time.perf_counter()
    sender.start()
    try:
        _drive(lambda: archiver.poll_once(50), _idle(sock), done, crashes)
    finally:
        elapsed = time.perf_counter() - t0
        sender.join(5)
        status = archiver.status()
        archiver.close()
        push.close(0)
        frames.close(0)
        if directory is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"socket": f"{channel} -> archiver", "sent": n, "strategies": dict(Counter(s for s, _ in messages)),
            "counters": {"dropped": status["dropped"]}, "crashes": crashes.as_dict(), "seconds": elapsed}


def fuzz_display(n: int, seed: int = 0, context: zmq.Context | None = None, batch: int = 40) -> dict[str, Any]:
    """`n` fuzzed display messages to the dashboard's subscriber (PUB -> SUB, in batches it can take)."""
    from opmon.dashboard.model import DashboardModel
    from opmon.dashboard.subscriber import DisplaySubscriber
    ctx = context or zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.setsockopt(zmq.SNDHWM, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = DisplaySubscriber(DashboardModel(), [f"tcp://127.0.0.1:{port}"], context=ctx).start()
    probe = [b"status", _packb({"v": 1, "kind": "status", "source": "probe", "t": 0.0})]

    def handled() -> int:
        return sum(sub.counts.values()) + sum(sub.rejected.values())


    def probe_handled() -> bool:     # the subscription takes a moment to join: probe until one arrives
        if handled():
            return True
        pub.send_multipart(probe)
        return False

    until(probe_handled, 10)
    messages = list(display_messages(seed, n))
    stalled = 0
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        before = handled()
        chunk = [p for _, p in messages[i:i + batch] if p and p[0] in (b"map", b"status", b"reading", b"doc")]
        for parts in chunk:
            pub.send_multipart(parts)
        until(lambda: handled() >= before + len(chunk) or not sub._thread.is_alive(), 10, interval_s=0.001)
        stalled += max(0, before + len(chunk) - handled())
    elapsed = time.perf_counter() - t0
    alive = sub._thread.is_alive()
    sub.close()
    pub.close(0)
    return {"socket": "display -> dashboard subscriber", "sent": n,
            "strategies": dict(Counter(s for s, _ in messages)),
            "counters": {"accepted": dict(sub.counts), "rejected": dict(sub.rejected)},
            "crashes": {} if alive and not sub.rejected.get("error") else
            {"subscriber thread died" if not alive else "errors caught in the subscriber loop":
             sub.rejected.get("error", 1)},
            "not_handled": stalled, "seconds": elapsed}


def fuzz_control(n: int, seed: int = 0, context: zmq.Context | None = None) -> dict[str, Any]:
    """`n` fuzzed requests to a ControlServer steering a real (idle) RunEngine."""
    from bluesky import RunEngine

    from opmon.acquisition import SteeringRequests
    from opmon.experiment import make_rule
    from opmon.acquisition.steering import RunEngineSteering
    from opmon.streaming.control import ControlServer
    ctx = context or zmq.Context.instance()
    token = "fuzz-token-" + "k" * 16
    RE = RunEngine({})
    server = ControlServer("tcp://127.0.0.1:0", token, RunEngineSteering(RE, SteeringRequests(loop=RE.loop), make_rule),
                           context=ctx).start()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(server.endpoint)
    replies: Counter[str] = Counter()
    crashes = Crashes()
    messages = list(control_requests(seed, n, token))
    t0 = time.perf_counter()
    for _, raw in messages:
        try:
            req.send(raw)
            reply = json.loads(req.recv())
        except zmq.Again:
            crashes.count["no reply (server thread dead?)"] += 1
            crashes.where["no reply (server thread dead?)"] = "control server"
            break
        replies["ok" if reply.get("ok") else "refused"] += 1
    elapsed = time.perf_counter() - t0
    req.close(0)
    server.close()
    return {"socket": "control -> ControlServer", "sent": n, "strategies": dict(Counter(s for s, _ in messages)),
            "counters": {"replies": dict(replies), "server_rejected": dict(server.rejected)},
            "crashes": crashes.as_dict(), "seconds": elapsed}


def wrong_tokens(n: int, seed: int = 0, context: zmq.Context | None = None) -> dict[str, Any]:
    """`n` steering requests with wrong or missing tokens to a ControlServer over a real (idle)
    RunEngine: every one must be refused with "bad token" and the RunEngine left as it was.

    Also times `check_token` on a wrong token differing at the first and at the last character
    (the comparison must not return earlier for an early difference)."""
    import timeit

    from bluesky import RunEngine

    from opmon.acquisition.steering import RunEngineSteering
    from opmon.streaming.control import ControlServer, check_token
    rng = random.Random(seed)
    ctx = context or zmq.Context.instance()
    token = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(22))
    RE = RunEngine({})
    server = ControlServer("tcp://127.0.0.1:0", token, RunEngineSteering(RE), context=ctx).start()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 5000)
    req.connect(server.endpoint)
    kinds: Counter[str] = Counter()
    accepted = 0
    t0 = time.perf_counter()
    for _ in range(n):
        pick = rng.randrange(6)
        request: dict[str, Any] = {"v": 1, "command": rng.choice(["pause", "abort", "resume", "stop", "start_map"])}
        if pick == 0:
            kinds["missing"] += 1
        elif pick == 1:
            request["token"], kinds["empty"] = "", kinds["empty"] + 1
        elif pick == 2:   # right length, one character changed
            i = rng.randrange(len(token))
            request["token"] = token[:i] + ("x" if token[i] != "x" else "y") + token[i + 1:]
            kinds["one_char_off"] += 1
        elif pick == 3:
            request["token"], kinds["prefix"] = token[: rng.randrange(len(token))] or "a", kinds["prefix"] + 1
        elif pick == 4:
            request["token"], kinds["longer"] = token + "x", kinds["longer"] + 1
        else:
            value = _odd(rng)
            request["token"] = value.hex() if isinstance(value, bytes) else value if value is not None else 0
            kinds["wrong_type"] += 1
        req.send(json.dumps(request).encode("utf-8", "surrogatepass"))
        reply = json.loads(req.recv())
        accepted += bool(reply.get("ok"))
    elapsed = time.perf_counter() - t0
    req.close(0)
    refused_token = server.rejected.get("token", 0)
    server.close()
    first = token.replace(token[0], "#", 1)
    last = token[:-1] + "#"
    runs = 200_000
    t_first = min(timeit.repeat(lambda: check_token(first, token), number=runs, repeat=5)) / runs
    t_last = min(timeit.repeat(lambda: check_token(last, token), number=runs, repeat=5)) / runs
    return {"socket": "control (wrong tokens)", "sent": n, "kinds": dict(kinds), "accepted": accepted,
            "refused_bad_token": refused_token, "run_state_after": str(RE.state),
            "check_token_ns_first_char_differs": t_first * 1e9, "check_token_ns_last_char_differs": t_last * 1e9,
            "seconds": elapsed}
