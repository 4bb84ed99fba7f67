"""`opmon bench stream` runs end to end and reports every figure (no timing is asserted)."""
from __future__ import annotations

import re

import pytest

from opmon.benchmarks import bench_stream


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_stream_reports_ratios_loss_and_latency_for_inline_and_fan_out(capsys):
    assert bench_stream.main(["--frames", "300", "--repeat", "1", "--workers", "1", "2"]) == 0
    out = capsys.readouterr().out
    for workers in (1, 2):
        assert re.search(rf"workers={workers}: raw pyzmq PUSH/PULL +\d+ frames/s \| live chain +\d+ frames/s \| "
                         rf"ratio \d+\.\d\dx", out), out
    assert re.search(r"same topology, no work \(1 PUSH -> 2 PULL processes\): \d+ frames/s", out), out
    assert len(re.findall(r"frames lost 0 of \d+ \(goal 0\), rejected 0", out)) == 2, out
    assert len(re.findall(r"paced at \d+ frames/s .*: p50 \d+\.\d ms, p99 \d+\.\d ms", out)) == 2, out
