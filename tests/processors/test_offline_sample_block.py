"""`opmon process` samples a map's frames for its auto ROI and bad-pixel finder, then reads them
all for the kernels, a block at a time: both blocks are bounded in bytes (64 frames of a 16M-pixel
Eiger took 2.3 GB), and neither the sample nor the maps depend on how many frames a block holds."""
import numpy as np

from opmon.processors import offline
from opmon.streaming.archive.sources import open_source


def test_the_sample_block_is_bounded_in_bytes_not_only_in_frames():
    assert offline.sample_block((512, 512), np.uint32) == offline.ROI_SAMPLE_BLOCK        # 1 MiB frames: 64 of them
    eiger = offline.sample_block((4362, 4148), np.uint16)                                  # the tickit EIGER2 16M
    assert 1 <= eiger < offline.ROI_SAMPLE_BLOCK
    assert eiger * 4362 * 4148 * 2 <= offline.ROI_SAMPLE_BYTES
    assert offline.sample_block((20000, 20000), np.uint32) == 1                            # larger than the budget


def test_the_sample_is_the_same_whatever_frames_a_block_holds(make_raw, tmp_path, monkeypatch):
    raw = make_raw(tmp_path / "raw.h5", n_side=4, angles=8)
    with open_source(raw) as source:
        smap = source.maps[0]
        whole = offline.sample_map(smap)
        monkeypatch.setattr(offline, "ROI_SAMPLE_BYTES", 3 * int(np.prod(smap.meta.frame_shape)) * 4)   # 3 frames a block
        assert offline.sample_block(smap.meta.frame_shape, smap.meta.frame_dtype) == 3
        small = offline.sample_map(smap)
    np.testing.assert_array_equal(small.total, whole.total)
    np.testing.assert_array_equal(small.finder.standout, whole.finder.standout)
    assert small.finder.frames == whole.finder.frames > 0


def test_frames_read_for_the_kernels_are_bounded_in_bytes_and_the_maps_do_not_depend_on_it(make_raw, tmp_path,
                                                                                            monkeypatch):
    raw = make_raw(tmp_path / "raw.h5", n_side=4, angles=8)
    options = offline.ProcessOptions(block=64)
    whole = offline.process_file(raw, tmp_path / "whole.h5", options)
    with open_source(raw) as source:
        smap = source.maps[0]
        frame_bytes = int(np.prod(smap.meta.frame_shape)) * smap.meta.frame_dtype.itemsize
        monkeypatch.setattr(offline, "READ_BYTES", 5 * frame_bytes)          # 5 frames a block
        assert offline.read_block(smap, 64) == 5
        sizes: list[int] = []
        blocks = type(smap).blocks
        monkeypatch.setattr(type(smap), "blocks", lambda self, block, *a, **k: (sizes.append(block), blocks(self, block, *a, **k))[1])
    small = offline.process_file(raw, tmp_path / "small.h5", options)
    assert sizes and max(sizes) == 5
    for name, maps in whole.items():
        for key in ("d_spacing", "tilt_altitude", "intensity"):
            np.testing.assert_allclose(getattr(small[name], key), getattr(maps, key), rtol=1e-12, equal_nan=True)
