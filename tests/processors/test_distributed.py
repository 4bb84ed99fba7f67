"""`opmon process --dask`: a real local dask.distributed cluster (two worker processes, one
thread each, 127.0.0.1) reduces a run's maps in chunk-aligned tasks; the maps must equal one
process's to float rounding, and a worker killed mid-run must not change them."""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from opmon.errors import OpmonError
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.distributed import SourceSpec, decide_roi, process_plan_dask, reduce_frames, split_ranges
from opmon.processors.offline import ProcessOptions, accumulate_frames, new_accumulator, plan_raw, process_plan
from opmon.streaming.archive.layout import map_file_name
from opmon.streaming.archive.run_writer import MasterEntry, RunDirectory
from opmon.streaming.archive.sources import SourceOptions

MAPS = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mean_q")
# Sums added in another order differ in the last bits; peak_width is a difference of two nearly
# equal moments (see conftest.RTOL). A lost or doubled task moves intensity by a whole frame.
RTOL = {"peak_width": 1e-7}


def make_run(run: Path, write_raw, maps: int = 3) -> Path:
    """An archived run as the archiver leaves it: map_NNNN.h5 per map and run.h5 linking them."""
    run.mkdir()
    directory = RunDirectory(run, "run-uid-dask")
    for number in range(maps):
        write_raw(run / map_file_name(number), seed=number)
        directory.maps[number] = MasterEntry(number, frames=54, complete=True)
    return directory.write_master()


def one_process(raw: Path, out: Path, options: ProcessOptions):
    plan = plan_raw(raw, options)
    try:
        return process_plan(plan, out, options)
    finally:
        plan.close()


def on_dask(raw: Path, out: Path, options: ProcessOptions, client, task_frames: int, progress=None):
    plan = plan_raw(raw, options)
    try:
        return process_plan_dask(plan, out, options, client, progress=progress, task_frames=task_frames)
    finally:
        plan.close()


def assert_same_files(a: Path, b: Path) -> None:
    """Two maps files hold the same entries, maps (to float rounding), masks and attributes."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert list(fa) == list(fb)
        for entry in fa:
            ma, mb = fa[entry]["maps"], fb[entry]["maps"]
            for name in MAPS:
                np.testing.assert_allclose(mb[name][()], ma[name][()], rtol=RTOL.get(name, 1e-12), atol=1e-15,
                                           equal_nan=True, err_msg=f"{entry}/{name}")
            np.testing.assert_array_equal(mb["mask"][()], ma["mask"][()])
            np.testing.assert_array_equal(mb["bad_frames"][()], ma["bad_frames"][()])
            for key in ("roi", "background", "threshold", "despeckle", "source"):
                np.testing.assert_array_equal(mb.attrs[key], ma.attrs[key], err_msg=key)


def test_split_ranges_are_whole_chunks_covering_every_frame():
    assert split_ranges(54, 1, 10) == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 54)]
    assert split_ranges(100, 16, 20) == [(0, 32), (32, 64), (64, 96), (96, 100)]  # rounded up to chunks
    assert split_ranges(5, 1, 2048) == [(0, 5)]
    with pytest.raises(OpmonError):
        split_ranges(0, 1, 10)


def test_a_task_reads_and_adds_on_its_own_thread_with_the_sums_of_the_overlapped_path(raw_file, monkeypatch):
    """A Dask worker given one thread uses one core: its task runs the kernels on the task's
    thread, where `opmon process` overlaps them with the reading on a second thread; same sums."""
    options = ProcessOptions()
    plan = plan_raw(raw_file, options)
    name, kind = plan.maps[0].name, plan.kind
    plan.close()
    spec = SourceSpec((str(raw_file),), kind, SourceOptions())
    roi = decide_roi(spec, name, options)
    threads: list[int] = []
    add_block = MomentAccumulator.process_block

    def recorded(self, *args, **kwargs):
        threads.append(threading.get_ident())
        return add_block(self, *args, **kwargs)

    monkeypatch.setattr(MomentAccumulator, "process_block", recorded)
    task = reduce_frames(spec, name, 0, 54, options, roi)
    assert threads and set(threads) == {threading.get_ident()}
    threads.clear()
    source, smap = spec.open_map(name)
    with source:
        acc = new_accumulator(smap, options, roi)
        accumulate_frames(smap, acc, options)
    assert threads and threading.get_ident() not in threads
    for key, value in acc.state().items():
        np.testing.assert_array_equal(task.state[key], value, err_msg=key)


def test_archived_run_on_dask_equals_one_process(tmp_path, make_raw, dask_client):
    """Three maps of an archive run, auto ROI and background, 6 tasks per map merged in a tree."""
    run = make_run(tmp_path / "run", make_raw)
    options = ProcessOptions()
    one_process(run, tmp_path / "one.h5", options)
    progress: list[int] = []
    done = on_dask(run, tmp_path / "dask.h5", options, dask_client, task_frames=10, progress=progress.append)
    assert sorted(progress) == [4] * 3 + [10] * 15  # every frame of every map reduced once
    assert list(done) == ["entry0", "entry1", "entry2"]
    assert_same_files(tmp_path / "one.h5", tmp_path / "dask.h5")


@pytest.mark.parametrize("register", ["off", "tilt"])   # tilt: per-scan sums whose background basis has no terms
def test_fixed_roi_and_background_on_dask_equal_one_process(tmp_path, raw_file, dask_client, register):
    options = ProcessOptions(roi=(5, 35, 10, 40), background=2e-3, threshold=1, despeckle=False, register=register)
    one_process(raw_file, tmp_path / "one.h5", options)
    on_dask(raw_file, tmp_path / "dask.h5", options, dask_client, task_frames=7)
    assert_same_files(tmp_path / "one.h5", tmp_path / "dask.h5")


def _kill_one_worker(client):
    """A progress callback that SIGKILLs one worker process at the first finished task."""
    pid = next(iter(client.run(os.getpid).values()))
    killed: list[int] = []

    def progress(_frames: int) -> None:
        if not killed:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return progress, killed


def test_a_worker_killed_mid_run_changes_nothing(tmp_path, make_raw, dask_client):
    """Dask runs the dead worker's tasks again elsewhere (its nanny restarts it): same maps."""
    run = make_run(tmp_path / "run", make_raw)
    one_process(run, tmp_path / "one.h5", ProcessOptions())
    progress, killed = _kill_one_worker(dask_client)
    on_dask(run, tmp_path / "dask.h5", ProcessOptions(), dask_client, task_frames=2, progress=progress)
    assert killed
    assert_same_files(tmp_path / "one.h5", tmp_path / "dask.h5")
    dask_client.wait_for_workers(2, timeout=60)


def test_a_worker_dying_with_no_retry_left_is_one_message_and_no_file(tmp_path, make_raw, dask_client):
    run = make_run(tmp_path / "run", make_raw)

    def allow(failures: int, dask_scheduler=None) -> int:
        before, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, failures
        return before

    before = dask_client.run_on_scheduler(allow, 0)
    try:
        progress, killed = _kill_one_worker(dask_client)
        with pytest.raises(OpmonError, match=r"a Dask worker died while reducing .*run\.h5:/entry\d.*no maps were written") as died:
            on_dask(run, tmp_path / "dask.h5", ProcessOptions(), dask_client, task_frames=2, progress=progress)
    finally:
        dask_client.run_on_scheduler(allow, before)
    assert killed
    assert not [p for p in tmp_path.iterdir() if p.name != "run"]  # no maps file, no temporary
    dask_client.wait_for_workers(2, timeout=60)


def test_powder_spots_on_dask_equal_one_process(tmp_path, dask_client):
    """The spots are part of the map's plan, decided once and shipped to every frame task."""
    from tests.processors.test_powder_spots import spotted_raw

    raw = spotted_raw(tmp_path / "spotted.h5")
    options = ProcessOptions(roi=(2, 36, 8, 44), powder_spots="auto")
    one_process(raw, tmp_path / "one.h5", options)
    on_dask(raw, tmp_path / "dask.h5", options, dask_client, task_frames=40)
    assert_same_files(tmp_path / "one.h5", tmp_path / "dask.h5")
    with h5py.File(tmp_path / "dask.h5", "r") as f:
        assert f["entry/maps"].attrs["powder_spots_rejected"] > 0
