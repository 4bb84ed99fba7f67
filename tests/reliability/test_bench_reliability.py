"""Smoke test of benchmarks/reliability.py (`opmon bench reliability`) with tiny sizes: every
scenario runs end to end and prints its figures (no figure is asserted against a time)."""
from __future__ import annotations

import json

import pytest

from opmon.commands.bench import load
from opmon.port_picker import port_block


def test_fuzz_tokens_disk_scenarios_print_figures(tmp_path, capsys):
    module = load("reliability")
    out = tmp_path / "figures.json"
    assert module.main(["fuzz", "tokens", "disk", "--messages", "60", "--rate", "500", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for title in ("fuzz: frames -> archiver", "fuzz: control -> ControlServer", "wrong tokens", "disk full"):
        assert f"== {title}" in printed
    figures = json.loads(out.read_text())
    assert figures["tokens"]["accepted"] == 0
    assert all(r["crashes"] == {} for r in figures["fuzz"])
    assert figures["disk"]["status_state"] == "disk_full"


@pytest.mark.slow
def test_kill_scenario_reads_the_archive_back(capsys):
    module = load("reliability")
    base = port_block(10)                       # the services bind from their config: the shared picker
    assert module.main(["kill-acquisition", "--kills", "1", "--rate", "200", "--map-frames", "200",
                        "--port-base", str(base)]) == 0
    printed = capsys.readouterr().out
    assert "== kill -9 acquisition x 1" in printed
    runs = [json.loads(line.split(": ", 1)[1]) for line in printed.splitlines() if line.strip().startswith("run ")]
    assert len(runs) == 2 and runs[0]["killed"] and not runs[1]["killed"]
    assert runs[0]["frames"] > 0                    # the killed run's frames up to the kill are archived
    assert runs[0]["exit_status"] == "abort"         # and it is marked aborted once the next run starts


def test_unknown_scenario_is_one_line(capsys):
    assert load("reliability").main(["nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
