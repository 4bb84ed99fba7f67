"""`opmon bench STAGE`: every stage resolves to a benchmark that parses its options, and each
data-path stage runs end to end at its smallest size through the command line and prints its
figure beside the baseline it measured in the same run. The figures are parsed and must be
finite and positive; they are never compared with a time (machines are noisy)."""
from __future__ import annotations

import math
import re

import pytest

from opmon.cli import main
from opmon.commands.bench import STAGES

NUMBER = r"(\S+)"      # whatever is printed (a nan or inf too), so the check below sees it

#: stage -> (smallest run, figures printed as (what, pattern); the first is the stage, the rest its baselines)
SMALLEST: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "process": (["--frames", "64", "--file-frames", "64", "--map", "3", "3", "4", "--rounds", "1"], [
        ("kernel fr/s, uint32 full", rf"^uint32 +full +512x512 +{NUMBER} +{NUMBER} "),
        ("numpy sum fr/s, uint32 full", rf"^uint32 +full +512x512 +\S+ +{NUMBER} "),
        ("fused numba fr/s, uint32 full", rf"^uint32 +full +512x512 +\S+ +\S+ +{NUMBER} "),
        ("kernel fr/s, uint32 128x160", rf"^uint32 +full +128x160 +{NUMBER} "),
        ("fused numba fr/s, uint32 128x160", rf"^uint32 +full +128x160 +\S+ +\S+ +{NUMBER} "),
        ("end-to-end MB/s", rf"end-to-end opmon process .*: {NUMBER} MB/s of raw frames"),
        ("h5py read+decompress MB/s", rf"h5py read\+decompress alone {NUMBER} MB/s"),
        ("whole opmon process s", rf"whole command, .*: opmon process {NUMBER} s"),
        ("h5py read+sum s", rf"h5py read\+sum {NUMBER} s in-process"),
        ("whole opmon process s, no robust steps", rf"whole command with --powder-spots off --register off .*: opmon process {NUMBER} s"),
        ("opmon --help s", rf"start-up: opmon --help {NUMBER} s"),
        ("import numpy s", rf"python -c 'import numpy' {NUMBER} s"),
    ]),
    "acquisition": (["--map-shape", "3", "3", "--angles", "4"], [
        ("plan frames/s", rf"sxdm_map through the RunEngine: +{NUMBER} frames/s"),
        ("renderer frames/s", rf"FrameRenderer.frames alone: +{NUMBER} frames/s"),
        ("fly plan frames/s", rf"sxdm_map fly scan: +{NUMBER} frames/s"),
        ("fly end to end frames/s", rf"end to end into the archive, fly : +{NUMBER} frames/s"),
        ("step end to end frames/s", rf"end to end into the archive, step: +{NUMBER} frames/s"),
    ]),
    "render": (["--frames", "256"], [
        ("render frames/s", rf"^render +: +{NUMBER} frames/s"),
        ("numpy zero frames/s", rf"^numpy zero +: +{NUMBER} frames/s"),
    ]),
    "archive": (["--frames", "100", "--repeat", "1"], [
        ("archiver frames/s", rf"archiver \(ZeroMQ -> HDF5\) +{NUMBER} frames/s"),
        ("MapFileWriter frames/s", rf"MapFileWriter from memory +{NUMBER} frames/s"),
        ("raw loopback frames/s", rf"raw pyzmq PUSH/PULL loopback +{NUMBER} frames/s"),
    ]),
    "sources": (["--scans", "2", "--frames", "20", "--size", "32", "--repeat", "1"], [
        ("BLISS source MB/s", rf"opmon BLISS source \(open \+ blocks\) +{NUMBER} MB/s"),
        ("h5py MB/s", rf"h5py read_direct of the same frames +{NUMBER} MB/s"),
    ]),
    "stream": (["--frames", "100", "--repeat", "1", "--workers", "1"], [
        ("live chain frames/s", rf"live chain +{NUMBER} frames/s"),
        ("raw PUSH/PULL frames/s", rf"raw pyzmq PUSH/PULL +{NUMBER} frames/s"),
    ]),
    "dectris": (["--frames", "40", "--repeats", "1"], [
        ("bridge + accumulator frames/s", rf"opmon bridge \+ protocol \+ accumulator: +{NUMBER} frames/s"),
        ("bare cbor2 + decompress frames/s", rf"bare cbor2 \+ dectris-compression, one channel: +{NUMBER} frames/s"),
    ]),
    "truth": (["--size", "8", "--cases", "none,drift", "--live"], [
        ("median |d error| A, drift", r"^drift +([-+.e\d]+|nan)"),
        ("median |d error| A, compact, live", r"^compact live +([-+.e\d]+|nan)"),
        ("median |d error| A, compact simulator", r"^compact +([-+.e\d]+|nan)"),
    ]),
    "dask": (["--maps", "2", "--frames-per-map", "20", "--repeat", "1"], [
        ("dask 2 workers frames/s", rf"^dask, 2 workers +\S+ +\S+ +{NUMBER} "),
        ("dask 1 worker frames/s", rf"^dask, 1 worker +\S+ +\S+ +{NUMBER} "),
        ("one process frames/s", rf"^one process +\S+ +\S+ +{NUMBER} "),
        ("speed-up 2 over 1 worker", rf"speed-up of 2 workers over 1 worker: {NUMBER}x"),
    ]),
    "peak-fit": (["--size", "8", "--scans", "8", "--repeat", "1"], [
        ("peak fit s", rf"Gaussian peak fit \(fit_gauss\): +{NUMBER} s"),
        ("centre of mass s", rf"centre of mass \(derive_maps of the summed scans\): {NUMBER} s"),
    ]),
    "dashboard": (["--seconds", "3", "--rate", "200"], [
        ("browser latency p50 ms", rf"latency frame processed -> in browser: p50 {NUMBER} ms"),
        ("transport latency p50 ms", rf"baseline transport only \(PUB -> SUB\): p50 {NUMBER} ms"),
        ("server CPU %", rf"dashboard server CPU following the stream: {NUMBER} %"),
    ]),
}


def figures(out: str, patterns: list[tuple[str, str]]) -> dict[str, float]:
    """Each named figure read from the printed output (a missing line fails, naming it)."""
    found = {}
    for what, pattern in patterns:
        match = re.search(pattern, out, re.MULTILINE)
        assert match, f"{what}: no line matches {pattern!r} in\n{out}"
        found[what] = float(match.group(1))
    return found


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_loads_and_answers_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", stage, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


@pytest.mark.parametrize("stage", [
    *(s for s in SMALLEST if s != "dashboard"),
    pytest.param("dashboard", marks=[pytest.mark.browser, pytest.mark.slow]),
])
def test_each_stage_prints_its_figure_and_its_same_run_baseline(stage, capsys):
    argv, patterns = SMALLEST[stage]
    status = main(["bench", stage, *argv])
    out = capsys.readouterr().out
    if stage == "dashboard" and "needs /usr/bin/chromium" in out:
        pytest.skip("Debian chromium/chromium-driver missing: run scripts/install-browser.sh")
    assert status == 0, out
    if stage == "process":
        assert "numpy sum fr/s" in out and "end-to-end opmon process" in out
    bad = {what: value for what, value in figures(out, patterns).items() if not (math.isfinite(value) and value > 0)}
    assert not bad, f"figures not finite and positive: {bad}\n{out}"


def test_every_data_path_stage_has_a_figure_test():
    assert set(SMALLEST) == set(STAGES) - {"reliability"}    # reliability: tests/reliability/test_bench_reliability.py
