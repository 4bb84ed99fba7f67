"""Disk full while archiving: the archiver says so with the path, the acquisition pauses through
its RunEngine, and every frame already taken reads back intact.

A real tmpfs of 32 MiB when the test may mount (root); otherwise the archiver's free-space
reserve is set above the free space of tmp_path, which takes the same disk-full path.
"""
from __future__ import annotations

import pytest

from opmon.archive_watch import ArchiverWatch
from opmon.streaming.archive.disk_full import DiskGuard, is_disk_full


@pytest.mark.slow
def test_disk_full_pauses_the_acquisition_and_keeps_every_frame(disk, tmp_path):
    report = disk.run_disk_full(tmp_path / "archive", size_mb=32, reserve_mb=6, max_frames=4000, timeout_s=60)
    assert report["archiver_crashed"] == []
    assert report["status_state"] == "disk_full"
    assert report["status_error"].startswith(f"disk full: {tmp_path / 'archive'}")
    assert report["paused"] and report["watch_pauses"] == 1
    assert report["run_exit"] == "abort"           # the test aborts the paused run
    assert report["file_readable"]
    assert report["frames_on_disk"] > 0
    assert report["frames_differing_from_sent"] == 0 and report["seq_gap_free"]
    assert report["archiver_closed"] == "cleanly"


class _Steering:
    """Records pause requests the way RunEngineSteering receives them."""

    def __init__(self) -> None:
        self.pauses = 0

    def pause(self) -> dict:
        self.pauses += 1
        return {"state": "running"}


def test_watch_pauses_once_per_disk_full_episode():
    steering = _Steering()
    watch = ArchiverWatch("tcp://127.0.0.1:1", steering)     # not started: statuses handed in directly
    full = {"source": "archiver", "state": "disk_full", "error": "disk full: /a (1 MiB free)"}
    watch.on_status({"source": "live", "state": "disk_full"})   # only the archiver's word counts
    watch.on_status(full)
    watch.on_status(full)
    assert steering.pauses == 1 and watch.reason == full["error"]
    watch.on_status({"source": "archiver", "state": "running"})
    watch.on_status(full)
    assert steering.pauses == 2


def test_disk_guard_reports_low_then_full(tmp_path):
    guard = DiskGuard(tmp_path, reserve_bytes=1)
    assert guard.check_space(tmp_path) and guard.report is None
    free = guard.free_bytes()
    guard.reserve_bytes = free // 2 + 1          # free < 2 x reserve: reported, frames still taken
    assert guard.check_space(tmp_path) and guard.report.startswith(f"disk full: {tmp_path}")
    guard.reserve_bytes = free + 2**30           # below the reserve: no more frames
    assert not guard.check_space(tmp_path) and guard.full
    assert is_disk_full(OSError(28, "No space left on device"))
    assert not is_disk_full(OSError(13, "Permission denied"))
