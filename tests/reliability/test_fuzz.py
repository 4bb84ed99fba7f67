"""A few hundred fuzzed messages at each socket type, through real sockets: nothing crashes and
every rejection is counted by its reason (the full 10,000 are `opmon bench reliability fuzz`)."""
from __future__ import annotations

import pytest

N = 300


@pytest.mark.parametrize("target", ["archiver", "live"])
def test_frame_stream_fuzz_is_rejected_and_counted(fuzz, tmp_path, target):
    report = fuzz.fuzz_frames(target, N, seed=1, directory=tmp_path)
    assert report["crashes"] == {}
    counters = report["counters"]
    # every reason the generator aims at shows up in the service's own counters
    for reason in ("header", "version", "kind", "field", "dtype", "shape", "size", "parts"):
        assert counters["rejected"].get(reason, 0) > 0, (reason, counters)
    assert counters["accepted"] > 0          # good frames between the bad ones still get through
    assert counters["rejected_total"] > N // 2
    assert not (tmp_path.parent / "escape").exists()     # run uid "../escape" made no directory outside


@pytest.mark.parametrize("channel", ["docs", "maps"])
def test_archiver_side_channels_survive_fuzz(fuzz, tmp_path, channel):
    report = fuzz.fuzz_archiver_channel(channel, N, seed=2, directory=tmp_path)
    assert report["crashes"] == {}
    dropped = report["counters"]["dropped"]
    assert dropped.get("bad_maps" if channel == "maps" else "bad_document", 0) > N // 4, dropped
    assert not [p for p in tmp_path.rglob("*") if ".." in p.name]


def test_dashboard_subscriber_survives_fuzz(fuzz):
    report = fuzz.fuzz_display(N, seed=3)
    assert report["crashes"] == {}
    assert report["not_handled"] == 0
    rejected = report["counters"]["rejected"]
    assert {"header", "version", "parts", "size"} <= set(rejected), rejected
    assert report["counters"]["accepted"].get("map", 0) > 0


def test_control_server_answers_every_fuzzed_request(fuzz):
    report = fuzz.fuzz_control(N, seed=4)
    assert report["crashes"] == {}
    assert sum(report["counters"]["replies"].values()) == N      # the REP thread answered each one
    assert {"json", "token", "version", "command"} <= set(report["counters"]["server_rejected"])
