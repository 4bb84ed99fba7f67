"""Registration of the eta scans of a drifting sample: shifts found, applied offline and live alike.

The maps here are synthetic (a textured particle whose every pixel rocks alike, so each eta scan
shows the same image, scaled and moved by the drift): what registration can recover. On the
simulator's strained particles the part in Bragg condition moves with eta too (see the report
of `opmon bench truth --cases drift`); a manual override then applies the true shifts.
"""
from __future__ import annotations

import logging

import threading

import h5py
import numpy as np
import pytest
import zmq

from opmon.errors import ConfigError
from opmon.processors.eta_scans import ManualShifts, add_states, read_shifts_file
from opmon.processors.live import open_live_processor
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.processors.registration import coverage, register, register_eta_scans, resample
from opmon.simulators.drift import centred_on, drift_path
from opmon.streaming.archive.raw import RawMapWriter
from opmon.streaming.publisher import ZmqFrameSink

from tests.processors.conftest import assert_same_maps, map_sockets, recv_map

FRAME = (40, 48)
GEOMETRY = dict(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(-600.0, 20.0))
ROI = (4, 36, 4, 44)
MAP = (14, 14)
N_SCANS = 8
ETAS = 10.0 + 0.016 * np.arange(N_SCANS)
ROCKING = np.exp(-0.5 * ((np.arange(N_SCANS) - 3.5) / 1.6) ** 2)   # every pixel rocks alike


def particle(shape=MAP, centre=(6.5, 6.8), radius=3.8):
    """Amplitude of a textured particle on the map grid (zero outside)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    inside = (yy - centre[0]) ** 2 + ((xx - centre[1]) / 1.2) ** 2 <= radius ** 2
    return np.where(inside, 1.0 + 0.6 * np.sin(1.3 * yy) * np.cos(0.9 * xx), 0.0)


def drifted_scans(shifts, rng=None, peak=2000.0):
    """(n, ny, nx) intensity of each eta scan: the particle moved by its shift, scaled by the rocking curve."""
    a = particle()
    scans = np.stack([ROCKING[i] * peak * resample(a, -np.asarray(s)) for i, s in enumerate(shifts)])
    return rng.poisson(scans).astype(float) if rng is not None else scans


def true_shifts(seed=3):
    """Drift of up to 3 map pixels over the scans, in the Σ I-weighted mean frame (the simulator's rule)."""
    return centred_on(drift_path(N_SCANS, 3.0, seed), ROCKING)


def test_register_finds_a_sub_pixel_displacement_of_either_sign():
    a = particle()
    for shift in ((1.3, -0.7), (-2.6, 0.45), (0.0, 2.9)):
        moved = resample(a, -np.asarray(shift))     # the content moved by +shift
        np.testing.assert_allclose(register(moved, a), shift, atol=0.1)   # bilinear moves bias ~0.08
    np.testing.assert_allclose(register(np.zeros(MAP), a), 0.0)   # nothing to register: no shift


def test_resample_conserves_photons_inside_and_coverage_marks_what_left_the_grid():
    a = particle()
    moved = resample(a, (0.4, -1.7))
    assert moved.sum() == pytest.approx(a.sum())
    yy, xx = np.mgrid[0:MAP[0], 0:MAP[1]]
    centroid = lambda img: np.array([(img * yy).sum(), (img * xx).sum()]) / img.sum()  # noqa: E731
    np.testing.assert_allclose(centroid(moved) - centroid(a), (-0.4, 1.7), atol=1e-9)    # moved by -shift, exactly
    np.testing.assert_allclose(resample(resample(a, (2, -1)), (-2, 1)), a)               # whole pixels: no blur
    cov = coverage(MAP, [(0.0, 0.0), (0.0, 2.5)], [1.0, 1.0])
    assert cov[:, :11].min() == pytest.approx(1.0) and cov[:, -1].max() == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [3, 7])
def test_drift_of_up_to_3_pixels_between_eta_scans_is_found_within_0_2_pixel(seed):
    truth = true_shifts(seed)
    assert np.abs(truth).max() > 1.0
    found = register_eta_scans(drifted_scans(truth, np.random.default_rng(seed)))
    signal = ROCKING >= 0.02
    np.testing.assert_array_less(np.hypot(*(found - truth)[signal].T), 0.2)


def write_drifted_raw(path, shifts, seed=0):
    """A raw map (eta-outer, as ID01 takes them) of the particle drifting by `shifts` between eta scans:
    each map pixel's Bragg spot sits where the particle's own pixel puts it (a d gradient)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:FRAME[0], 0:FRAME[1]]
    amp = particle()
    ny, nx = MAP
    frames, index, eta = [], [], []
    for i, s in enumerate(shifts):
        seen = resample(amp, -np.asarray(s))                       # what each map pixel sees of the particle
        right = resample(amp * (np.mgrid[0:ny, 0:nx][1] >= 7), -np.asarray(s))   # what it sees of the right domain
        for m in range(ny * nx):
            y, x = divmod(m, nx)
            a = seen[y, x] * ROCKING[i] * 60.0
            share = right[y, x] / seen[y, x] if seen[y, x] > 0 else 0.0
            lam = 1e-3 + sum(a * part * np.exp(-((rows - r0) ** 2 + (cols - 24.0) ** 2) / 8.0)   # two domains of
                             for r0, part in ((12.0, 1.0 - share), (26.0, share)))              # different d: two spots
            frames.append(rng.poisson(lam).astype(np.uint32))
            index.append(m)
            eta.append(ETAS[i])
    with h5py.File(path, "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=FRAME, dtype=np.uint32, map_shape=MAP, **GEOMETRY)
        writer.append(np.stack(frames), index, eta, 0.0, 0.0, 30.0)
    return path, [(fr, p, e) for fr, p, e in zip(frames, index, eta)]


def reduce(path, register):
    with h5py.File(path, "r") as f:
        result, _ = process_entry(f["entry"], ProcessOptions(roi=ROI, register=register))
    return result


@pytest.fixture(scope="module")
def drifted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    truth = true_shifts(3)
    still, _ = write_drifted_raw(tmp / "still.h5", np.zeros((N_SCANS, 2)))
    moving, frames = write_drifted_raw(tmp / "moving.h5", truth)
    return {"truth": truth, "still": reduce(still, "off"), "moving": moving, "frames": frames, "tmp": tmp}


def d_error(result, reference):
    """90th percentile of |d - d_still| (the pixels near the domain wall) and the mask agreement."""
    both = (result.mask > 0) & (reference.mask > 0)
    return float(np.percentile(np.abs(result.d_spacing - reference.d_spacing)[both], 90)), both.sum() / (
        (result.mask > 0) | (reference.mask > 0)).sum()


def test_registered_maps_match_the_still_sample_and_unregistered_do_not(drifted):
    off = reduce(drifted["moving"], "off")
    auto = reduce(drifted["moving"], "auto")
    manual = reduce(drifted["moving"], ManualShifts(drifted["truth"], "test"))
    err_off, mask_off = d_error(off, drifted["still"])
    err_auto, mask_auto = d_error(auto, drifted["still"])
    err_manual, mask_manual = d_error(manual, drifted["still"])
    assert off.eta_shifts is None
    np.testing.assert_array_less(np.hypot(*(auto.eta_shifts - drifted["truth"]).T), 0.2)
    np.testing.assert_allclose(manual.eta_shifts, drifted["truth"])          # the override is used as given
    np.testing.assert_allclose(auto.eta_scans, ETAS)
    print("p90 |dd|", err_off, err_auto, err_manual, "mask", mask_off, mask_auto, mask_manual)
    assert err_auto < err_off / 2.5 and err_manual < err_off / 2.5, (err_off, err_auto, err_manual)
    assert mask_auto > mask_off and mask_manual > mask_off, (mask_off, mask_auto, mask_manual)


def test_with_the_true_shifts_the_mask_is_the_still_samples(drifted):
    """The scans moved back bilinearly and added are blurred twice at the particle's sharp edge (by the
    drift, then by the move back): edge pixels outside rose over the 20 % line, inside ones fell under
    it (agreement 0.84). The mask is decided on the Σ I the shifted scans imply unblurred."""
    manual = reduce(drifted["moving"], ManualShifts(drifted["truth"], "test"))
    still = drifted["still"]
    assert ((manual.mask > 0) == (still.mask > 0)).all(), d_error(manual, still)
    inside = still.mask > 0     # the intensity map is that Σ I: rms 2 % of the still sample's brightest off (blurred: 13 %)
    off = (manual.intensity - still.intensity)[inside] / still.intensity.max()
    assert np.sqrt(np.mean(off ** 2)) < 0.05


def test_tilt_registration_of_a_particle_of_one_tilt_falls_back_to_the_intensity_maps(drifted, caplog):
    """Every pixel here has the same tilt: no tilt map to register on (left alone, its shifts were
    off by up to 11 pixels), so `--register tilt` says so (DEBUG) and registers the intensity maps."""
    caplog.set_level(logging.DEBUG, logger="opmon.processors.registration")
    tilt = reduce(drifted["moving"], "tilt")
    np.testing.assert_array_less(np.hypot(*(tilt.eta_shifts - drifted["truth"]).T), 0.2)
    assert "nothing to register on" in caplog.text


def test_process_register_file_and_maps_record_the_shifts(drifted, tmp_path):
    from opmon.cli import main

    shifts = tmp_path / "shifts.toml"
    shifts.write_text("shifts = [" + ", ".join(f"[{dy}, {dx}]" for dy, dx in drifted["truth"]) + "]\n")
    out = tmp_path / "maps.h5"
    assert main(["process", str(drifted["moving"]), "-o", str(out), "--roi", *map(str, ROI), "--register", str(shifts),
                 "-q"]) == 0
    with h5py.File(out, "r") as f:
        maps = f["entry/maps"]
        np.testing.assert_allclose(maps["eta_shifts"][()], drifted["truth"])
        assert maps["eta_shifts"].attrs["units"] == "map pixel" and maps.attrs["register"] == f"manual ({shifts})"
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("shifts = [[0.0, 0.0], [1.0, 1.0]]\n")
    assert main(["process", str(drifted["moving"]), "-o", str(tmp_path / "w.h5"), "--register", str(wrong), "-q"]) == 2
    with pytest.raises(ConfigError, match="no 'shifts' key"):
        (tmp_path / "empty.toml").write_text("eta = [1.0]\n")
        read_shifts_file(tmp_path / "empty.toml")


def test_per_scan_states_merge_whatever_order_the_scans_came_in(drifted):
    from opmon.processors.eta_scans import EtaScanAccumulator
    from opmon.processors.geometry import DetectorGeometry

    geometry = DetectorGeometry(GEOMETRY["energy_ev"], GEOMETRY["distance_m"], GEOMETRY["pixel_size_m"],
                                GEOMETRY["beam_center"], FRAME)
    frames = drifted["frames"]
    one, late, early = (EtaScanAccumulator(geometry, MAP, roi=ROI) for _ in range(3))
    for fr, p, e in frames:
        one.process_frame(fr, p, e, 0.0, 0.0, 30.0)
    for fr, p, e in reversed(frames):       # the last scans first: other slots
        (late if e > ETAS[3] else early).process_frame(fr, p, e, 0.0, 0.0, 30.0)
    merged = add_states(late.state(), early.state())
    whole = EtaScanAccumulator(geometry, MAP, roi=ROI)
    whole.load_state(merged, add=False)
    assert_same_maps(whole.finalize(), one.finalize())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_live_final_maps_of_a_drifting_sample_equal_offline(drifted, workers):
    ctx = zmq.Context()
    maps_in, maps_endpoint, _ = map_sockets(ctx)
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], context=ctx, stall_timeout_s=60)
    processor = open_live_processor(sink.endpoints[0], None, maps_endpoint, workers=workers, roi=ROI, register="auto",
                                    publish_interval_s=0.05, context=ctx)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    try:
        sink.start_run(frame_shape=FRAME, dtype="uint32", map_shape=MAP, **GEOMETRY)
        sink.start_map(len(drifted["frames"]))
        for frame, p, eta in drifted["frames"]:
            sink.send_frame(frame, index=p, eta=eta, phi=0.0, nu=0.0, delta=30.0)
        sink.end_map()
        sink.stop_run()
        header, live = recv_map(maps_in)
    finally:
        processor.stopped = True
        thread.join(30)
        sink.close()
        ctx.destroy(linger=0)
    offline = reduce(drifted["moving"], "auto")
    assert header["options"]["register"] == "auto"
    assert_same_maps(live, offline)
    np.testing.assert_allclose(live.eta_shifts, offline.eta_shifts, atol=1e-12)


def test_the_archiver_keeps_the_shifts_of_a_final_map(drifted, tmp_path):
    from opmon.streaming import protocol as P
    from opmon.streaming.archive.final_maps import write_final_maps
    from opmon.streaming.map_messages import encode_map

    result = reduce(drifted["moving"], ManualShifts(drifted["truth"], "test"))
    parts = encode_map(result, run="r", map_number=0, final=True, frames=10, n_frames=10, frames_lost=0,
                       options={"roi": list(ROI), "register": "auto"})
    write_final_maps(tmp_path / "m.h5", P.unpack(parts[1]), parts[2:])
    with h5py.File(tmp_path / "m.h5", "r") as f:
        np.testing.assert_allclose(f["entry/maps/eta_shifts"][()], drifted["truth"])
        np.testing.assert_allclose(f["entry/maps/eta_scans"][()], ETAS)
        assert f["entry/maps"].attrs["register"] == "auto"


def test_partial_per_scan_sums_ship_with_their_scans_added_and_make_the_same_partial_map(drifted):
    """A fan-out worker's partial state of per-scan sums travels with its scans added together (n_scans
    times smaller, four times a second); the partial map made from it is the per-scan one's, close
    but not bit for bit: the background refit inside the ROI takes the map points off the particle
    from the sums' rows, per scan there, per map pixel here (d to 1e-6, widths to 0.5 %)."""
    from opmon.processors.accumulate import PER_PIXEL_KEYS, MomentAccumulator
    from opmon.processors.eta_scans import EtaScanAccumulator
    from opmon.processors.geometry import DetectorGeometry
    from opmon.processors.live.worker import decode_state, encode_state

    geometry = DetectorGeometry(GEOMETRY["energy_ev"], GEOMETRY["distance_m"], GEOMETRY["pixel_size_m"],
                                GEOMETRY["beam_center"], FRAME)
    scans = EtaScanAccumulator(geometry, MAP, roi=ROI)
    for fr, p, e in drifted["frames"]:
        scans.process_frame(fr, p, e, 0.0, 0.0, 30.0)
    n = scans.scan_eta.size
    _, partial = decode_state(encode_state(scans, {"final": False}))
    _, final = decode_state(encode_state(scans, {"final": True}))
    assert n > 1 and "scan_eta" not in partial and "scan_eta" in final
    for key in PER_PIXEL_KEYS:
        assert partial[key].shape[0] * n == final[key].shape[0] == n * MAP[0] * MAP[1]
    plain = MomentAccumulator(geometry, MAP, roi=ROI)
    plain.load_state(partial)
    shown, per_scan = plain.finalize(partial=True), scans.finalize(partial=True)
    np.testing.assert_array_equal(shown.mask, per_scan.mask)
    for key, rtol, atol in (("d_spacing", 1e-6, 0), ("intensity", 1e-6, 1.0), ("peak_width", 5e-3, 0),
                            ("tilt_altitude", 0, 1e-5)):          # a display map: close, not bit for bit
        np.testing.assert_allclose(getattr(shown, key), getattr(per_scan, key), rtol=rtol, atol=atol, equal_nan=True,
                                   err_msg=key)


def test_a_registration_that_moves_no_scan_makes_the_map_register_off_makes(drifted, tmp_path):
    """The still sample: tilt registration declines (one tilt; the intensity maps gain nothing moved), so the
    scans add up as `--register off` adds them, to the last digit: a declined registration makes no map worse
    (the per-scan sums fitted the background from the map points off the particle per scan, off per pixel)."""
    still, _ = write_drifted_raw(tmp_path / "still.h5", np.zeros((N_SCANS, 2)))
    tilt = reduce(still, "tilt")
    np.testing.assert_array_equal(tilt.eta_shifts, 0.0)
    assert_same_maps(tilt, drifted["still"])
