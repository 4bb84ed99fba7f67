"""The detector forgets where a frame went once a StreamDatum references it: a 48-hour beamtime
(~3.5e8 frames at 2 kHz) must not keep one entry per frame ever taken."""
from __future__ import annotations

import pytest

from opmon.acquisition import MapGrid, VoltageThresholds, operando_series
from opmon.acquisition.detector import FrameLedger


def test_the_ledger_keeps_only_frames_not_yet_referenced():
    ledger = FrameLedger()
    for i in range(1000):
        ledger.append(("resource", i))
        if i % 10 == 9:
            ledger.forget_before(i + 1)
    assert len(ledger) == 1000 and ledger.held < 20
    ledger.append(("resource", 1000))
    assert ledger[1000] == ("resource", 1000)
    with pytest.raises(IndexError, match="forgotten"):
        ledger[3]


def test_a_run_of_several_maps_keeps_no_entry_per_frame_taken(RE, make_beamline):
    bl = make_beamline(acceleration=600.0)
    from opmon.acquisition import CellCommand
    from opmon.acquisition.cell_state import CellMode
    charge = CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1 / 15), cutoff=4.9)
    result = RE(operando_series(bl.potentiostat, bl.stage, bl.diffractometer, bl.detector,
                                grid=MapGrid((4, 4), 0.1), etas=bl.etas()[:3], triggers=VoltageThresholds([4.0, 4.3, 4.5]),
                                charge=charge, max_maps=3)).plan_result
    taken = sum(m.frames for m in result.maps)
    ledger = bl.detector.recorder.frames
    assert taken == 3 * 16 * 3 and len(ledger) == taken
    assert ledger.held <= 16 * 3, f"{ledger.held} entries held after {taken} frames were referenced"
