"""`opmon bench archive` runs end to end and reports every figure (no timing is asserted)."""
from __future__ import annotations

import re

import pytest

from opmon.benchmarks import bench_archive


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_archive_reports_the_archiver_beside_direct_writing_and_raw_loopback(capsys, tmp_path):
    assert bench_archive.main(["--frames", "200", "--repeat", "1", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"archiver \(ZeroMQ -> HDF5\) +\d+ frames/s = +\d+ MB/s of raw frames", out), out
    assert re.search(r"MapFileWriter from memory +\d+ frames/s \| archiver ratio \d+\.\d\dx", out), out
    assert re.search(r"raw pyzmq PUSH/PULL loopback +\d+ frames/s \| archiver ratio \d+\.\d\dx", out), out
    assert re.search(r"on disk \d+\.\d MB per 200 frames \(\d+\.\d % of raw\); frames lost 0 of 200, rejected 0", out), out
    assert re.search(r"CPU per frame \(median, beyond start-up\): archiver process -?\d+ us \+ detector process -?\d+ us "
                     r"= -?\d+ us -> at most -?\d+ frames/s on \d+ fully busy cores; loopback receiver", out), out
    assert re.search(r"archiver, detector-compressed chunks +\d+ frames/s = +\d+ MB/s of raw frames \| \d+\.\d\dx "
                     r"raw-frame archiver, \d+\.\d\dx raw loopback", out), out
    for row in ("raw frames", "chunks    "):     # every frame read back and compared with the one sent
        assert re.search(rf"{row}: on the wire +\d+\.\d kB/frame = +\d+ MB/s, on disk +\d+\.\d kB/frame = +\d+ MB/s; "
                         r"frames lost \(read back and compared\) 0 of 200, rejected 0", out), out
    assert list(tmp_path.iterdir()) == []          # nothing left behind
