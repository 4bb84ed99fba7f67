"""Helpers of the bad-input walk: small raw maps, corrupted copies, an archive with a map missing.

Everything is written through the project's own writers (RawMapWriter, RunDirectory), so the
files are what opmon writes at a beamline, then damaged the way disks and copies damage them.
"""
from __future__ import annotations

import hashlib
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from opmon.streaming.archive.layout import DATA
from opmon.streaming.archive.raw import RawMapWriter
from opmon.streaming.archive.layout import map_file_name
from opmon.streaming.archive.run_writer import MasterEntry, RunDirectory

OPMON = str(Path(sys.executable).with_name("opmon"))
FRAME = (40, 48)


def write_raw(path: Path, n_side: int = 3, angles: int = 6, frame: tuple[int, int] = FRAME, seed: int = 0) -> Path:
    """A map of n_side² pixels, each with a Bragg peak that moves with the pixel over a 1e-3 background."""
    rng = np.random.default_rng(seed)
    n = n_side * n_side * angles
    index = np.repeat(np.arange(n_side * n_side), angles)
    frames = (rng.random((n,) + frame) < 1e-3).astype(np.uint32)
    for f in range(n):
        r, c = 15 + index[f] % n_side, 20 + index[f] // n_side
        frames[f, r - 2:r + 3, c - 2:c + 3] += rng.poisson(50.0, (5, 5)).astype(np.uint32)
    with h5py.File(path, "w") as f:
        w = RawMapWriter(f.create_group("entry"), frame_shape=frame, dtype=np.uint32, energy_ev=10000.0,
                         distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(200.0, 24.0),
                         map_shape=(n_side, n_side))
        w.append(frames, index, np.tile(np.linspace(18.9, 19.1, angles), n_side * n_side), 0.0, 0.0, 35.0)
    return path


def corrupt_frames(path: Path, frames: list[int], entry: str = "entry") -> Path:
    """Overwrite the uncompressed size in each frame's bitshuffle header with 256 MiB.

    A plain h5py read of such a chunk segfaults (the bitshuffle filter trusts the size).
    """
    with h5py.File(path, "r") as f:
        data = f[entry][DATA]
        offsets = [data.id.get_chunk_info_by_coord((i, 0, 0)).byte_offset for i in frames]
    with open(path, "r+b") as fh:
        for off in offsets:
            fh.seek(off)
            fh.write(struct.pack(">Q", 0x10000000))
    return path


def make_archive(run: Path, maps: int = 2) -> Path:
    """A run directory as the archiver leaves it: map_NNNN.h5 per map and run.h5 linking them."""
    run.mkdir()
    directory = RunDirectory(run, "run-uid-test")
    for number in range(maps):
        write_raw(run / map_file_name(number), seed=number)
        directory.maps[number] = MasterEntry(number, frames=54, complete=True)
    directory.write_master()
    return run


def digest(paths: list[Path]) -> dict[Path, str]:
    """Content hash of each file (inputs must be byte-identical after a refused command)."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def tree(root: Path) -> set[str]:
    """Every file under `root` (relative names), hidden temporaries included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def opmon(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed `opmon` command in a subprocess, as a user would."""
    return subprocess.run([OPMON, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str, code: int | None = None) -> None:
    """Non-zero exit (not a signal), exactly one line on stderr naming the problem, no traceback."""
    err = result.stderr.strip()
    assert result.returncode > 0, (result.returncode, err)  # negative = killed by a signal (segfault)
    if code is not None:
        assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, err
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


