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
