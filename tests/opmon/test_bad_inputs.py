"""Every offline command against every bad input a tired user produces (issue 11, item 4).

Each row runs the real `opmon` command in a subprocess and checks what a beamline user needs:
one line on stderr naming the problem, a non-zero exit that is not a signal (no segfault), no
traceback, the inputs byte-identical afterwards and no half or temporary file left behind.
"""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from offline_inputs import OPMON, assert_one_line_error, corrupt_frames, digest, opmon, tree, write_raw
from tests.waiting import until

INPUTS = ["raw.h5", "corrupt.h5", "run/run.h5", "run/map_0000.h5", "run/map_0001.h5"]


@pytest.fixture
def guard(workdir: Path):
    """After the test: inputs unchanged, and no file appeared except those the test declares."""
    before_hash = digest([workdir / p for p in INPUTS])
    before = tree(workdir)
    allowed: set[str] = set()
    yield workdir, allowed
    assert digest([workdir / p for p in INPUTS if (workdir / p).exists()]) == \
        {p: h for p, h in before_hash.items() if p.exists()}
    assert tree(workdir) - before <= allowed, tree(workdir) - before


# ---- process ------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["same", "symlink", "hardlink", "dotdot"])
def test_process_never_writes_over_its_input(guard, spelling):
    wd, allowed = guard
    target = {"same": "raw.h5", "symlink": "alias.h5", "hardlink": "hard.h5", "dotdot": "run/../raw.h5"}[spelling]
    if spelling == "symlink":
        (wd / "alias.h5").symlink_to(wd / "raw.h5")
    if spelling == "hardlink":
        os.link(wd / "raw.h5", wd / "hard.h5")
    allowed |= {"alias.h5", "hard.h5"}
    result = opmon("process", "raw.h5", "-o", target, "--force", "-q", cwd=wd)
    assert_one_line_error(result, "refusing to write over an input")


def test_process_never_writes_over_a_map_file_its_archive_links(guard):
    wd, _ = guard
    result = opmon("process", "run/run.h5", "-o", "run/map_0001.h5", "--force", "-q", cwd=wd)
    assert_one_line_error(result, "map_0001.h5", "refusing to write over an input")


@pytest.mark.parametrize("read_only", [False, True])
def test_process_refuses_an_existing_output_without_force(guard, read_only):
    wd, allowed = guard
    out = wd / "maps.h5"
    out.write_bytes(b"precious")
    if read_only:
        out.chmod(stat.S_IRUSR | stat.S_IRGRP)
    allowed.add("maps.h5")
    result = opmon("process", "raw.h5", "-o", "maps.h5", "-q", cwd=wd)
    assert_one_line_error(result, "maps.h5: exists (use --force")
    assert out.read_bytes() == b"precious"


def test_process_with_force_replaces_atomically_and_group_readable(guard):
    wd, allowed = guard
    (wd / "maps.h5").write_bytes(b"old")
    allowed.add("maps.h5")
    result = opmon("process", "raw.h5", "-o", "maps.h5", "--force", "-q", cwd=wd)
    assert result.returncode == 0, result.stderr
    with h5py.File(wd / "maps.h5") as f:
        assert f["entry/maps/d_spacing"].shape == (3, 3)
    assert (wd / "maps.h5").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_process_corrupt_chunk_names_file_map_and_frame(guard):
    wd, _ = guard
    result = opmon("process", "corrupt.h5", "-o", "maps.h5", "-q", cwd=wd)
    assert_one_line_error(result, "corrupt.h5:/entry", "frame 3", "--skip-bad-frames", code=2)


@pytest.mark.parametrize("command", ["process", "replay"])
def test_corrupt_frame_in_an_archive_names_the_map_file(workdir, command):
    wd = workdir
    corrupt_frames(wd / "run/map_0001.h5", [5])
    before, files = digest([wd / p for p in INPUTS]), tree(wd)
    result = opmon(command, "run/run.h5", "-o", "maps.h5", *(["-q"] if command == "process" else []), cwd=wd)
    assert_one_line_error(result, "run/run.h5:/entry1 (frames in map_0001.h5): corrupt compressed frame 5", code=2)
    assert digest([wd / p for p in INPUTS]) == before and tree(wd) == files


def test_process_skip_bad_frames_processes_the_rest_and_lists_them(guard):
    wd, allowed = guard
    allowed.add("maps.h5")
    result = opmon("process", "corrupt.h5", "-o", "maps.h5", "-q", "--skip-bad-frames", cwd=wd)
    assert_one_line_error(result, "skipped 2 unreadable (corrupt or unwritten) frame(s)", "3, 40", code=3)
    with h5py.File(wd / "maps.h5") as f:
        assert list(f["entry/maps/bad_frames"][()]) == [3, 40]
        assert f["entry/maps"].attrs["bad_frames_count"] == 2
        assert np.isfinite(f["entry/maps/d_spacing"][()]).all()


@pytest.mark.parametrize("skip", [False, True])
def test_process_half_written_map(guard, skip):
    """A writer killed after growing the frame dataset, before storing the frames: named, never zeros."""
    wd, allowed = guard
    write_raw(wd / "half.h5")
    allowed |= {"half.h5", "maps.h5"}
    with h5py.File(wd / "half.h5", "a") as f:
        entry = f["entry"]
        for name in ("scan/map_index", "sample/positioners/eta", "sample/positioners/phi", "sample/positioners/nu",
                     "sample/positioners/delta", "scan/x", "scan/y"):
            entry[name].resize((56,))
            entry[name][54:] = entry[name][53]
        entry["instrument/detector/data"].resize((56, 40, 48))
    result = opmon("process", "half.h5", "-o", "maps.h5", "-q", *(["--skip-bad-frames"] if skip else []), cwd=wd)
    if skip:
        assert_one_line_error(result, "skipped 2 unreadable", "54, 55", code=3)
    else:
        assert_one_line_error(result, "half.h5:/entry", "never written", code=2)


@pytest.mark.parametrize("kind, message", [
    ("text", "not an HDF5 file"), ("empty", "empty file"), ("truncated", "truncated HDF5 file"),
    ("missing", "no such file"), ("directory", "is a directory"),
])
def test_process_unreadable_input(guard, kind, message):
    wd, allowed = guard
    name = _bad_file(wd, kind)
    allowed.add(name)
    assert_one_line_error(opmon("process", name, "-o", "maps.h5", "-q", cwd=wd), name, message)


def _bad_file(wd: Path, kind: str) -> str:
    path = wd / f"bad_{kind}.h5"
    if kind == "text":
        path.write_text("d_spacing = 2.04\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = (wd / "raw.h5").read_bytes()
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "directory":
        path.mkdir()
    return path.name


@pytest.mark.parametrize("output, message", [
    ("run", "is a directory"), ("nowhere/maps.h5", "does not exist"),
])
def test_process_bad_output_path_before_any_work(guard, output, message):
    wd, _ = guard
    assert_one_line_error(opmon("process", "raw.h5", "-o", output, "-q", cwd=wd), output, message)


@pytest.mark.parametrize("png, message", [
    ("nowhere/fig.png", "does not exist"), ("fig.txt", "ending in .png"), ("raw.h5", "ending in .png"),
])
def test_process_bad_png_path_before_any_work(guard, png, message):
    wd, _ = guard
    result = opmon("process", "raw.h5", "-o", "maps.h5", "--png", png, "-q", cwd=wd)
    assert_one_line_error(result, message)


def test_process_archive_with_a_missing_map_file(guard):
    wd, _ = guard
    (wd / "run/map_0001.h5").unlink()
    result = opmon("process", "run/run.h5", "-o", "maps.h5", "-q", cwd=wd)
    assert_one_line_error(result, "entry1 links to missing map file map_0001.h5")


@pytest.mark.parametrize("command", ["process", "replay"])
def test_top_level_link_to_a_missing_map_file(guard, command):
    wd, allowed = guard
    allowed.add("links.h5")
    with h5py.File(wd / "links.h5", "w") as f:
        f["entry0"] = h5py.ExternalLink("raw.h5", "/entry")
        f["entry1"] = h5py.ExternalLink("gone.h5", "/entry")
    result = opmon(command, "links.h5", "-o", "maps.h5", cwd=wd)
    assert_one_line_error(result, "entry1 links to missing map file gone.h5")


def test_process_roi_outside_the_frame(guard):
    wd, _ = guard
    result = opmon("process", "raw.h5", "-o", "maps.h5", "--roi", "0", "41", "0", "10", "-q", cwd=wd)
    assert_one_line_error(result, "outside the 40x48 frames")


@pytest.mark.parametrize("command", ["process", "replay"])
@pytest.mark.parametrize("damage, message", [
    ("dtype", "dtype float32"), ("attribute", "missing dataset /entry/instrument/detector/distance"),
])
def test_wrong_dtype_and_missing_metadata(guard, command, damage, message):
    wd, allowed = guard
    write_raw(wd / "odd.h5")
    allowed.add("odd.h5")
    with h5py.File(wd / "odd.h5", "a") as f:
        if damage == "dtype":
            del f["entry/instrument/detector/data"]
            f["entry/instrument/detector/data"] = np.zeros((54, 40, 48), np.float32)
        else:
            del f["entry/instrument/detector/distance"]
    assert_one_line_error(opmon(command, "odd.h5", "-o", "maps.h5", cwd=wd), message)


# ---- replay -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, message", [
    ("text", "not an HDF5 file"), ("empty", "empty file"), ("truncated", "truncated HDF5 file"),
    ("missing", "no such archive"),
])
def test_replay_unreadable_input(guard, kind, message):
    wd, allowed = guard
    name = _bad_file(wd, kind)
    allowed.add(name)
    assert_one_line_error(opmon("replay", name, cwd=wd), message)


def test_replay_half_written_file(guard):
    """A map file whose writer died after the metadata, before its frames: refused, not streamed."""
    wd, allowed = guard
    allowed.add("half.h5")
    with h5py.File(wd / "half.h5", "w") as f:
        f.create_dataset("entry/instrument/detector/data", shape=(54, 40, 48), dtype=np.uint32, chunks=(1, 40, 48))
    assert_one_line_error(opmon("replay", "half.h5", cwd=wd), "missing dataset")


def test_replay_corrupt_chunk(guard):
    wd, _ = guard
    assert_one_line_error(opmon("replay", "corrupt.h5", "-o", "out.h5", cwd=wd), "corrupt.h5:/entry", "frame 3", code=2)


def test_replay_skip_bad_frames_lists_them(guard):
    wd, allowed = guard
    allowed.add("out.h5")
    result = opmon("replay", "corrupt.h5", "-o", "out.h5", "--skip-bad-frames", cwd=wd)
    assert_one_line_error(result, "skipped 2 unreadable (corrupt or unwritten) frame(s)", "3, 40", code=3)
    with h5py.File(wd / "out.h5") as f:
        assert list(f["entry0/maps/bad_frames"][()]) == [3, 40]


@pytest.mark.parametrize("output, message", [
    ("run", "is a directory"), ("nowhere/out.h5", "does not exist"), ("raw.h5", "refusing to write over an input"),
])
def test_replay_bad_output_before_streaming(guard, output, message):
    wd, _ = guard
    assert_one_line_error(opmon("replay", "raw.h5", "-o", output, "--force", cwd=wd), message)


def test_replay_existing_output_without_force(guard):
    wd, allowed = guard
    (wd / "out.h5").write_bytes(b"keep")
    allowed.add("out.h5")
    assert_one_line_error(opmon("replay", "raw.h5", "-o", "out.h5", cwd=wd), "exists (use --force")
    assert (wd / "out.h5").read_bytes() == b"keep"


def test_replay_archive_with_a_missing_map_file(guard):
    wd, _ = guard
    (wd / "run/map_0000.h5").unlink()
    assert_one_line_error(opmon("replay", "run", cwd=wd), "entry0 links to missing map file map_0000.h5")


def test_replay_roi_outside_the_frame(guard):
    wd, _ = guard
    assert_one_line_error(opmon("replay", "raw.h5", "--roi", "0", "10", "40", "49", cwd=wd), "outside the 40x48 frames")


@pytest.mark.parametrize("text, message", [
    ("[ports]\nframes_live = 5551\ndocs = 5551\n", "every channel needs its own port"),
    ("[stream]\nstall_timeout_s = 0\n", "stream.stall_timeout_s"),
    ("\x00\x9f\x92", "not a text TOML file"),
])
def test_replay_bad_config(guard, text, message):
    wd, allowed = guard
    (wd / "bad.toml").write_bytes(text.encode("latin-1"))
    allowed.add("bad.toml")
    assert_one_line_error(opmon("replay", "raw.h5", "--config", "bad.toml", cwd=wd), message)


# ---- simulate -----------------------------------------------------------------------------

SMALL = ["--ny", "3", "--nx", "3", "--angles", "3", "--roi", "0", "64", "0", "64", "-q"]


@pytest.mark.parametrize("read_only", [False, True])
def test_simulate_refuses_an_existing_output(guard, read_only):
    wd, _ = guard
    if read_only:
        (wd / "raw.h5").chmod(stat.S_IRUSR)
    assert_one_line_error(opmon("simulate", "-o", "raw.h5", *SMALL, cwd=wd), "raw.h5: exists (use --force")


@pytest.mark.parametrize("output, message", [("run", "is a directory"), ("nowhere/raw.h5", "does not exist")])
def test_simulate_bad_output_path(guard, output, message):
    wd, _ = guard
    assert_one_line_error(opmon("simulate", "-o", output, *SMALL, cwd=wd), message)


@pytest.mark.parametrize("args, message", [
    (["--ny", "400", "--nx", "400", "--angles", "500"], "GB are free there"),
    (["--ny", "100", "--nx", "100", "--angles", "3", "--block", "30000"], "GB of memory"),
    (["--ny", "0"], "--ny 0: must be >= 1"),
])
def test_simulate_refuses_what_does_not_fit(guard, args, message):
    wd, _ = guard
    assert_one_line_error(opmon("simulate", "-o", "big.h5", "-q", *args, cwd=wd), message)


def test_simulate_writes_group_readable_file(guard):
    wd, allowed = guard
    allowed.add("sim.h5")
    result = opmon("simulate", "-o", "sim.h5", *SMALL, cwd=wd)
    assert result.returncode == 0, result.stderr
    assert (wd / "sim.h5").stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_killed_simulate_leaves_no_output_and_its_temporary_is_swept(guard):
    wd, allowed = guard
    allowed.add("sim.h5")
    run = Running(["simulate", "-o", "sim.h5", "--ny", "40", "--nx", "40", "--angles", "40", "-q"], wd)
    started = until(lambda: any(p.name.startswith(".sim.h5.") for p in wd.iterdir()) or run.proc.poll() is not None,
                    120, interval_s=0.02)
    assert started and run.proc.poll() is None, run.stderr
    run.proc.kill()  # SIGKILL: no cleanup runs
    run.proc.wait()
    assert not (wd / "sim.h5").exists()  # never a half file under the real name
    assert [p.name for p in wd.iterdir() if p.name.startswith(".sim.h5.")]  # only its hidden temporary
    result = opmon("simulate", "-o", "sim.h5", *SMALL, cwd=wd)
    assert result.returncode == 0, result.stderr
    assert not [p.name for p in wd.iterdir() if p.name.startswith(".sim.h5.")]  # the dead run's temporary is gone


# ---- plot ---------------------------------------------------------------------------------

@pytest.fixture
def maps_file(guard):
    wd, allowed = guard
    allowed |= {"maps.h5"}
    assert opmon("process", "raw.h5", "-o", "maps.h5", "-q", cwd=wd).returncode == 0
    return wd, allowed


def test_plot_bad_inputs(maps_file):
    wd, allowed = maps_file
    allowed |= {"bad_text.h5", "maps.png", "alias.png"}
    _bad_file(wd, "text")
    assert_one_line_error(opmon("plot", "bad_text.h5", cwd=wd), "not an HDF5 file")
    assert_one_line_error(opmon("plot", "raw.h5", cwd=wd), "no entry holds a maps group")
    (wd / "maps.png").write_bytes(b"old figure")
    assert_one_line_error(opmon("plot", "maps.h5", cwd=wd), "maps.png: exists (use --force")
    assert (wd / "maps.png").read_bytes() == b"old figure"
    assert_one_line_error(opmon("plot", "maps.h5", "-o", "nowhere/f.png", cwd=wd), "does not exist")
    (wd / "alias.png").symlink_to(wd / "maps.h5")
    assert_one_line_error(opmon("plot", "maps.h5", "-o", "alias.png", "--force", cwd=wd), "refusing to write over an input")


# ---- Ctrl-C -------------------------------------------------------------------------------

class Running:
    """A command started in a subprocess; its stderr collected by a thread as it comes."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen([OPMON, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.chunks.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def interrupt_when(self, ready) -> subprocess.CompletedProcess:
        """SIGINT once `ready()` is true (mid-work); the command must be gone within 2 s of it."""
        assert until(lambda: ready() or self.proc.poll() is not None, 120, interval_s=0.02), self.stderr
        assert self.proc.poll() is None, ("finished before it could be interrupted", self.stderr)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"did not stop within 2 s of Ctrl-C: {self.stderr}")
        self.reader.join(5)
        # the progress bar's carriage-return updates are not lines a user reads as messages
        lines = [line.rsplit("\r", 1)[-1] for line in self.stderr.splitlines()]
        text = "\n".join(line for line in lines if line.strip() and "frame/s" not in line and "frame [" not in line)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, "", text)


def test_ctrl_c_stops_simulate_and_leaves_no_file(guard):
    wd, _ = guard
    run = Running(["simulate", "-o", "big.h5", "--ny", "40", "--nx", "40", "--angles", "40", "-q"], wd)
    result = run.interrupt_when(lambda: any(p.name.startswith(".big.h5.") for p in wd.iterdir()))
    assert_one_line_error(result, "interrupted", code=130)


def test_ctrl_c_stops_process_and_leaves_no_file(guard):
    wd, allowed = guard
    write_raw(wd / "long.h5", n_side=40, angles=12, frame=(64, 64))
    allowed.add("long.h5")
    run = Running(["process", "long.h5", "-o", "maps.h5"], wd)
    result = run.interrupt_when(lambda: "frame/s" in run.stderr)  # the progress bar counts frames read
    assert_one_line_error(result, "interrupted", code=130)


def test_ctrl_c_stops_process_on_dask_and_its_workers(guard):
    """Ctrl-C while the workers of `--dask local:2` reduce: exit 130 within 2 s, no file, no worker left."""
    import re

    import psutil
    wd, allowed = guard
    write_raw(wd / "long.h5", n_side=40, angles=12, frame=(64, 64))
    allowed.add("long.h5")
    run = Running(["process", "long.h5", "-o", "maps.h5", "--dask", "local:2", "--task-frames", "512"], wd)
    workers: list[psutil.Process] = []

    def reducing() -> bool:  # the bar counts the frames of finished tasks: the workers are busy
        if not re.search(r" [1-9][0-9]*/19200", run.stderr):
            return False
        workers.extend(psutil.Process(run.proc.pid).children(recursive=True))
        return True
    result = run.interrupt_when(reducing)
    assert_one_line_error(result, "interrupted", code=130)
    assert workers
    assert until(lambda: not [p for p in workers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], 10)


def test_ctrl_c_stops_replay(guard):
    wd, _ = guard
    run = Running(["replay", "raw.h5", "--rate", "5", "-o", "out.h5"], wd)  # 54 frames paced over ~11 s
    result = run.interrupt_when(lambda: _has_socket(run.proc.pid))
    assert_one_line_error(result, "interrupted", code=130)


def _has_socket(pid: int) -> bool:
    """True once the replay has bound its frame stream (a socket among its descriptors): it is streaming."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:") for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False
