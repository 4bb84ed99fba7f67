"""The bluesky follower's rules, on documents composed with event-model and a real SWMR detector
file, sent through a real ZmqFrameSink: grid order (against bluesky's own snaking), where angles
come from, waiting for frames, and what happens to runs it cannot follow."""
from __future__ import annotations

import json
import pickle
import threading
import time

import h5py
import msgpack
import numpy as np
import pytest
import zmq
from bluesky.utils import snake_cyclers
from cycler import cycler
from event_model import compose_run

from opmon.errors import DetectorFileError
from opmon.streaming import protocol as P
from opmon.streaming.bluesky_options import FollowOptions
from opmon.streaming.bluesky_source import BlueskyFollower
from opmon.streaming.bluesky_wire import RejectedDocument, decode_document
from opmon.streaming.detector_file import DetectorFile
from opmon.streaming.publisher import ZmqFrameSink
from opmon.streaming.scan_grid import ScanGrid

GEOMETRY = dict(incident_energy=10000.0, distance=1.6, x_pixel_size=55e-6, y_pixel_size=55e-6, beam_center_x=8.0,
                beam_center_y=6.0)
FRAME = (12, 16)


@pytest.mark.parametrize("shape, snaking", [((3, 4, 5), (False, True, True)), ((4, 3), (False, True)),
                                            ((2, 3), (False, False)), ((7,), (False,))])
def test_grid_indices_follow_bluesky_snake_cyclers(shape, snaking):
    order = list(snake_cyclers([cycler(f"m{i}", range(n)) for i, n in enumerate(shape)], list(snaking)))
    grid = ScanGrid(shape, snaking)
    for point, positions in enumerate(order):
        expected = tuple(positions[f"m{i}"] for i in range(len(shape)))
        assert grid.axis_indices(point) == expected, point
        assert grid.map_index(point) == (expected[-2] * shape[-1] + expected[-1] if len(shape) > 1 else expected[0])


class Stream:
    """A real ZmqFrameSink whose messages a PULL socket collects, checked by opmon's own parser."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        port = self.pull.bind_to_random_port("tcp://127.0.0.1")
        self.sink = ZmqFrameSink([f"tcp://127.0.0.1:{port}"], bind=False, context=self.ctx, stall_timeout_s=10)

    def messages(self) -> list[P.Message]:
        out = []
        while self.pull.poll(300):
            msg = P.parse(self.pull.recv_multipart())
            out.append(P.Message(msg.kind, msg.header, None if msg.array is None else msg.array.copy()))
        return out

    def close(self) -> None:
        self.sink.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def stream():
    s = Stream()
    yield s
    s.close()


def write_frames(path, n, dtype=np.uint8, swmr=True):
    """A detector file as ophyd-async's pattern generator writes it: SWMR, one chunk per frame."""
    frames = (np.arange(n * FRAME[0] * FRAME[1]).reshape((n,) + FRAME) % 251).astype(dtype)
    with h5py.File(path, "w", libver="latest") as f:
        f.create_dataset("/entry/data/data", data=frames, maxshape=(None,) + FRAME, chunks=(1,) + FRAME)
        if swmr:
            f.swmr_mode = True
    return frames


def grid_run(path, shape=(2, 3), snaking=(False, True), md=None, dtype="|u1", mimetype="application/x-hdf5"):
    """Documents of a grid_scan of a detector writing `path`, composed with event-model."""
    md = {"shape": list(shape), "snaking": list(snaking), "plan_name": "grid_scan", "motors": ["y", "x"],
          **GEOMETRY, **(md or {})}
    run = compose_run(metadata=md)
    baseline = run.compose_descriptor(name="baseline", data_keys={"delta": dict(source="sim", dtype="number", shape=[])})
    primary = run.compose_descriptor(
        name="primary",
        data_keys={"det": dict(source="file", dtype="array", shape=[1, *FRAME], dtype_numpy=dtype, external="STREAM:"),
                   "x": dict(source="sim", dtype="number", shape=[]), "y": dict(source="sim", dtype="number", shape=[]),
                   "eta": dict(source="sim", dtype="number", shape=[])},
        configuration={"diffractometer": {"data": {"nu": 0.5}, "timestamps": {"nu": 0.0},
                                          "data_keys": {"nu": dict(source="sim", dtype="number", shape=[])}}})
    resource = run.compose_stream_resource(mimetype=mimetype, uri=f"file://localhost{path}", data_key="det",
                                           parameters={"dataset": "/entry/data/data", "chunk_shape": [1, *FRAME]})
    return run, baseline, primary, resource


def point_docs(primary, resource, seq, x, y, eta):
    datum = resource.compose_stream_datum(indices={"start": seq - 1, "stop": seq},
                                          seq_nums={"start": seq, "stop": seq + 1}, descriptor=primary.descriptor_doc)
    event = primary.compose_event(data={"x": x, "y": y, "eta": eta}, timestamps={"x": 0, "y": 0, "eta": 0}, seq_num=seq)
    return [("stream_datum", datum), ("event", event)]


def test_points_go_in_seq_order_with_angles_from_event_baseline_configuration_and_option(tmp_path, stream):
    frames = write_frames(tmp_path / "det.h5", 6)
    run, baseline, primary, resource = grid_run(tmp_path / "det.h5")
    follower = BlueskyFollower(stream.sink, FollowOptions(angles={"phi": 1.25}))
    docs = [("start", run.start_doc), ("descriptor", baseline.descriptor_doc),
            ("event", baseline.compose_event(data={"delta": 35.0}, timestamps={"delta": 0})),
            ("stream_resource", resource.stream_resource_doc), ("descriptor", primary.descriptor_doc)]
    points = [point_docs(primary, resource, s, x=s * 0.1, y=0.0, eta=19.0 + s / 100) for s in range(1, 7)]
    points[0] = points[0][::-1]          # an event before its datum: sent when both are there
    points[2], points[3] = points[3], points[2]   # point 4's documents before point 3's: still sent 3 then 4
    for name, doc in docs + [d for p in points for d in p] + [("stop", run.compose_stop())]:
        follower(name, doc)
    msgs = stream.messages()
    assert [m.kind for m in msgs] == ["start", "map_start"] + ["frame"] * 6 + ["map_end", "stop"]
    start = msgs[0].header
    assert start["run"] == run.start_doc["uid"] and start["map_shape"] == [2, 3] and start["dtype"] == "uint16"
    assert start["beam_center"] == [6.0, 8.0] and start["pixel_size_m"] == [55e-6, 55e-6]
    assert start["metadata"]["angle_sources"] == {"eta": "event eta", "phi": "fixed 1.25", "nu": "configuration nu",
                                                  "delta": "baseline delta"}
    sent = [m for m in msgs if m.kind == "frame"]
    assert [m.header["seq"] for m in sent] == list(range(6))
    assert [m.header["index"] for m in sent] == [0, 1, 2, 5, 4, 3]        # second row snakes back
    assert [m.header["eta"] for m in sent] == [19.0 + s / 100 for s in range(1, 7)]
    assert {(m.header["phi"], m.header["nu"], m.header["delta"]) for m in sent} == {(1.25, 0.5, 35.0)}
    assert [m.header["x"] for m in sent] == [s * 0.1 for s in range(1, 7)]
    for m, frame in zip(sent, frames):
        np.testing.assert_array_equal(m.array, frame.astype(np.uint16))
    assert msgs[-1].header["exit_status"] == "success" and follower.finished == [run.start_doc["uid"]]


def test_detector_file_waits_for_frames_a_datum_announces_and_says_when_they_never_come(tmp_path):
    path = tmp_path / "det.h5"
    f = h5py.File(path, "w", libver="latest")
    ds = f.create_dataset("data", shape=(0,) + FRAME, maxshape=(None,) + FRAME, chunks=(1,) + FRAME, dtype=np.uint16)
    f.swmr_mode = True

    def append_later():
        time.sleep(0.3)
        for i in range(3):
            ds.resize(i + 1, axis=0)
            ds[i] = i + 1
            ds.flush()

    writer = threading.Thread(target=append_later)
    writer.start()
    reader = DetectorFile(path, "data", wait_s=20)
    try:
        got = reader.read(1, 3)             # not yet written when asked
        writer.join()
        assert got.shape == (2,) + FRAME and got[:, 0, 0].tolist() == [2, 3]
        reader.wait_s = 0.2
        with pytest.raises(DetectorFileError, match=r"det.h5:data holds 3 frames after 0 s; the StreamDatum says "
                                                    r"frames up to 5 exist"):
            reader.read(3, 5)
    finally:
        reader.close()
        f.close()


def test_a_run_it_cannot_follow_stops_as_failed_keeping_frames_sent_and_the_next_run_is_followed(tmp_path, stream):
    write_frames(tmp_path / "det.h5", 2)          # the datum of point 3 names a frame never written
    run, baseline, primary, resource = grid_run(tmp_path / "det.h5")
    follower = BlueskyFollower(stream.sink, FollowOptions(angles={"phi": 0.0, "nu": 0.0, "delta": 30.0}, frame_wait_s=0.2))
    docs = [("start", run.start_doc), ("descriptor", primary.descriptor_doc),
            ("stream_resource", resource.stream_resource_doc)]
    docs += [d for s in range(1, 5) for d in point_docs(primary, resource, s, 0.0, 0.0, 19.0)]
    for name, doc in docs + [("stop", run.compose_stop())]:
        follower(name, doc)
    write_frames(tmp_path / "det2.h5", 6)
    run2, _, primary2, resource2 = grid_run(tmp_path / "det2.h5")
    for name, doc in [("start", run2.start_doc), ("descriptor", primary2.descriptor_doc),
                      ("stream_resource", resource2.stream_resource_doc)] + \
            [d for s in range(1, 7) for d in point_docs(primary2, resource2, s, 0.0, 0.0, 19.0)] + [("stop", run2.compose_stop())]:
        follower(name, doc)
    msgs = stream.messages()
    first = [m for m in msgs if m.header.get("run") == run.start_doc["uid"]]
    assert [m.kind for m in first] == ["start", "map_start", "frame", "frame", "map_end", "stop"]
    assert first[-1].header["exit_status"] == "fail" and "holds 2 frames" in first[-1].header["reason"]
    assert "holds 2 frames" in follower.failed[run.start_doc["uid"]]
    assert follower.ignored["failed_run"] >= 3          # its later datums, events and stop
    second = [m for m in msgs if m.header.get("run") == run2.start_doc["uid"]]
    assert sum(m.kind == "frame" for m in second) == 6 and second[-1].header["exit_status"] == "success"


@pytest.mark.parametrize("change, message", [
    ({"md": {"beam_center_x": None}}, "no beam_center_x"),
    ({"md": {"distance": -1.0}}, "distance = -1.0 must be > 0"),
    ({"dtype": "<f4"}, "detector dtype float32 is not supported"),
    ({"mimetype": "application/x-tiff"}, "mimetype 'application/x-tiff' is not supported"),
    ({"angles": {}}, "angle(s) phi, delta: data key(s) 'phi', 'delta' in no event, baseline or configuration"),
    ({"md": {"snaking": [False]}}, "does not match 'shape'"),
])
def test_a_run_refused_up_front_names_why_and_sends_nothing_of_it(tmp_path, stream, change, message):
    write_frames(tmp_path / "det.h5", 6)
    md = {k: v for k, v in change.get("md", {}).items() if v is not None}
    run, _, primary, resource = grid_run(tmp_path / "det.h5", md=md, dtype=change.get("dtype", "|u1"),
                                         mimetype=change.get("mimetype", "application/x-hdf5"))
    if "beam_center_x" in change.get("md", {}):
        del run.start_doc["beam_center_x"]
    follower = BlueskyFollower(stream.sink, FollowOptions(angles=change.get("angles", {"phi": 0.0, "nu": 0.0,
                                                                                         "delta": 30.0})))
    for name, doc in [("start", run.start_doc), ("descriptor", primary.descriptor_doc),
                      ("stream_resource", resource.stream_resource_doc),
                      *point_docs(primary, resource, 1, 0.0, 0.0, 19.0), ("stop", run.compose_stop())]:
        follower(name, doc)
    assert message in follower.failed[run.start_doc["uid"]]
    assert not any(m.kind == "frame" for m in stream.messages())


def test_a_scan_without_a_grid_is_skipped_with_a_reason(tmp_path, stream):
    run = compose_run(metadata={"plan_name": "count"})
    follower = BlueskyFollower(stream.sink)
    follower("start", run.start_doc)
    follower("stop", run.compose_stop())
    assert "not a grid scan" in follower.skipped[run.start_doc["uid"]] and not stream.messages()


def test_decoding_takes_msgpack_and_json_and_refuses_pickle_unknown_names_and_invalid_documents():
    start = compose_run(metadata={"shape": [2, 3]}).start_doc
    assert decode_document(b" start " + msgpack.packb(start)) == ("start", start)
    assert decode_document(b"p1 start " + json.dumps(start).encode(), prefix=b"p1") == ("start", start)
    assert decode_document(b"p2 start " + json.dumps(start).encode(), prefix=b"p1") is None
    for message, reason, text in [
        (b" start " + pickle.dumps(start), "pickle", "opmon never unpickles"),
        (b" bogus " + msgpack.packb(start), "name", "unknown document name 'bogus'"),
        (b" start \xc1\xc1", "encoding", "neither msgpack nor JSON"),
        (b"start", "parts", "not 'prefix name document'"),
        (b" start " + msgpack.packb({"time": 1.0}), "schema", "'uid' is a required property"),
        (b" stop " + msgpack.packb([1, 2]), "schema", "not a map"),
    ]:
        with pytest.raises(RejectedDocument, match=text) as err:
            decode_document(message)
        assert err.value.reason == reason


def test_several_frames_per_event_all_go_to_the_events_map_pixel(tmp_path, stream):
    frames = write_frames(tmp_path / "det.h5", 12, dtype=np.uint16)
    run, _, primary, resource = grid_run(tmp_path / "det.h5", dtype="<u2")
    primary.descriptor_doc["data_keys"]["det"]["shape"] = [2, *FRAME]     # collections_per_event = 2
    follower = BlueskyFollower(stream.sink, FollowOptions(angles={"phi": 0.0, "nu": 0.0, "delta": 30.0}))
    for name, doc in [("start", run.start_doc), ("descriptor", primary.descriptor_doc),
                      ("stream_resource", resource.stream_resource_doc)] + \
            [d for s in range(1, 7) for d in point_docs(primary, resource, s, 0.0, 0.0, 19.0)] + [("stop", run.compose_stop())]:
        follower(name, doc)
    msgs = stream.messages()
    assert msgs[1].header["n_frames"] == 12
    sent = [m for m in msgs if m.kind == "frame"]
    assert [m.header["index"] for m in sent] == [0, 0, 1, 1, 2, 2, 5, 5, 4, 4, 3, 3]
    np.testing.assert_array_equal(np.stack([m.array for m in sent]), frames)


def test_a_run_whose_frames_are_not_streamresource_says_so_at_its_stop(tmp_path, stream):
    run = compose_run(metadata={"shape": [2, 3], **GEOMETRY})
    primary = run.compose_descriptor(name="primary", data_keys={
        "det_image": dict(source="PV:det", dtype="array", shape=[*FRAME], external="FILESTORE:")})
    follower = BlueskyFollower(stream.sink, FollowOptions(angles={a: 0.0 for a in ("eta", "phi", "nu", "delta")}))
    for name, doc in [("start", run.start_doc), ("descriptor", primary.descriptor_doc), ("stop", run.compose_stop())]:
        follower(name, doc)
    assert "image keys seen: det_image (FILESTORE:) (opmon follows STREAM: keys only)" in follower.failed[run.start_doc["uid"]]
    assert not follower.finished and not stream.messages()
