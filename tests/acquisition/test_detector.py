"""The SXDM detector and map plan: frames in real HDF5 files, referenced by valid documents."""
from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import h5py
import numpy as np
import pytest

from opmon.acquisition.mapping import MapGrid, sxdm_map
from opmon.acquisition.sinks import FrameSink, TeeSink
from opmon.streaming.archive.map_sink import Hdf5MapSink
from opmon.errors import ConfigError, LimitError
from opmon.streaming.archive.raw import iter_frame_blocks, read_raw_meta
from tests.acquisition.conftest import MemorySink, stream, validate_all


def _file_of(resource: dict[str, Any]) -> Path:
    return Path(urlparse(resource["uri"]).path)


@pytest.mark.parametrize("order", ["eta-outer", "point-outer"])
def test_map_frames_are_in_the_file_and_referenced_by_valid_documents(RE, docs, make_beamline, order, tmp_path) -> None:
    memory = MemorySink()
    bl = make_beamline(sink=TeeSink(Hdf5MapSink(tmp_path / "tee"), memory))
    grid, etas = bl.grid(), bl.etas()
    uid = RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, grid, etas, order=order,
                      potentiostat=bl.potentiostat)).plan_result
    validate_all(docs)
    start = docs[0][1]
    assert start["uid"] == uid and start["geometry"]["map_shape"] == [4, 4]
    assert start["geometry"]["energy_ev"] == 10000.0 and start["geometry"]["beam_center"] == [32.0, 32.0]  # frame pixels of the ROI crop
    frames = stream(docs, "primary")
    n = 16 * 5
    assert len(frames) == n
    resources = [d for name, d in docs if name == "stream_resource"]
    datums = [d for name, d in docs if name == "stream_datum"]
    assert len(resources) == 1 and resources[0]["data_key"] == "detector"
    assert resources[0]["parameters"]["dataset"] == "/entry/instrument/detector/data"
    # StreamDatum ranges tile the dataset and the events, without gaps or overlaps
    assert [(d["indices"]["start"], d["indices"]["stop"]) for d in datums] == [(i, i + 1) for i in range(n)]
    assert [d["seq_nums"]["start"] for d in datums] == [e["seq_num"] for e in frames]
    path = _file_of(resources[0])
    with h5py.File(path, "r") as f:
        meta = read_raw_meta(f["entry"])
        assert meta.n_frames == n and meta.map_shape == (4, 4) and meta.frame_shape == (64, 64)
        assert f["entry"].attrs["run_uid"] == uid
        np.testing.assert_array_equal(meta.map_index, [e["data"]["detector-map_index"] for e in frames])
        np.testing.assert_allclose(meta.eta, [e["data"]["diffractometer-eta"] for e in frames])
        np.testing.assert_allclose(meta.x_um, [e["data"]["stage-x"] for e in frames])
        on_disk = np.concatenate([block.copy() for _, block in iter_frame_blocks(f["entry"], 32)])
    np.testing.assert_array_equal(on_disk, np.stack(memory.frames))
    assert on_disk.sum() > 0
    # each frame carries its identity and positions
    for seq, (h, e) in enumerate(zip(memory.headers, frames)):
        assert h["run_uid"] == uid and h["map_number"] == 0 and h["seq"] == seq
        assert h["map_index"] == e["data"]["detector-map_index"]
        assert h["eta"] == e["data"]["diffractometer-eta"] and h["y"] == e["data"]["stage-y"]
        assert {"phi", "nu", "delta", "timestamp", "cell_time", "x_li"} <= set(h)
        assert h["dtype"] == "uint32" and h["shape"] == [64, 64]
    # acquisition order
    etas_seen = meta.eta
    if order == "eta-outer":
        assert np.all(etas_seen[:16] == etas[0]) and list(meta.map_index[:16]) == list(range(16))
    else:
        assert list(etas_seen[:5]) == etas and np.all(meta.map_index[:5] == 0)
    assert memory.closed >= 1 and len(stream(docs, "potentiostat")) >= 1


def test_map_region_visits_only_the_window(RE, docs, make_beamline) -> None:
    bl = make_beamline()
    RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), bl.etas()[:2], region=(1, 3, 2, 4)))
    idx = sorted({e["data"]["detector-map_index"] for e in stream(docs, "primary")})
    assert idx == [6, 7, 10, 11]
    with pytest.raises(ConfigError, match=r"\(0, 5, 0, 1\)"):
        RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), bl.etas(), region=(0, 5, 0, 1)))


def test_map_beyond_travel_fails_before_any_motion(RE, docs, make_beamline) -> None:
    bl = make_beamline()
    with pytest.raises(LimitError, match="stage-x=60"):
        RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, MapGrid((2, 2), 60.0), bl.etas()))
    with pytest.raises(LimitError, match="diffractometer-eta=200"):
        RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, bl.grid(), [19.0, 200.0]))
    assert docs == []


def test_the_crystal_follows_the_cell(RE, docs, make_beamline) -> None:
    from opmon.acquisition.plans import set_cell
    from opmon.acquisition.potentiostat import CellCommand
    from opmon.acquisition.cell_state import CellMode

    memory = MemorySink()
    bl = make_beamline(sink=memory, acceleration=3000.0)
    grid, etas = MapGrid((1, 1), 0.1), bl.etas()
    RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, grid, etas))
    x_before = bl.particle.x_mean
    RE(set_cell(bl.potentiostat, CellCommand(CellMode.GALVANOSTATIC, bl.c_rate(1.0))))

    import bluesky.plan_stubs as bps
    RE(bps.sleep(1.0))  # ~50 min of 1C charge in simulated time
    RE(sxdm_map(bl.detector, bl.stage, bl.diffractometer, grid, etas))
    last = memory.headers[-1]
    assert x_before == 1.0 and last["x_li"] < 0.8
    assert bl.particle.x_mean == pytest.approx(last["x_li"], abs=1e-3)
    assert isinstance(memory, FrameSink)


class CountingSource:
    """A FrameSource that is not the simulator: every frame is filled with its map pixel number."""

    frame_shape = (8, 6)
    dtype = "uint16"

    def detector_mask(self) -> None:
        return None

    def frame(self, map_index: int, positions: dict[str, float]) -> tuple[np.ndarray, dict[str, Any]]:
        return np.full(self.frame_shape, map_index, np.uint16), {"source": "counting"}


def test_plans_run_with_any_frame_source_and_sink(RE, docs, tmp_path) -> None:
    from ophyd_async.core import init_devices

    from opmon.acquisition.detector import DetectorCalibration, SxdmDetector
    from opmon.acquisition.motion import Diffractometer, PiezoStage

    memory = MemorySink()
    with init_devices():
        stage = PiezoStage()
        diff = Diffractometer(eta=10.0, delta=20.0)
    positioners = {"eta": diff.eta, "phi": diff.phi, "nu": diff.nu, "delta": diff.delta, "x": stage.x, "y": stage.y}
    geometry = DetectorCalibration(energy_ev=8000.0, distance_m=1.0, pixel_size_m=(75e-6, 75e-6), beam_center=(4.0, 3.0))
    with init_devices():
        det = SxdmDetector(CountingSource(), TeeSink(Hdf5MapSink(tmp_path), memory), geometry, positioners)
    RE(sxdm_map(det, stage, diff, MapGrid((2, 3), 0.5), [9.9, 10.1], order="point-outer"))
    validate_all(docs)
    assert [int(f[0, 0]) for f in memory.frames] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert memory.headers[0]["source"] == "counting" and memory.headers[0]["delta"] == 20.0
    assert docs[0][1]["geometry"]["energy_ev"] == 8000.0
    resource = next(d for n, d in docs if n == "stream_resource")
    assert resource["parameters"]["frame_shape"] == [8, 6] and resource["parameters"]["dtype"] == "uint16"
