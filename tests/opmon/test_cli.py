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
