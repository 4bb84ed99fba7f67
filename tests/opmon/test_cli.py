"""`opmon --help`, `opmon process --help` and `opmon --version` answer without importing the
data path: every command imports its heavy dependencies when it runs, so discovering the
commands stays cheap."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("numba", "h5py", "bokeh", "bluesky", "ophyd_async", "matplotlib", "scipy", "numpy")

PROBE = """
import sys
from opmon.cli import build_parser
build_parser()
print(" ".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def test_building_the_command_line_imports_no_heavy_package():
    out = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_help_and_version_answer():
    for flag, expected in (("--help", "usage: opmon"), ("--version", "opmon ")):
        out = subprocess.run([sys.executable, "-m", "opmon.cli", flag], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith(expected), out


HELP_PROBE = """
import contextlib, io, sys
from opmon.cli import main
with contextlib.redirect_stdout(io.StringIO()) as text:
    try:
        main({argv!r})
    except SystemExit as done:
        assert done.code == 0, done.code
assert text.getvalue().startswith("usage: opmon"), text.getvalue()
print(" ".join(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


@pytest.mark.parametrize("argv", [["--help"], ["process", "--help"]])
def test_help_of_the_command_line_and_of_process_imports_no_heavy_package(argv):
    probe = HELP_PROBE.format(argv=argv, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


COMMANDS_PROBE = HELP_PROBE.replace("{heavy!r} if m in sys.modules", "sys.modules if m.startswith('opmon.commands.')")


def test_running_a_command_imports_no_other_command_module():
    """`opmon process` builds only its own parser: the other commands' imports (zmq, ports...) are
    start-up it does not need; `opmon --help` still lists every command."""
    out = subprocess.run([sys.executable, "-c", COMMANDS_PROBE.format(argv=["-v", "process", "--help"])],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["opmon.commands.process"]
    listing = subprocess.run([sys.executable, "-m", "opmon.cli", "--help"], capture_output=True, text=True, check=True)
    assert all(name in listing.stdout for name in ("archive", "demo", "process", "simulate"))


def test_a_reader_that_closes_the_pipe_gets_no_traceback(tmp_path):
    """`opmon inspect FILE | head`: the reader leaves early; opmon ends quietly (exit 141, as
    a shell reports SIGPIPE), not with a BrokenPipeError traceback."""
    import h5py
    import numpy as np

    from opmon.streaming.archive.raw import RawMapWriter
    raw = tmp_path / "raw.h5"
    with h5py.File(raw, "w") as f:
        w = RawMapWriter(f.create_group("entry"), frame_shape=(8, 8), dtype=np.uint32, energy_ev=10000.0,
                         distance_m=1.0, pixel_size_m=(55e-6, 55e-6), beam_center=(4.0, 4.0), map_shape=(2, 2))
        w.append(np.ones((4, 8, 8), dtype=np.uint32), np.arange(4), 10.0, 0.0, 0.0, 30.0)
    proc = subprocess.Popen([sys.executable, "-m", "opmon.cli", "inspect", str(raw)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()                       # the reader is gone before opmon writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and "Traceback" not in err, err


GC_PROBE = """
import gc
full = []
gc.callbacks.append(lambda phase, info: full.append(info["generation"]) if phase == "start" else None)
from opmon.commands.process import start_up_imports
start_up_imports(freeze=True)
import h5py, numba
print(full.count(2), gc.isenabled(), gc.get_freeze_count() > 10000)
"""


def test_process_start_up_imports_without_a_full_collection_and_freezes_what_they_made():
    """numpy, numba, h5py and the processors come in with the collector off and are frozen after:
    no full collection walks them in the run, nor at exit; the collector is on again for the run."""
    out = subprocess.run([sys.executable, "-c", GC_PROBE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "True", "True"]


WHOLE_PROCESS = """
import gc, sys
from opmon.cli import main
sys.argv = ["opmon", "process", sys.argv[1], "-o", sys.argv[2], "-q"]
assert main() == 0
print(gc.get_freeze_count() > 10000, gc.isenabled())
"""


def test_only_the_program_itself_freezes_its_objects(tmp_path):
    """`opmon` run as a program (main() reads sys.argv) freezes; a caller of main([...]) in its own
    process (tests, notebooks) keeps its collector as it was."""
    import gc

    from offline_inputs import write_raw
    from opmon.cli import main
    raw = write_raw(tmp_path / "raw.h5", n_side=2, angles=3)
    out = subprocess.run([sys.executable, "-c", WHOLE_PROCESS, str(raw), str(tmp_path / "a.h5")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["True", "True"]   # after the command's own summary lines
    frozen = gc.get_freeze_count()
    assert main(["process", str(raw), "-o", str(tmp_path / "b.h5"), "-q"]) == 0
    assert gc.get_freeze_count() == frozen and gc.isenabled()
