"""Every `opmon bench` stage resolves to a benchmark that parses its options (no timing here)."""
import pytest

from opmon.cli import main
from opmon.commands.bench import STAGES


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_loads_and_answers_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", stage, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_process_benchmark_runs_small(capsys):
    assert main(["bench", "process", "--frames", "64", "--file-frames", "64"]) == 0
    out = capsys.readouterr().out
    assert "numpy sum fr/s" in out and "end-to-end opmon process" in out
