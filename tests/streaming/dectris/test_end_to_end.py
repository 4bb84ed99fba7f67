"""Stream V2 end to end: simulated SXDM frames from a stream V2 sender through `opmon live
--source dectris:...` and `opmon archive`: 0 lost, the detector's chunks archived as they came,
live maps equal to `opmon process` on the same frames."""
from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np

from opmon.ports import is_free
from opmon.processors.maps import read_map_result
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.streaming.archive.raw import RawMapWriter
from opmon.streaming.dectris.sender import StreamV2Sender, compress, end_message, image_message, start_message

from tests.processors.conftest import FRAME, GEOMETRY, MAP, assert_same_maps, synthetic_map
from tests.streaming.conftest import write_config
from tests.waiting import stop_processes, until

DTYPES = ("uint8", "uint16", "uint32")
BLOCK = 256     # bitshuffle block of the sender, in elements


def series_frames(k: int, dtype: str) -> tuple[list[np.ndarray], list[int], list[float]]:
    """One simulated SXDM map (a Bragg spot moving over the particle and with eta) as `dtype` counts."""
    frames, points, etas = zip(*synthetic_map(k, seed=3))
    limit = 200 if dtype == "uint8" else None     # 8-bit counts saturate: keep them below DECTRIS's cutoff
    return [np.minimum(f, limit or f.max()).astype(dtype) for f in frames], list(points), list(etas)


def send_series(sender: StreamV2Sender, k: int, dtype: str, mask: np.ndarray) -> list[np.ndarray]:
    frames, points, etas = series_frames(k, dtype)
    user = {"opmon": {"map_shape": list(MAP), "map_index": points, "eta": etas, "delta": 30.0}}
    sender.send(start_message(k, frame_shape=FRAME, dtype=dtype, n_images=len(frames), channels=("t1", "t2"),
                              energy_ev=GEOMETRY["energy_ev"], distance_m=GEOMETRY["distance_m"],
                              pixel_size_m=GEOMETRY["pixel_size_m"][0], beam_center=GEOMETRY["beam_center"],
                              masks={"t1": mask, "t2": np.zeros_like(mask)}, user_data=user))
    for i, frame in enumerate(frames):    # channel t2 holds other counts: maps of it would differ
        # 1 kB bitshuffle blocks where the archive's filter makes 8 kB: a recompressed frame would differ
        sender.send(image_message(k, i, {"t1": frame, "t2": frame[::-1, ::-1].copy()}, block_elems=BLOCK))
    sender.send(end_message(k))
    return frames


def offline_maps(tmp_path, k: int, frames: list[np.ndarray], mask: np.ndarray, roi):
    """`opmon process` on the same frames written in the FORMATS.md raw layout."""
    _, points, etas = series_frames(k, "uint32")
    path = tmp_path / f"offline{k}.h5"
    with h5py.File(path, "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=FRAME, dtype=np.uint32, map_shape=MAP,
                              detector_mask=mask, **GEOMETRY)
        writer.append(np.stack(frames).astype(np.uint32), points, etas, 0.0, 0.0, 30.0)
    with h5py.File(path, "r") as f:
        return process_entry(f["entry"], ProcessOptions(roi=tuple(roi)))[0]


def test_stream_v2_series_of_every_dtype_reach_live_maps_and_archive_losslessly(tmp_path):
    config, path = write_config(tmp_path)
    archive = tmp_path / "archive"
    mask = np.zeros(FRAME, dtype=np.uint8)
    mask[3, 5] = mask[30, 40] = 1                  # dead pixels from the detector's pixel mask
    sender = StreamV2Sender("tcp://127.0.0.1:*")
    log = open(tmp_path / "live.log", "w+")        # noqa: SIM115 (read after the process ended)
    archiver_log = open(tmp_path / "archive.log", "w")    # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, "-m", "opmon.cli", "archive", "--config", path],
                              stdout=archiver_log, stderr=archiver_log)]
    runs = [f"dectris-{k}-OPMON{k:021d}" for k in range(len(DTYPES))]
    try:
        # the services up first, as at a beamline (an archiver starting under a flowing stream is its own test)
        assert until(lambda: not is_free(config.host, config.ports.maps_archive), 60)
        procs.append(subprocess.Popen([sys.executable, "-m", "opmon.cli", "live", "--config", path, "--archive-dir",
                                       str(archive), "--source", f"dectris:{sender.endpoint}"], stdout=log, stderr=log))
        assert until(lambda: not is_free(config.host, config.ports.frames_live), 60)
        sent = [send_series(sender, k, dtype, mask) for k, dtype in enumerate(DTYPES)]
        assert until(lambda: all((archive / run / "map_0000_maps.h5").exists() for run in runs), 120), \
            "final maps not archived"
    finally:
        stop_processes(procs[::-1], 30)        # live (and its bridge) first: the archiver acknowledges to the end
        sender.close()
    log.seek(0)
    text = log.read()
    summary = json.loads(text.split("dectris bridge: ")[-1].splitlines()[0])
    assert summary["accepted"] == sum(len(s) for s in sent) and summary["lost"] == 0, text[-2000:]
    assert summary["rejected_total"] == 0 and all(s["ended"] and s["lost"] == 0 for s in summary["series"])
    for k, (run, frames, dtype) in enumerate(zip(runs, sent, DTYPES)):
        with h5py.File(archive / run / "map_0000_maps.h5", "r") as f:
            live = read_map_result(f["entry"])
            roi = f["entry/maps"].attrs["roi"]
        assert_same_maps(live, offline_maps(tmp_path, k, frames, mask, roi))
        with h5py.File(archive / run / "map_0000.h5", "r") as f:
            data = f["entry/instrument/detector/data"]
            np.testing.assert_array_equal(data[()], np.stack(frames))             # uint8 widened to uint16
            assert f["entry/instrument/detector/mask"][3, 5] == 1 and f["entry/scan/complete"][()] == 1
            archived = process_entry(f["entry"], ProcessOptions(roi=tuple(roi)))[0]
            if dtype != "uint8":    # the detector's own bslz4 bytes, not a recompression
                _, chunk = data.id.read_direct_chunk((7, 0, 0))
                sent_chunk = compress(frames[7], "bslz4", BLOCK).data
                assert bytes(chunk) == sent_chunk
        assert_same_maps(archived, live)
