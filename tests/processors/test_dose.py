"""The dose map: exposure × flux per frame at its piezo position, over every map of a run,
carried by the live processor's map messages and archived with each map."""
from __future__ import annotations

import threading
from collections import Counter

import h5py
import numpy as np
import pytest
import zmq

from opmon.errors import ConfigError
from opmon.processors.dose import DoseLedger, DoseSettings
from opmon.processors.live import open_live_processor
from opmon.streaming.archive.final_maps import write_final_maps
from opmon.streaming.archive.maps_file import read_dose
from opmon.streaming.map_messages import decode_dose, decode_map
from opmon.streaming import protocol as P
from opmon.streaming.publisher import ZmqFrameSink

from tests.processors.conftest import FRAME, GEOMETRY, MAP, synthetic_map

EXPOSURE, FLUX, STEP = 0.01, 1e9, 0.1


def position(p: int, shift: tuple[int, int]) -> tuple[float, float]:
    """Piezo (x, y) in µm of map pixel `p` for a map whose region is moved by `shift` cells."""
    iy, ix = divmod(p, MAP[1])
    return (ix + shift[1]) * STEP, (iy + shift[0]) * STEP


def test_ledger_bins_positions_scales_by_the_monitor_and_falls_back_to_the_map_pixel():
    ledger = DoseLedger(DoseSettings(EXPOSURE, FLUX, STEP))
    ledger.add({"x": 0.1, "y": 0.2, "index": 0}, MAP)
    ledger.add({"x": 0.1001, "y": 0.1999, "index": 5}, MAP)   # jitter: the same cell
    ledger.add({"x": None, "y": None, "index": 5}, MAP)       # no position: map pixel (1, 1)
    grid = ledger.grid()
    assert grid.origin_um == pytest.approx((0.1, 0.1)) and grid.step_um == STEP
    assert grid.photons.tolist() == [[1e7], [2e7]]     # cells (1, 1) and (2, 1)
    monitored = DoseLedger(DoseSettings(EXPOSURE, FLUX, STEP))
    for monitor in (100.0, 50.0):      # the beam halves: the second frame delivers less than the first
        monitored.add({"x": 0.0, "y": 0.0, "index": 0, "monitor": monitor}, MAP)
    assert monitored.grid().photons[0, 0] == pytest.approx(1e7 + 1e7 * 50.0 / 75.0)
    shares = DoseLedger(DoseSettings(EXPOSURE, FLUX, STEP))
    for number in (0, 1, 1):           # a frame of map 1 arrives before map 0's final maps are made
        shares.add({"map": number, "x": 0.0, "y": 0.0, "index": 0}, MAP)
    assert shares.grid(up_to=0).photons[0, 0] == pytest.approx(1e7)      # recorded with map 0: map 0 only
    shares.release(0)
    assert shares.grid(up_to=1).photons[0, 0] == shares.grid().photons[0, 0] == pytest.approx(3e7)
    with pytest.raises(ConfigError, match="flux_ph_s"):
        DoseSettings.from_start({"metadata": {"dose": {"exposure_s": 0.01, "flux_ph_s": -1, "step_um": 0.1}}})
    assert DoseSettings.from_start({"metadata": {}}) is None


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.timeout(180)
def test_dose_of_a_run_is_exposure_times_flux_times_frames_per_position_and_is_archived(tmp_path, workers):
    """Two maps, the second moved one cell right (re-centred): the overlap has twice the dose.
    Inline and fanned out (the workers report each frame's position to the coordinator)."""
    ctx = zmq.Context()
    maps_in = ctx.socket(zmq.PULL)
    port = maps_in.bind_to_random_port("tcp://127.0.0.1")
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], None, f"tcp://127.0.0.1:{port}", workers=workers, roi=None,
                                    context=ctx)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    shifts = [(0, 0), (0, 1)]
    sent: Counter[tuple[int, int]] = Counter()
    try:
        sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP,
                       metadata={"dose": {"exposure_s": EXPOSURE, "flux_ph_s": FLUX, "step_um": STEP}}, **GEOMETRY)
        for m, shift in enumerate(shifts):
            frames = synthetic_map(m)
            sink.start_map(len(frames))
            for frame, p, eta in frames:
                x, y = position(p, shift)
                sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0, x=x, y=y)
                sent[(round(y / STEP), round(x / STEP))] += 1
            sink.end_map()
        sink.stop_run()
        finals = []
        for _ in shifts:
            assert maps_in.poll(60_000), "no final map"
            finals.append(maps_in.recv_multipart())
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
    topic, head, *buffers = finals[-1]
    header = P.unpack(head)
    photons, origin, step = decode_dose(header, decode_map(header, buffers))
    expected = np.zeros((MAP[0], MAP[1] + 1))          # computed from what was sent, not by the ledger
    for (iy, ix), n in sent.items():
        expected[iy, ix] = n * EXPOSURE * FLUX
    assert origin == (0.0, 0.0) and step == STEP
    np.testing.assert_allclose(photons, expected, rtol=1e-12)
    assert header["dose"]["max"] == pytest.approx(expected.max())
    first = P.unpack(finals[0][1])
    assert first["dose"]["max"] == pytest.approx(len(synthetic_map(0)) // (MAP[0] * MAP[1]) * EXPOSURE * FLUX)
    path = tmp_path / "map_0001_maps.h5"            # the archiver's writer of final maps
    write_final_maps(path, header, buffers)
    with h5py.File(path, "r") as f:
        dose = read_dose(f["entry"])
        assert f["entry/dose"].attrs["signal"] == "photons" and f["entry/dose/x"].attrs["units"] == "um"
    np.testing.assert_allclose(dose.photons, expected, rtol=1e-12)
    np.testing.assert_allclose(dose.axes()[0], STEP * np.arange(MAP[1] + 1))
    ctx.destroy(linger=0)
