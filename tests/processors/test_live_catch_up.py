"""A final map that went to an archiver which died before writing it is handed over again.

ZeroMQ drops what was queued towards a peer that went away, so the live processor's idle
catch-up looks for archived maps without final maps and sends the ones it made again
(or remakes them from the archive when they are no longer in memory).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.live.outputs import MapOutputs
from opmon.processors.live.recovery import catch_up
from opmon.processors.live.engine import accumulator_options, geometry_of
from opmon.processors.maps import read_map_result
from opmon.streaming.archive.layout import maps_file_name
from opmon.streaming.archive.archiver import Archiver
from opmon.streaming.publisher import ZmqFrameSink

from tests.processors.conftest import FRAME, GEOMETRY, MAP, synthetic_map

OPTIONS = {"roi": [0, FRAME[0], 0, FRAME[1]], "threshold": 0, "background": "auto"}


def _archive_one_map(archive_dir, frames_ep: str, maps_ep: str | None, frames=None) -> tuple[str, Archiver]:
    """Send one map (default: `synthetic_map`) through a real ZmqFrameSink to a real Archiver;
    returns (its frames, the archiver)."""
    archiver = Archiver(archive_dir, frames_ep, None, maps_ep, flush_interval_s=0.1)
    sink = ZmqFrameSink([frames_ep], bind=True, stall_timeout_s=20)
    frames = frames if frames is not None else synthetic_map(0, seed=3)
    sender = threading.Thread(target=lambda: (
        sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY),
        sink.start_map(len(frames)),
        [sink.send_frame(fr, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0) for fr, p, eta in frames],
        sink.stop_run()))
    sender.start()
    deadline = time.monotonic() + 30
    # the sender can be done before the archiver took the run's start: wait for the run to be taken and closed
    while (sender.is_alive() or not archiver.runs or archiver.run_dir is not None) and time.monotonic() < deadline:
        archiver.poll_once(50)
    sender.join()
    sink.close()
    archiver.flush()
    return frames, archiver


def _made_map(archive_dir, uid: str):
    from opmon.processors.live.recovery import map_from_archive
    from opmon.streaming.archive.reader import RunArchive
    archive = RunArchive(archive_dir, uid)

    def make(start, mask, shape):
        return MomentAccumulator(geometry_of(start), shape, detector_mask=mask, **accumulator_options(OPTIONS))
    return map_from_archive(archive, 0, make)


def test_a_final_map_lost_with_a_dying_archiver_is_sent_again(tmp_path):
    ctx = zmq.Context()
    archive_dir = tmp_path / "archive"
    frames_ep, maps_ep = f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/maps"
    try:
        _, first = _archive_one_map(archive_dir, frames_ep, None)
        uid = next(p.name for p in archive_dir.iterdir() if p.is_dir())
        first.close()
        # the archiver that takes the final map and dies before writing it
        dying = ctx.socket(zmq.PULL)
        dying.bind(maps_ep)
        outputs = MapOutputs(ctx, None, maps_ep)
        acc, n = _made_map(archive_dir, uid)
        outputs.final(acc, run=uid, number=0, n_frames=n, frames_lost=0, options=OPTIONS)
        assert dying.poll(5000) and dying.recv_multipart()      # taken ... and gone with it
        dying.close(linger=0)
        assert not (archive_dir / uid / maps_file_name(0)).exists()

        restarted = Archiver(archive_dir, f"ipc://{tmp_path}/frames2", None, maps_ep, flush_interval_s=0.1)
        assert catch_up(archive_dir, outputs, skip_runs=set(), roi=None, threshold=0,
                        background="auto") == 1
        final = archive_dir / uid / maps_file_name(0)
        # as the service does: catch up again while the map is still missing (a resend can go
        # into the dying peer's pipe before ZeroMQ notices it closed, and is lost with it)
        deadline = time.monotonic() + 20
        next_catch_up = time.monotonic() + 1.0
        while not final.exists() and time.monotonic() < deadline:
            restarted.poll_once(50)
            outputs.send_unarchived()
            if time.monotonic() >= next_catch_up and not final.exists():
                next_catch_up = time.monotonic() + 1.0
                catch_up(archive_dir, outputs, skip_runs=set(), roi=None, threshold=0,
                         background="auto")
        restarted.close()
        outputs.close()
        assert final.exists(), "the final map was not handed to the restarted archiver"
        import h5py
        with h5py.File(final, "r") as f:
            archived = read_map_result(f["entry"])
        expected = outputs.results[(uid, 0)]
        np.testing.assert_array_equal(archived.d_spacing, expected.d_spacing)
        # the restarted archiver took maps of a run it had not seen start: run.h5 keeps the run's
        # stream start (a later restart resumes from it), its end and the map's link
        from opmon.streaming.archive.reader import RunArchive
        assert RunArchive(archive_dir, uid).start(mask_wait_s=0.0) is not None
        with h5py.File(archive_dir / uid / "run.h5", "r") as f:
            assert f.attrs["state"] == "done" and "maps" in f["entry0"]
        # nothing left to catch up: the archive now holds it
        assert catch_up(archive_dir, outputs, skip_runs=set(), roi=None, threshold=0,
                        background="auto") == 0
    finally:
        ctx.destroy(linger=0)


def test_a_map_made_from_the_archive_with_the_auto_roi_is_the_map_opmon_process_makes(tmp_path):
    """A map no processor delivered takes, with the auto ROI, the plan `opmon process` takes from
    the whole archived map (ROI, bad pixels), as the live processor's own maps do."""
    import h5py

    from opmon.processors.offline import ProcessOptions, process_entry
    from tests.processors.conftest import assert_same_maps

    ctx = zmq.Context()
    archive_dir = tmp_path / "archive"
    frames_ep, maps_ep = f"ipc://{tmp_path}/frames", f"ipc://{tmp_path}/maps"
    try:
        # an eta-outer map whose first scans are off the rocking curve (background only), as a real
        # map starts: the first frames show no peak, the whole map does
        rng = np.random.default_rng(7)
        frames = [(rng.poisson(0.01, FRAME).astype(np.uint32), p, eta) if k < 5 * MAP[0] * MAP[1] else (fr, p, eta)
                  for k, (fr, p, eta) in enumerate(synthetic_map(0, seed=3))]
        _, archiver = _archive_one_map(archive_dir, frames_ep, None, frames)
        uid = next(p.name for p in archive_dir.iterdir() if p.is_dir())
        archiver.close()
        taker = ctx.socket(zmq.PULL)
        taker.bind(maps_ep)
        outputs = MapOutputs(ctx, None, maps_ep)
        assert catch_up(archive_dir, outputs, skip_runs=set(), roi="auto", threshold=0, background="auto") == 1
        made = outputs.results[(uid, 0)]
        outputs.close()
        with h5py.File(archive_dir / uid / "run.h5", "r") as f:
            offline, _ = process_entry(f["entry0"], ProcessOptions(roi="auto"))
        assert_same_maps(made, offline)
    finally:
        ctx.destroy(linger=0)
