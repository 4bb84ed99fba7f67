"""`opmon replay` streams a raw file or archive through the live chain and gets `opmon process` maps."""
from __future__ import annotations

import h5py
import numpy as np

from opmon.cli import main
from opmon.streaming.archive.raw import RawMapWriter
from opmon.processors.maps import read_map_result
from opmon.processors.offline import ProcessOptions, process_entry

from tests.processors.conftest import FRAME, GEOMETRY, MAP, assert_same_maps, synthetic_map


def test_replay_of_a_two_map_file_matches_offline_processing(tmp_path, capsys):
    raw = tmp_path / "raw.h5"
    with h5py.File(raw, "w") as f:
        for m in range(2):
            frames = synthetic_map(m, seed=11)
            writer = RawMapWriter(f.create_group(f"entry{m}"), frame_shape=FRAME, dtype=np.uint32, map_shape=MAP, **GEOMETRY)
            writer.append(np.stack([fr for fr, _, _ in frames]), [p for _, p, _ in frames], [e for _, _, e in frames],
                          0.0, 0.0, 30.0)
    out = tmp_path / "replayed.h5"
    assert main(["replay", str(raw), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "frames lost 0" in text and "maps written" in text
    with h5py.File(out, "r") as f, h5py.File(raw, "r") as r:
        for m in range(2):
            live = read_map_result(f[f"entry{m}"])
            roi = tuple(int(v) for v in f[f"entry{m}/maps"].attrs["roi"])
            offline, _ = process_entry(r[f"entry{m}"], ProcessOptions(roi=roi))
            assert_same_maps(live, offline)


def test_replay_of_a_bliss_file_through_the_live_chain_matches_offline_processing(tmp_path, capsys):
    """A BLISS dataset (one sxdm scan per eta, VDS onto Lima files) streams through the live processor
    and gives the maps `opmon process` makes of the same frames in opmon's raw layout."""
    from tests.streaming.archive.id01_data import make_id01_files

    files = make_id01_files(tmp_path / "id01", map_shape=(8, 9), angles=12)
    out = tmp_path / "replayed.h5"
    assert main(["replay", str(files.bliss), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"replayed {8 * 9 * 12} frames in 1 maps" in text and "frames lost 0" in text
    with h5py.File(out, "r") as f, h5py.File(files.raw, "r") as r:
        live = read_map_result(f["entry0"])
        roi = tuple(int(v) for v in f["entry0/maps"].attrs["roi"])
        offline, _ = process_entry(r["entry"], ProcessOptions(roi=roi))
    assert int(offline.mask.sum()) > 5
    assert_same_maps(live, offline)


def test_replay_carries_the_monitor_and_the_live_maps_divide_by_it_as_offline_does(tmp_path, capsys):
    """Frames of a raw file with an incident-beam monitor stream with it (frame header `monitor`); the live
    processor divides by it like `opmon process`, so their maps agree, and differ from unnormalised ones."""
    raw = tmp_path / "raw.h5"
    frames = synthetic_map(0, seed=12)
    monitor = np.where(np.arange(len(frames)) < len(frames) // 2, 1.0e5, 6.0e4)  # the beam drops by 40 %
    with h5py.File(raw, "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=FRAME, dtype=np.uint32, map_shape=MAP, **GEOMETRY)
        writer.append(np.stack([fr for fr, _, _ in frames]), [p for _, p, _ in frames], [e for _, _, e in frames],
                      0.0, 0.0, 30.0)
        f["entry/instrument/monitor/data"] = monitor
    out = tmp_path / "replayed.h5"
    assert main(["replay", str(raw), "-o", str(out)]) == 0
    assert "frames lost 0" in capsys.readouterr().out
    with h5py.File(out, "r") as f, h5py.File(raw, "r") as r:
        live = read_map_result(f["entry0"])
        roi = tuple(int(v) for v in f["entry0/maps"].attrs["roi"])
        offline, _ = process_entry(r["entry"], ProcessOptions(roi=roi))
        unnormalised, _ = process_entry(r["entry"], ProcessOptions(roi=roi, monitor=False))
    assert_same_maps(live, offline)
    np.testing.assert_array_equal(live.flags, offline.flags)
    assert not np.allclose(live.intensity, unnormalised.intensity, rtol=0.05)
