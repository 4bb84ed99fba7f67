"""Stopping `opmon demo` as a user would: Ctrl-C twice at the terminal, SIGTERM from a service
manager, SIGKILL. Real processes, real signals, the archive read back.

The demo runs headless in its own session (as a shell runs a foreground job in its own process
group), so `os.killpg` is exactly the terminal's Ctrl-C. Ports are chosen by the demo itself
(`--port-base auto`).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import zmq

from opmon.config import Ports
from tests.waiting import until

CONTROL_OFFSET = Ports().control - Ports().frames_archive   # `ports: A-B` prints A = frames_archive
ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every process below `root`, as pid -> start time (so a reused pid is not mistaken for it)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            children.setdefault(st[0], []).append(int(entry.name))
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            if (st := _stat(pid)) is not None:
                found[pid] = st[2]
                todo.append(pid)
    return found


def _alive(procs: dict[int, int]) -> list[int]:
    """Those of `procs` still running (a zombie waiting for its reaper has stopped)."""
    return [pid for pid, start in procs.items() if (st := _stat(pid)) is not None and st[2] == start and st[1] != "Z"]


def _until(predicate, timeout) -> bool:
    return until(predicate, timeout)


class Demo:
    """`opmon demo --headless`, small and fast to its first map, in its own session."""

    def __init__(self, tmp_path: Path, *extra: str, headless: bool = True) -> None:
        self.archive = tmp_path / "archive"
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        mode = ["--headless"] if headless else ["--no-browser", "--dashboard-port", "0"]
        cmd = [sys.executable, "-m", "opmon.cli", "demo", *mode, "--archive-dir", str(self.archive),
               "--port-base", "auto", "--map-shape", "6", "6", "--angles", "10", "--period", "600", *extra]
        self.seen: dict[int, int] = {}     # every process seen below the demo, to clean up after a failure
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=tmp_path,
                                         start_new_session=True)

    def stdout(self) -> str:
        return self.out.read_text()

    def stderr(self) -> str:
        return self.err.read_text()

    def archived(self) -> int:
        """Frames in the first map file so far (0 while it is being created)."""
        try:
            with h5py.File(next(self.archive.glob("*/map_0000.h5")), "r", swmr=True) as f:
                return int(f["entry/scan/sequence"].shape[0])
        except (StopIteration, OSError, KeyError):
            return 0

    def wait_for_frames(self, services: int = 2, frames: int = 30) -> dict[int, int]:
        """Once frames flow into the archive (the run is well under way), the demo's processes below it."""
        assert _until(lambda: self.archived() >= frames or self.proc.poll() is not None, 180)
        assert self.proc.poll() is None, self.stdout() + self.stderr()
        assert _until(lambda: len(_descendants(self.proc.pid)) >= services, 60)
        self.seen.update(_descendants(self.proc.pid))
        return dict(self.seen)

    def run_state(self) -> str | None:
        """The RunEngine's state, asked on the demo's control channel (`status` needs no token)."""
        m = re.search(r"^ports: (\d+)-\d+ on ", self.stdout(), re.M)
        if not m:
            return None
        sock = zmq.Context.instance().socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 2000)
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        try:
            sock.connect(f"tcp://127.0.0.1:{int(m.group(1)) + CONTROL_OFFSET}")
            sock.send(json.dumps({"v": 1, "command": "status"}).encode())
            return json.loads(sock.recv())["result"]["state"]
        except zmq.Again:
            return None
        finally:
            sock.close()

    def exit_code(self, timeout_s: float, failure: str) -> int:
        """The demo's exit status within `timeout_s`; else the test fails with `failure` and its stderr."""
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{failure}:\n{self.stderr()}")

    def run_dir(self) -> Path:
        dirs = [p for p in self.archive.iterdir() if p.is_dir() and p.name != "logs"]
        assert len(dirs) == 1
        return dirs[0]

    def kill(self) -> None:
        """After the test: nothing of this demo may outlive it, even when the test failed."""
        if self.proc.poll() is None:
            self.seen.update(_descendants(self.proc.pid))
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in _alive(self.seen):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def demo(tmp_path):
    made: list[Demo] = []

    def start(*extra: str, headless: bool = True) -> Demo:
        made.append(Demo(tmp_path, *extra, headless=headless))
        return made[-1]

    yield start
    for d in made:
        d.kill()


def _service_pid(procs: dict[int, int], command: str) -> int:
    """The pid of the supervised `opmon <command>` among `procs`."""
    for pid in procs:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"opmon.cli" in argv and command.encode() in argv:
            return pid
    raise AssertionError(f"no opmon {command} among {procs}")


def _frames_sent(stdout: str) -> int:
    m = re.search(r"frames sent: (\d+)\s+frames archived: (\d+)\s+frames lost: (\d+)", stdout)
    assert m, stdout
    return int(m.group(1))


def _assert_every_frame_archived_and_run_aborted(run_dir: Path, sent: int) -> None:
    """Read the archive back: every frame the acquisition took is there, the run says aborted."""
    seqs = []
    for raw in sorted(run_dir.glob("map_[0-9][0-9][0-9][0-9].h5")):
        with h5py.File(raw, "r") as f:
            seqs.append(f["entry/scan/sequence"][()])
            assert f["entry/instrument/detector/data"].shape[0] == seqs[-1].size
    archived = np.sort(np.concatenate(seqs))
    assert sent > 0 and np.array_equal(archived, np.arange(sent))
    with h5py.File(run_dir / "run.h5", "r") as f:
        stop, bluesky_stop = json.loads(f.attrs["stop"]), json.loads(f.attrs["document_stop"])
    assert stop["exit_status"] == "abort" and stop["n_frames"] == sent
    assert bluesky_stop["exit_status"] == "abort"
    assert bluesky_stop["num_events"]["primary"] == sent     # the RunEngine's own count of frames taken


def test_ctrl_c_twice_pauses_then_stops_everything_and_archives_every_frame(demo):
    d = demo()
    procs = d.wait_for_frames()
    os.killpg(d.proc.pid, signal.SIGINT)                 # Ctrl-C at the terminal: the whole group
    assert _until(lambda: "Ctrl-C again to stop safely" in d.stderr(), 30), d.stderr()
    assert _until(lambda: d.run_state() == "paused", 30), d.run_state()      # a real pause of the RunEngine
    time.sleep(1.0)    # a service that took the group's SIGINT would be gone (or restarted) by now
    assert d.proc.poll() is None and _alive(procs) == list(procs)   # paused; the services untouched
    os.killpg(d.proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 15
    code = d.exit_code(15, "opmon demo still running 15 s after the second Ctrl-C")
    assert _until(lambda: not _alive(procs), deadline - time.monotonic()), f"left behind: {_alive(procs)}"
    assert code != 0
    err, out = d.stderr(), d.stdout()
    assert "Traceback" not in err + out
    assert "second Ctrl-C: aborting the run safely" in err
    assert "exit status: abort" in out
    _assert_every_frame_archived_and_run_aborted(d.run_dir(), _frames_sent(out))


def test_sigterm_stops_within_10_s_with_a_summary(demo):
    d = demo()
    procs = d.wait_for_frames()
    d.proc.send_signal(signal.SIGTERM)                    # the demo only, as a service manager does
    code = d.exit_code(10, "opmon demo still running 10 s after SIGTERM")
    assert code != 0
    assert _until(lambda: not _alive(procs), 5), f"left behind: {_alive(procs)}"
    out = d.stdout()
    assert "exit status: abort" in out and re.search(r"maps: \d+  frames sent: \d+  frames archived: \d+", out)
    assert "SIGTERM received: aborting the run safely" in d.stderr()
    _assert_every_frame_archived_and_run_aborted(d.run_dir(), _frames_sent(out))


def test_sigkill_of_the_demo_leaves_no_process_behind(demo):
    d = demo("--workers", "2")           # the live processor's fan-out workers are grandchildren
    procs = d.wait_for_frames(services=4)
    assert len(procs) >= 4, procs        # archiver, live, 2 workers
    os.kill(d.proc.pid, signal.SIGKILL)  # the demo only: nobody tells its children
    d.proc.wait()
    assert _until(lambda: not _alive(procs), 2.0), f"still running 2 s after SIGKILL: {_alive(procs)}"


def test_a_service_stopped_from_outside_is_not_restarted_and_stops_the_demo(demo):
    d = demo(headless=False)
    procs = d.wait_for_frames(services=3)
    os.kill(_service_pid(procs, "dashboard"), signal.SIGTERM)    # someone stops a service by hand
    code = d.exit_code(30, "opmon demo carried on without its dashboard")
    assert code != 0
    assert _until(lambda: not _alive(procs), 10), f"left behind: {_alive(procs)}"
    err = d.stderr()
    assert "dashboard stopped (exit 143 (stopped on SIGTERM)); not restarted" in err
    assert "opmon demo: dashboard stopped (exit 143 (stopped on SIGTERM)): aborting the run safely" in err
    assert "restart 1" not in err and "Traceback" not in err
    assert "exit status: abort" in d.stdout()


def test_after_the_run_one_ctrl_c_ends_the_demo(demo):
    d = demo("--max-maps", "1", headless=False)
    assert _until(lambda: "the dashboard stays up until Ctrl-C" in d.stdout() or d.proc.poll() is not None, 180)
    assert d.proc.poll() is None, d.stdout() + d.stderr()
    procs = d.wait_for_frames(services=3)
    os.killpg(d.proc.pid, signal.SIGINT)
    code = d.exit_code(15, "opmon demo ignored Ctrl-C after the run")
    assert _until(lambda: not _alive(procs), 10), f"left behind: {_alive(procs)}"
    assert code == 0, d.stdout() + d.stderr()               # the run itself succeeded
    assert "exit status: success" in d.stdout() and "opmon demo: Ctrl-C: stopping the services" in d.stderr()
