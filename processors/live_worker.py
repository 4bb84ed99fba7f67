"""Worker process of the live processor: accumulate the frames it is dealt, ship partial sums.

The coordinator (`opmon.processors.live`) deals frames out to N workers; each keeps one
`MomentAccumulator` per map, and every `publish_interval_s` (and on request, at the end of
a map) sends its additive sums back, where they merge by addition. The same design spreads
over several machines (local workers use ipc sockets; remote ones would use TCP). Internal
messages are msgpack headers plus raw buffers, like the public protocol; nothing is pickled.
"""
from __future__ import annotations

import logging
import multiprocessing
import shutil
import tempfile
import time
from typing import Any

import numpy as np
import zmq

from opmon.errors import OpmonError
from opmon.processors.accumulate import STATE_KEYS, MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.streaming import protocol as P

log = logging.getLogger(__name__)

SETUP, MAP, FRAME, FINAL, QUIT, STATE, READY = b"setup", b"map", b"frame", b"final", b"quit", b"state", b"ready"


def accumulator_options(setup: dict[str, Any]) -> dict[str, Any]:
    """MomentAccumulator keyword options carried in a setup header."""
    roi = setup.get("roi")
    return {"roi": tuple(roi) if roi is not None else None, "threshold": int(setup.get("threshold", 0)),
            "background": setup.get("background", "auto")}


def geometry_of(start: dict[str, Any]) -> DetectorGeometry:
    """DetectorGeometry from a run's start header (protocol field names)."""
    return DetectorGeometry(float(start["energy_ev"]), float(start["distance_m"]), tuple(start["pixel_size_m"]),
                            tuple(start["beam_center"]), tuple(start["frame_shape"]))


def encode_state(acc: MomentAccumulator, header: dict[str, Any], latencies: list[float]) -> list[Any]:
    """`[b"state", header, *sums, latencies]` (sums in STATE_KEYS order; latencies as (seq, s) pairs)."""
    state = acc.state()
    header = dict(header, keys=[[k, str(state[k].dtype), list(state[k].shape)] for k in STATE_KEYS],
                  n_latencies=len(latencies) // 2)
    return [STATE, P.pack(header)] + [np.ascontiguousarray(state[k]) for k in STATE_KEYS] + \
        [np.asarray(latencies, dtype=np.float64)]


def decode_state(parts: list[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
    """Inverse of `encode_state` (trusted peer, still shape-checked)."""
    header = P.unpack(parts[1])
    state = {}
    for (key, dtype, shape), buf in zip(header["keys"], parts[2:-1]):
        raw = buf.buffer if hasattr(buf, "buffer") else buf
        state[key] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    raw = parts[-1].buffer if hasattr(parts[-1], "buffer") else parts[-1]
    return header, state, np.frombuffer(raw, dtype=np.float64).reshape(-1, 2)


class LiveWorker:
    """One worker: pulls from its own coordinator socket, pushes sums to the shared results socket."""

    def __init__(self, worker_id: int, inbox: str, outbox: str, publish_interval_s: float = 0.25,
                 context: zmq.Context | None = None) -> None:
        self.id = worker_id
        self.context = context or zmq.Context.instance()
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.RCVHWM, 100)
        self.inbox.connect(inbox)
        self.outbox = self.context.socket(zmq.PUSH)
        self.outbox.setsockopt(zmq.LINGER, 5000)
        self.outbox.connect(outbox)
        self.publish_interval_s = publish_interval_s
        self.run: str | None = None
        self.geometry: DetectorGeometry | None = None
        self.options: dict[str, Any] = {}
        self.mask: np.ndarray | None = None
        self.map_shapes: dict[int, tuple[int, int]] = {}
        self.default_shape: tuple[int, int] = (1, 1)
        self.maps: dict[int, MomentAccumulator] = {}
        self.dirty: set[int] = set()
        self.latencies: list[float] = []

    def _acc(self, number: int) -> MomentAccumulator:
        acc = self.maps.get(number)
        if acc is None:
            assert self.geometry is not None
            acc = self.maps[number] = MomentAccumulator(self.geometry, self.map_shapes.get(number, self.default_shape),
                                                        detector_mask=self.mask, **self.options)
        return acc

    def _send(self, number: int, final: bool) -> None:
        acc = self._acc(number)
        header = {"worker": self.id, "run": self.run, "map": number, "frames": acc.frames_seen, "final": final}
        self.outbox.send_multipart(encode_state(acc, header, self.latencies), copy=False)
        self.latencies = []
        self.dirty.discard(number)
        if final:
            del self.maps[number]

    def handle(self, parts: list[Any]) -> bool:
        """Apply one coordinator message; False on quit."""
        kind = parts[0].bytes
        if kind == FRAME:
            h = P.unpack(parts[1].bytes)
            frame = np.frombuffer(parts[2].buffer, dtype=P.FRAME_DTYPES[h["dtype"]]).reshape(h["shape"])
            self._acc(h["map"]).process_frame(frame, h["index"], h["eta"], h["phi"], h["nu"], h["delta"])
            self.latencies += (h["seq"], time.time() - h["t"])
            self.dirty.add(h["map"])
        elif kind == MAP:
            h = P.unpack(parts[1].bytes)
            self.map_shapes[h["map"]] = tuple(h["map_shape"])  # type: ignore[assignment]
        elif kind == FINAL:
            h = P.unpack(parts[1].bytes)
            self._send(h["map"], final=True)
        elif kind == SETUP:
            h = P.unpack(parts[1].bytes)
            self.run, self.geometry = h["run"], geometry_of(h)
            self.options = accumulator_options(h)
            self.default_shape = tuple(h["map_shape"])  # type: ignore[assignment]
            self.mask = np.frombuffer(parts[2].buffer, dtype=np.uint8).reshape(h["frame_shape"]).copy() if len(parts) > 2 else None
            self.maps.clear()
            self.map_shapes.clear()
            self.dirty.clear()
        elif kind == QUIT:
            return False
        return True

    @staticmethod
    def warm_up() -> None:
        """Load the compiled kernels now, not on the first real frame (it would wait ~1 s)."""
        geometry = DetectorGeometry(10000.0, 1.0, (5.5e-5, 5.5e-5), (0.0, 0.0), (16, 16))
        for dtype in (np.uint16, np.uint32):
            acc = MomentAccumulator(geometry, (1, 1), roi=(4, 12, 4, 12))
            acc.process_frame(np.ones((16, 16), dtype=dtype), 0, 10.0, 0.0, 0.0, 30.0)
            acc.finalize(partial=True)

    def serve(self) -> None:
        self.warm_up()
        self.outbox.send_multipart([READY, P.pack({"worker": self.id})])
        last = time.monotonic()
        try:
            while True:
                if self.inbox.poll(50):
                    for _ in range(256):
                        try:
                            parts = self.inbox.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        if not self.handle(parts):
                            return
                now = time.monotonic()
                if now - last >= self.publish_interval_s:
                    last = now
                    for number in list(self.dirty):
                        self._send(number, final=False)
        finally:
            self.inbox.close(linger=0)
            self.outbox.close()


def worker_main(worker_id: int, inbox: str, outbox: str, publish_interval_s: float) -> None:
    """Entry point of a worker process (multiprocessing spawn target)."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s live-worker-{worker_id} %(levelname)s: %(message)s")
    context = zmq.Context()
    LiveWorker(worker_id, inbox, outbox, publish_interval_s, context).serve()
    context.term()


class WorkerPool:
    """N worker processes, each fed by its own PUSH socket, all reporting to one PULL socket."""

    def __init__(self, n: int, context: zmq.Context, publish_interval_s: float, transport: str = "ipc") -> None:
        self._dir = tempfile.mkdtemp(prefix="opmon-live-") if transport == "ipc" else None

        def bind(sock: zmq.Socket, name: str) -> str:
            if self._dir is not None:       # local workers: ipc is cheaper than tcp loopback
                endpoint = f"ipc://{self._dir}/{name}"
                sock.bind(endpoint)
                return endpoint
            return f"tcp://127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}"

        self.results = context.socket(zmq.PULL)
        self.results.setsockopt(zmq.LINGER, 0)
        outbox = bind(self.results, "results")
        spawn = multiprocessing.get_context("spawn")
        self.inboxes: list[zmq.Socket] = []
        self.processes: list[Any] = []
        for i in range(n):
            inbox = context.socket(zmq.PUSH)
            inbox.setsockopt(zmq.SNDHWM, 100)
            inbox.setsockopt(zmq.LINGER, 0)
            endpoint = bind(inbox, f"worker{i}")
            self.inboxes.append(inbox)
            proc = spawn.Process(target=worker_main, args=(i, endpoint, outbox, publish_interval_s),
                                 name=f"opmon-live-worker-{i}", daemon=True)
            proc.start()
            self.processes.append(proc)
        self._wait_ready(n)

    def _wait_ready(self, n: int, timeout_s: float = 60.0) -> None:
        """Block until every worker has imported its kernels and connected (bounded)."""
        ready: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(ready) < n and time.monotonic() < deadline:
            if self.results.poll(100):
                parts = self.results.recv_multipart()
                if parts[0] == READY:
                    ready.add(int(P.unpack(parts[1])["worker"]))
            dead = [p.name for p in self.processes if p.exitcode is not None]
            if dead:
                raise OpmonError(f"live worker process(es) {', '.join(dead)} exited during start-up")
        if len(ready) < n:
            raise OpmonError(f"only {len(ready)} of {n} live workers started within {timeout_s:.0f} s")

    def close(self) -> None:
        """Ask every worker to quit, wait a little, terminate stragglers, close the sockets."""
        for inbox in self.inboxes:
            try:
                inbox.send_multipart([QUIT], zmq.NOBLOCK)
            except zmq.Again:
                pass
        for proc in self.processes:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        for sock in [*self.inboxes, self.results]:
            sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
