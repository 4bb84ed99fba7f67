"""The archiver keeps every frame, reading and final map, and survives kill -9 with readable files."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import zmq

from opmon.streaming.archive.layout import COMPLETE
from opmon.streaming.archive.maps_file import read_axes
from opmon.streaming.archive.raw import iter_frame_blocks, read_raw_meta
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.geometry import DetectorGeometry
from opmon.processors.maps import read_map_result
from opmon.streaming.map_messages import encode_map
from opmon.streaming import protocol as P
from opmon.streaming.archive.archiver import Archiver
from opmon.streaming.publisher import ZmqFrameSink

from tests.streaming.conftest import GEOMETRY, frames_for, write_config
from tests.waiting import stop_processes, until

SHAPE = (16, 16)
MAP = (3, 4)


def _serve(archiver):
    done = threading.Event()
    thread = threading.Thread(target=archiver.run, kwargs={"stop_when": done.is_set}, daemon=True)
    thread.start()
    return done, thread


def _push(ctx, endpoint, bind=True):
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    (sock.bind if bind else sock.connect)(endpoint)
    return sock


def _wait_for(predicate, timeout=20.0) -> bool:
    return until(predicate, timeout)


@pytest.mark.parametrize("acknowledging", [False, True], ids=["plain", "archiver-with-acks"])
def test_a_run_is_archived_with_frames_readings_documents_and_maps(tmp_path, ctx, acknowledging):
    """`archiver-with-acks`: an archiver that expects acknowledgements, fed by a sender that makes
    none, holds the stream 1 s for a sync that never comes; the final maps sent meanwhile must wait
    for the run's start, not be dropped as maps of an unknown run."""
    # Every socket binds port 0 and is connected to only once bound: no port picked ahead
    # (bound, released, and maybe taken by another process before the test binds it), and no
    # archiver connecting to a port nobody listens on yet (retries every 100 ms, and a connect
    # to a free port of the ephemeral range can even land on itself).
    sink = ZmqFrameSink(["tcp://127.0.0.1:0"], context=ctx, stall_timeout_s=10)
    docs = _push(ctx, "tcp://127.0.0.1:0")
    hellos = ctx.socket(zmq.PULL)
    hellos.bind("tcp://127.0.0.1:0")
    archiver = Archiver(tmp_path / "archive", sink.endpoints[0], docs.getsockopt_string(zmq.LAST_ENDPOINT),
                        "tcp://127.0.0.1:0", flush_interval_s=0.2,
                        ack_endpoint=hellos.getsockopt_string(zmq.LAST_ENDPOINT) if acknowledging else None)
    maps = _push(ctx, archiver.maps.getsockopt_string(zmq.LAST_ENDPOINT), bind=False)
    done, thread = _serve(archiver)
    frames = frames_for(2 * 24, shape=SHAPE)
    run = "run-0001"
    # The bluesky start document and first events come before the frame stream starts.
    docs.send(P.pack({"v": 1, "kind": "doc", "name": "start", "doc": {"uid": run, "plan_name": "operando_series"}}))
    docs.send(P.pack({"v": 1, "kind": "doc", "name": "event", "doc": {"descriptor": "d1", "seq_num": 1}}))
    assert _wait_for(lambda: len(archiver.early_docs) == 2)
    sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=MAP, metadata={"sample": "LMNO"}, run=run, **GEOMETRY)
    geometry = DetectorGeometry(GEOMETRY["energy_ev"], GEOMETRY["distance_m"], GEOMETRY["pixel_size_m"],
                                GEOMETRY["beam_center"], SHAPE)
    for m in range(2):
        sink.start_map(24, trigger={"kind": "voltage", "voltage_v": 4.7 + 0.05 * m})
        acc = MomentAccumulator(geometry, MAP, background=None)
        for i in range(24):
            f = frames[m * 24 + i]
            sink.send_frame(f, index=i % 12, eta=10 + 0.01 * (i // 12), phi=0, nu=0, delta=30, x=0.1 * i, y=0.0)
            acc.process_frame(f, i % 12, 10 + 0.01 * (i // 12), 0, 0, 30)
            docs.send(P.pack({"v": 1, "kind": "reading", "run": run, "t": time.time(), "voltage_v": 4.6 + 0.001 * i,
                              "current_a": 1e-5}))
        sink.end_map()
        maps.send_multipart(encode_map(acc.finalize(), run=run, map_number=m, final=True, frames=24, n_frames=24,
                                       frames_lost=0, options={"roi": [0, 16, 0, 16]}))
    sink.stop_run()
    docs.send(P.pack({"v": 1, "kind": "doc", "name": "stop", "doc": {"run_start": run, "exit_status": "success"}}))
    master = tmp_path / "archive" / run / "run.h5"

    def finished():
        try:
            with h5py.File(master, "r") as f:
                return (f.attrs["state"] == "done" and "document_stop" in f.attrs
                        and all("maps" in f[f"entry{m}"] for m in range(2)))
        except (OSError, KeyError):
            return False

    assert _wait_for(finished)
    assert _wait_for(lambda: run not in archiver.sidecars)   # closed by the stop document
    done.set()
    thread.join(10)
    with h5py.File(master, "r") as f:
        assert json.loads(f.attrs["start"])["metadata"] == {"sample": "LMNO"}
        assert json.loads(f.attrs["document_start"])["plan_name"] == "operando_series"
        for m in range(2):
            entry = f[f"entry{m}"]
            meta = read_raw_meta(entry)
            assert meta.n_frames == 24 and meta.map_shape == MAP and entry.attrs["complete"] == 1
            stored = np.concatenate([b.copy() for _, b in iter_frame_blocks(entry, block=7)])
            np.testing.assert_array_equal(stored, frames[m * 24:(m + 1) * 24])
            np.testing.assert_array_equal(entry["scan/sequence"][()], np.arange(m * 24, (m + 1) * 24))
            np.testing.assert_allclose(meta.x_um, 0.1 * np.arange(24))
            result = read_map_result(entry)
            assert result.d_spacing.shape == MAP and entry["maps"].attrs["frames_received"] == 24
            # frame i at x = 0.1 i µm, map index i % 12: column c holds i = c, c + 4, ..., c + 20
            np.testing.assert_allclose(read_axes(entry["maps"])[0], 0.1 * (np.arange(4) + 10), atol=1e-12)
            np.testing.assert_allclose(read_axes(entry["maps"])[1], np.zeros(3))
        log = f["potentiostat"]
        assert log.attrs["NX_class"] == "NXlog" and log["value"].shape == (48,)
        np.testing.assert_allclose(log["value"][:24], 4.6 + 0.001 * np.arange(24))
    lines = (tmp_path / "archive" / run / "documents.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["start", "event", "stop"]
    sink.close()
    docs.close()
    maps.close()
    _assert_nexus_valid(tmp_path / "archive" / run)


def _assert_nexus_valid(run_dir) -> None:
    """Every HDF5 file the archive wrote passes the NeXus validator punx without an ERROR finding."""
    import punx.finding
    import punx.validate
    files = sorted(run_dir.glob("*.h5"))
    assert {p.name for p in files} >= {"run.h5", "potentiostat.h5", "map_0000.h5", "map_0000_maps.h5"}
    for path in files:
        validator = punx.validate.Data_File_Validator()
        validator.validate(str(path))
        errors = [f"{f.h5_address}: {f.comment}" for f in validator.validations if f.status == punx.finding.ERROR]
        assert not errors, f"{path.name} is not valid NeXus: {errors}"


def test_a_run_stopped_before_its_first_map_keeps_its_documents_and_readings(tmp_path, ctx):
    """Aborted while waiting for its first trigger: no frame was ever sent, but its documents and
    potentiostat readings are acquired data: archived after the grace time, run.h5 done/abort.
    A run whose frames come after its stop document (another channel) is not archived twice."""
    docs = _push(ctx, "tcp://127.0.0.1:0")
    sink = ZmqFrameSink(["tcp://127.0.0.1:0"], context=ctx, stall_timeout_s=10)   # silent for the first run
    archiver = Archiver(tmp_path / "archive", sink.endpoints[0], docs.getsockopt_string(zmq.LAST_ENDPOINT), None,
                        flush_interval_s=0.1, grace_s=2.0)
    done, thread = _serve(archiver)
    t0 = time.time()
    run = "run-without-frames"
    docs.send(P.pack({"v": 1, "kind": "doc", "name": "start", "doc": {"uid": run, "time": t0, "plan_name": "operando_series"}}))
    for i in range(5):
        docs.send(P.pack({"v": 1, "kind": "reading", "run": run, "t": t0 + i, "voltage_v": 4.1 + 0.01 * i,
                          "current_a": 1e-5, "charge_mah": 0.001 * i}))
    docs.send(P.pack({"v": 1, "kind": "reading", "run": "another-run", "t": t0 + 1, "voltage_v": 3.0}))
    docs.send(P.pack({"v": 1, "kind": "doc", "name": "stop",
                      "doc": {"run_start": run, "time": t0 + 6, "exit_status": "abort", "reason": "user abort"}}))
    master = tmp_path / "archive" / run / "run.h5"
    try:
        assert _wait_for(lambda: run not in archiver.frameless_due and master.is_file() and run not in archiver.sidecars)
        # a second run whose stop document overtakes its frames (they travel on another channel)
        late = "run-with-late-frames"
        docs.send(P.pack({"v": 1, "kind": "doc", "name": "start", "doc": {"uid": late, "time": time.time()}}))
        docs.send(P.pack({"v": 1, "kind": "doc", "name": "stop", "doc": {"run_start": late, "exit_status": "success"}}))
        assert _wait_for(lambda: late in archiver.frameless_due)
        sink.start_run(frame_shape=SHAPE, dtype="uint32", map_shape=MAP, run=late, **GEOMETRY)
        sink.start_map(12)
        for i, frame in enumerate(frames_for(12, shape=SHAPE)):
            sink.send_frame(frame, index=i, eta=10.0, phi=0, nu=0, delta=30)
        sink.stop_run()
        late_master = tmp_path / "archive" / late / "run.h5"

        def late_archived() -> bool:
            try:
                with h5py.File(late_master, "r") as f:
                    return f.attrs["state"] == "done" and "entry0" in f and "document_stop" in f.attrs
            except (OSError, KeyError):
                return False
        assert _wait_for(late_archived)
        assert _wait_for(lambda: late not in archiver.frameless_due)     # dropped at the next flush, not archived again
    finally:
        done.set()
        thread.join(10)
        docs.close()
        sink.close()
    with h5py.File(master, "r") as f:
        assert f.attrs["state"] == "done" and json.loads(f.attrs["stop"])["exit_status"] == "abort"
        assert json.loads(f.attrs["document_start"])["plan_name"] == "operando_series"
        assert not [name for name in f if name.startswith("entry")]
        log = f["potentiostat"]
        np.testing.assert_allclose(log["value"][()], 4.1 + 0.01 * np.arange(5))   # not the other run's reading
    lines = (tmp_path / "archive" / run / "documents.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["start", "stop"]
    assert archiver.dropped["document_outside_run"] == 0


@pytest.mark.timeout(120)
def test_kill_9_mid_map_leaves_every_flushed_frame_readable(tmp_path, ctx):
    config, path = write_config(tmp_path)
    sink = ZmqFrameSink([config.endpoint("frames_archive")], context=ctx, stall_timeout_s=20)
    proc = subprocess.Popen([sys.executable, "-m", "opmon.cli", "archive", "--config", path],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        frames = frames_for(400, shape=(64, 64))
        run = sink.start_run(frame_shape=(64, 64), dtype="uint32", map_shape=(10, 20), **GEOMETRY)
        sink.start_map(400)
        map_file = tmp_path / "archive" / run / "map_0000.h5"

        def stored():
            try:
                with h5py.File(map_file, "r", swmr=True) as f:
                    return f["entry/instrument/detector/data"].shape[0]
            except (OSError, KeyError):
                return 0

        for i in range(150):
            sink.send_frame(frames[i], index=i % 200, eta=10, phi=0, nu=0, delta=30)
        assert _wait_for(lambda: stored() == 150), "archiver never flushed the first frames"
        for i in range(150, 300):
            sink.send_frame(frames[i], index=i % 200, eta=10, phi=0, nu=0, delta=30)
        os.kill(proc.pid, signal.SIGKILL)          # mid-map: 100 frames of this map never sent
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        for sock in sink.sockets:
            sock.close(linger=0)
    with h5py.File(map_file, "r", swmr=True) as f:
        entry = f["entry"]
        meta = read_raw_meta(entry)
        n = meta.n_frames
        assert 150 <= n <= 300
        stored_frames = np.concatenate([b.copy() for _, b in iter_frame_blocks(entry)])
        np.testing.assert_array_equal(stored_frames, frames[:n])
        np.testing.assert_array_equal(entry["scan/sequence"][()], np.arange(n))
        assert entry[COMPLETE][()] == 0
    with h5py.File(tmp_path / "archive" / run / "run.h5", "r") as f:   # master was never half-written
        assert f.attrs["state"] == "running" and "entry0" in f


@pytest.mark.timeout(180)
def test_restarted_archiver_continues_the_run_and_counts_what_the_crash_lost(tmp_path, ctx):
    config, path = write_config(tmp_path)
    sink = ZmqFrameSink([config.endpoint("frames_archive")], context=ctx, stall_timeout_s=60)
    cmd = [sys.executable, "-m", "opmon.cli", "archive", "--config", path]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [proc]
    frames = frames_for(300, shape=(32, 32))
    try:
        run = sink.start_run(frame_shape=(32, 32), dtype="uint32", map_shape=(10, 10), **GEOMETRY)
        run_dir = tmp_path / "archive" / run
        sink.start_map(200)
        for i in range(120):
            sink.send_frame(frames[i], index=i % 100, eta=10, phi=0, nu=0, delta=30)

        def stored():
            try:
                with h5py.File(run_dir / "map_0000.h5", "r", swmr=True) as f:
                    return f["entry/scan/sequence"].shape[0]
            except (OSError, KeyError):
                return 0

        assert _wait_for(lambda: stored() == 120)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log_path = tmp_path / "archiver2.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        procs.append(proc)
        for i in range(120, 200):
            sink.send_frame(frames[i], index=i % 100, eta=10, phi=0, nu=0, delta=30)
        sink.start_map(100)
        for i in range(200, 300):
            sink.send_frame(frames[i], index=i % 100, eta=10, phi=0, nu=0, delta=30)
        sink.stop_run()

        def done():
            try:
                with h5py.File(run_dir / "run.h5", "r") as f:
                    return f.attrs["state"] == "done"
            except (OSError, KeyError):
                return False

        assert _wait_for(done, 60)
    finally:
        stop_processes(procs, 20)
        for sock in sink.sockets:
            sock.close(linger=0)
    assert list(run_dir.glob("map_0000.crashed-*.h5"))
    with h5py.File(run_dir / "run.h5", "r") as f:
        seq0 = f["entry0/scan/sequence"][()]
        stored0 = np.concatenate([b.copy() for _, b in iter_frame_blocks(f["entry0"])])
        assert f["entry0"].attrs["complete"] == 1 and f["entry1"].attrs["complete"] == 1
        np.testing.assert_array_equal(f["entry1/scan/sequence"][()], np.arange(200, 300))
    assert seq0[:120].tolist() == list(range(120)) and np.all(np.diff(seq0) > 0) and seq0[-1] == 199
    np.testing.assert_array_equal(stored0, frames[seq0])        # every kept frame is the frame of its seq
    missing = 200 - seq0.size
    text = log_path.read_text()
    assert "restarted mid-run" in text
    if missing:
        assert f"{missing} frame(s) before seq" in text
