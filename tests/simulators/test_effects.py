"""Each realistic effect of the simulator is really in the frames and files (issue 13 item 2).

Every test builds its case through the same switch `opmon simulate --effects` uses
(`parse_effects`), so each fails when its effect is switched off.
"""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from opmon.cli import main
from opmon.errors import ConfigError
from opmon.simulators import peak_shape, scene
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.drift import drift_path
from opmon.simulators.effects import NAMES, parse_effects
from opmon.simulators.instrument import SxdmSetup, maxipix_2x2
from opmon.simulators.optics import q_sample_area
from opmon.simulators.render import FrameRenderer

ROI = (280, 440, 176, 336)  # holds the Li1 peak (~100 rows below the detector centre)


def small(**kw):
    return SxdmSetup(map_shape=(10, 10), roi=ROI, **kw)


def brightest(particle):
    return int(np.argmax(particle.truth()["intensity"].ravel()))


def test_effect_names_parse_and_the_command_lists_them():
    from opmon.commands.simulate import EFFECTS
    assert EFFECTS == NAMES
    assert parse_effects("all").names() == list(NAMES)
    assert parse_effects("none").names() == []
    assert parse_effects("drift,maxipix").names() == ["drift", "maxipix"]
    with pytest.raises(ConfigError, match="unknown effect 'sparkles'"):
        parse_effects("drift,sparkles")


def simulate_small(tmp_path, effects):
    raw = tmp_path / f"{effects}.h5"
    assert main(["simulate", "-o", str(raw), "--ny", "6", "--nx", "6", "--angles", "4", "--roi", *map(str, ROI),
                 "--mode", "uniform", "--effects", effects, "-q"]) == 0
    return raw


def bragg_counts(raw):
    """Counts per frame on the detector's good pixels (hot pixels do not follow the beam)."""
    with h5py.File(raw, "r") as f:
        good = f["entry/instrument/detector/mask"][()] == 0
        return (f["entry/instrument/detector/data"][()].astype(float) * good).sum(axis=(1, 2))


def test_beam_drop_is_in_the_frames_and_the_monitor(tmp_path):
    raw = simulate_small(tmp_path, "beam-drop")
    with h5py.File(raw, "r") as f:
        monitor = f["entry/instrument/monitor/data"][()]
        scale = f["entry/truth/incident_scale"][()]
    half = monitor.size // 2
    assert monitor.shape == (6 * 6 * 4,)
    assert monitor[half:].mean() / monitor[:half].mean() == pytest.approx(0.7, abs=0.01)
    np.testing.assert_allclose(monitor / 1e5, scale, atol=0.02)
    # the same frames without the drop: equal before the middle, 30 % more after it
    dropped, steady = bragg_counts(raw), bragg_counts(simulate_small(tmp_path, "none"))
    assert dropped[:half].sum() == pytest.approx(steady[:half].sum(), rel=0.02)
    assert dropped[half:].sum() == pytest.approx(0.7 * steady[half:].sum(), rel=0.02)


def test_maxipix_chip_gaps_read_zero_and_are_masked():
    fx = parse_effects("maxipix")
    setup = maxipix_2x2(map_shape=(6, 6), roi=(200, 320, 200, 320)) if fx.maxipix else small()
    particle = ParticleModel(setup, seed=1, mode="uniform")
    renderer = FrameRenderer(setup, particle, seed=1)
    assert setup.detector_shape == (516, 516) and setup.beam_center == (258.0, 258.0)
    gaps = [r - 200 for r in setup.gap_rows]
    assert gaps == [56, 57, 58, 59]
    m = brightest(particle)
    eta = float(particle.bragg_eta(particle.truth()["q"].reshape(-1, 3)[m]))
    frames = renderer.frames(np.full(5, m), np.full(5, eta), setup.phi, setup.nu, setup.delta)
    assert frames.sum() > 0
    assert not frames[:, gaps, :].any() and not frames[:, :, gaps].any()
    mask = renderer.detector_mask
    assert mask[gaps, :].all() and mask[:, gaps].all()


def test_hot_pixels_missing_from_the_mask_are_hot_and_unmasked():
    fx = parse_effects("hot-unmasked")
    setup = small()
    renderer = FrameRenderer(setup, ParticleModel(setup, seed=2), seed=2, unmasked_hot=fx.hot_unmasked)
    assert len(renderer.unmasked_hot) == 2
    frame = renderer.frame(0, setup.eta_center, setup.phi, setup.nu, setup.delta)  # a map corner: no particle
    mask = renderer.detector_mask
    for r, c in renderer.unmasked_hot - np.array([ROI[0], ROI[2]]):
        assert frame[r, c] > 1000 and mask[r, c] == 0


def test_drift_shifts_the_intensity_map_by_the_truth_shift():
    fx = parse_effects("drift")
    path = drift_path(30, fx.drift_px, seed=3)
    assert path[0].tolist() == [0.0, 0.0] and np.abs(path).max() == pytest.approx(3.0)
    setup = SxdmSetup(map_shape=(20, 20), roi=ROI)
    particle = ParticleModel(setup, seed=3, mode="uniform")
    renderer = FrameRenderer(setup, particle, seed=3)
    eta = float(particle.bragg_eta())
    points = np.arange(setup.n_points)

    def centroid():
        img = renderer.expected(points, eta, setup.phi, setup.nu, setup.delta).sum(axis=(1, 2)).reshape(20, 20)
        yy, xx = np.mgrid[0:20, 0:20]
        return np.array([(img * yy).sum(), (img * xx).sum()]) / img.sum()

    before = centroid()
    renderer.set_drift(*path[-1])
    np.testing.assert_allclose(centroid() - before, path[-1], atol=0.1)


def test_focused_beam_peak_is_broad_and_anisotropic_and_the_ring_has_a_hole():
    setup = small()
    particle = ParticleModel(setup, seed=4, mode="uniform")
    m = brightest(particle)
    qp = particle.truth()["q"].reshape(-1, 3)[m]
    eta = float(particle.bragg_eta(qp))
    r0, _, c0, _ = setup.roi_window
    q = q_sample_area(eta, setup.phi, setup.nu, setup.delta, energy_ev=setup.energy_ev, distance_m=setup.distance_m,
                      pixel_size_m=setup.pixel_size_m, beam_center=setup.beam_center, frame_shape=setup.frame_shape,
                      roi_origin=(r0, c0))
    centre = np.unravel_index(np.argmin(np.linalg.norm(q - qp, axis=-1)), q.shape[:2])

    def slice_at_bragg(effects):
        fx = parse_effects(effects)
        shape = peak_shape.FOCUSED_RING if fx.ring else peak_shape.FOCUSED if fx.focused_beam else peak_shape.COMPACT
        return FrameRenderer(setup, particle, shape=shape).expected(m, eta, setup.phi, setup.nu, setup.delta)[0]

    compact, focused, ring = slice_at_bragg("none"), slice_at_bragg("focused-beam"), slice_at_bragg("ring")
    spread = lambda lam: np.sqrt(np.linalg.eigvalsh(np.cov(np.argwhere(lam > 0.02 * lam.max()).T)))  # noqa: E731
    sc, sf = spread(compact), spread(focused)
    assert sf.max() > 1.5 * sc.max()  # broad
    assert sf.max() / sf.min() > 1.3 > sc.max() / sc.min()  # anisotropic
    assert focused[centre] == pytest.approx(focused.max(), rel=0.05)
    assert ring[centre] < 0.2 * ring.max()  # the central stop's hole


def test_focused_peak_keeps_its_counts_and_centre():
    setup = small()
    particle = ParticleModel(setup, seed=5, mode="uniform")
    m = brightest(particle)
    t = particle.truth()
    etas = setup.eta_center + (np.arange(80) - 39.5) * 0.016
    for shape in (peak_shape.FOCUSED, peak_shape.FOCUSED_RING):
        lam = FrameRenderer(SxdmSetup(map_shape=(10, 10)), ParticleModel(SxdmSetup(map_shape=(10, 10)), seed=5,
                            mode="uniform"), shape=shape).expected(np.full(etas.size, m), etas, setup.phi,
                                                                   setup.nu, setup.delta)
        # counts scale with the step: 80 steps of 0.016 deg hold the peak that 0.04-deg sampling normalises
        assert lam.sum() * 0.016 / setup.eta_step == pytest.approx(t["intensity"].ravel()[m], rel=0.03)


def test_mixed_front_pixels_give_two_peaks_and_a_defined_d():
    fx = parse_effects("mixed-fronts")
    setup = SxdmSetup(map_shape=(24, 24))
    p = ParticleModel(setup, seed=6, mode="two-phase-nucleated", x_mean=0.5, mixed_fronts=fx.mixed_fronts)
    t = p.truth()
    f = t["product_fraction"]
    mixed = (f > 0.05) & (f < 0.95)
    assert mixed.sum() >= 10
    _, counts2 = p.second_peak()
    assert np.all(counts2.reshape(24, 24)[mixed & (t["intensity"] > 0)] > 0)
    lo = np.minimum(t["d_parent"], t["d_product"])[mixed]
    hi = np.maximum(t["d_parent"], t["d_product"])[mixed]
    d = t["d_spacing"][mixed]
    assert np.all((lo < d) & (d < hi))
    # d is the centre of mass: close to the fraction-weighted mean of the two d's
    mean_d = ((1 - f) * t["d_parent"] + f * t["d_product"])[mixed]
    # (to second order: w (1 - w) Δd² / d, 6e-5 Å at most for these two phases)
    assert np.max(np.abs(d - mean_d)) < 7e-5


def test_powder_arc_spots_lie_on_the_imaged_ring():
    fx = parse_effects("powder-arcs")
    setup = small()
    particle = ParticleModel(setup, seed=7)
    spots = scene.powder_spots(setup, 2.0409, seed=7) if fx.powder_arcs else None
    renderer = FrameRenderer(setup, particle, seed=7, spots=spots)
    # the empty map pixel (no particle) that the most grains' discs cover
    yy, xx = np.divmod(np.arange(setup.n_points), setup.map_shape[1])
    cover = ((yy[:, None] - spots[:, 6]) ** 2 + (xx[:, None] - spots[:, 7]) ** 2 <= spots[:, 8] ** 2).sum(axis=1) \
        if spots is not None else np.zeros(setup.n_points)
    empty = int(np.argmax(np.where(particle.truth()["intensity"].ravel() == 0, cover, -1)))
    etas = setup.eta_values()
    total = renderer.frames(np.full(etas.size, empty), etas, setup.phi, setup.nu, setup.delta).sum(axis=0)
    hits = np.argwhere(total >= 20)
    assert len(hits) > 5
    r0, _, c0, _ = setup.roi_window
    q = q_sample_area(setup.eta_center, setup.phi, setup.nu, setup.delta, energy_ev=setup.energy_ev,
                      distance_m=setup.distance_m, pixel_size_m=setup.pixel_size_m, beam_center=setup.beam_center,
                      frame_shape=setup.frame_shape, roi_origin=(r0, c0))
    ring = np.abs(np.linalg.norm(q[hits[:, 0], hits[:, 1]], axis=-1) - 2 * np.pi / 2.0409)
    assert np.median(ring) < 5 * setup.pixel_dq


def test_powder_grains_drift_with_the_sample():
    """A drifting stage carries the particle's neighbouring grains: map pixel m + shift of the
    drifted sample sees the powder spots that pixel m saw before the drift."""
    setup = small(background_rate=0.0)
    particle = ParticleModel(setup, seed=7)
    spots = scene.powder_spots(setup, 2.0409, seed=7)
    still = FrameRenderer(setup, particle, seed=7, spots=spots)
    moved = FrameRenderer(setup, particle, seed=7, spots=spots)
    moved.set_drift(0.0, 3.0)
    empty = (particle.truth()["intensity"] == 0)
    yy, xx = np.divmod(np.arange(setup.n_points), setup.map_shape[1])
    cover = ((yy[:, None] - spots[:, 6]) ** 2 + (xx[:, None] - spots[:, 7]) ** 2 <= spots[:, 8] ** 2).sum(axis=1)
    cover = cover.reshape(setup.map_shape)
    # off the particle before and after (only spots there), where the discs covering it change the most
    change = np.where(empty[:, :-3] & empty[:, 3:], np.abs(cover[:, 3:] - cover[:, :-3]), -1)
    y, x = np.unravel_index(int(np.argmax(change)), change.shape)
    assert change[y, x] >= 2
    etas = setup.eta_values()

    def photons(renderer: FrameRenderer, m: int) -> float:
        frames = renderer.frames(np.full(etas.size, m), etas, setup.phi, setup.nu, setup.delta)
        return float((frames.sum(axis=0) * (renderer.detector_mask == 0)).sum())  # hot pixels out

    before, after = photons(still, y * 10 + x), photons(moved, y * 10 + x + 3)
    unmoved = photons(still, y * 10 + x + 3)
    assert abs(after - before) < 5 * np.sqrt(before + after) + 0.05 * before
    assert abs(unmoved - before) > 5 * np.sqrt(before + unmoved) + 0.05 * before  # the check can tell


def test_background_gradient_tilts_the_background():
    fx = parse_effects("gradient")
    setup = SxdmSetup(map_shape=(10, 10), background_rate=0.05)
    renderer = FrameRenderer(setup, ParticleModel(setup, seed=8), seed=8,
                             gradient=(0.8, 0.0) if fx.gradient else (0.0, 0.0))
    total = renderer.frames(np.zeros(40, dtype=int), setup.eta_center, setup.phi, setup.nu, setup.delta).sum(axis=0)
    total = total * (renderer.detector_mask == 0)
    top, bottom = total[:128].sum(), total[-128:].sum()
    assert bottom / top == pytest.approx((1 + 0.8 * 0.75) / (1 - 0.8 * 0.75), rel=0.1)


def test_one_phase_window_makes_the_imaged_phase_fade():
    setup = SxdmSetup(map_shape=(20, 20))
    seen = ParticleModel(setup, seed=9, window="one-phase")
    every = ParticleModel(setup, seed=9, window="all")
    totals = []
    for x in (1.0, 0.8, 0.6, 0.52):
        seen.set_charge_state(x)
        every.set_charge_state(x)
        totals.append(seen.truth()["intensity"].sum() / every.truth()["intensity"].sum())
    assert totals[0] == pytest.approx(1.0)
    assert np.all(np.diff(totals) < 0) and totals[-1] < 0.15
    seen.set_charge_state(0.45)  # second plateau: the detector moves to Li0.5, the particle reappears
    t = seen.truth()
    assert np.nanmedian(t["d_spacing"][t["mask"] > 0]) == pytest.approx(2.0184, abs=3e-4)


def test_paper_mode_is_the_papers_scan_and_window(tmp_path):
    def run(mode, x):
        raw = tmp_path / f"{mode}{x}.h5"
        assert main(["simulate", "-o", str(raw), "--ny", "8", "--nx", "8", "--angles", "3", "--roi", *map(str, ROI),
                     "--mode", mode, "--x-mean", str(x), "-q"]) == 0
        with h5py.File(raw, "r") as f:
            eta = f["entry/sample/positioners/eta"][()]
            t = f["entry/truth"]
            return np.unique(np.round(np.diff(np.unique(eta)), 6)), dict(t.attrs), t["imaged_fraction"][()]

    steps, attrs, imaged = run("paper", 0.7)
    assert steps.tolist() == [0.016] and attrs["window"] == "one-phase"
    assert np.nanmean(imaged) == pytest.approx(0.5, abs=0.02)  # (0.9 - 0.7) / 0.4 transformed: not seen
    p = ParticleModel(SxdmSetup(map_shape=(8, 8)), seed=0, x_mean=0.7, window="one-phase")
    assert attrs["eta_center"] == pytest.approx(p.bragg_eta(), abs=1e-3)  # centred on the imaged phase
    steps, attrs, imaged = run("uniform", 0.7)
    assert steps.tolist() == [0.04] and attrs["eta_center"] == 19.0 and attrs["window"] == "all"
    assert np.nanmin(imaged) == 1.0


def test_the_file_records_each_effects_truth(tmp_path):
    raw = tmp_path / "raw.h5"
    assert main(["simulate", "-o", str(raw), "--ny", "4", "--nx", "4", "--angles", "3", "--roi", "200", "320", "200",
                 "320", "--effects", "drift,maxipix,hot-unmasked,ring", "-q"]) == 0
    with h5py.File(raw, "r") as f:
        t = f["entry/truth"]
        frames = f["entry/instrument/detector/data"][()]
        mask = f["entry/instrument/detector/mask"][()]
        assert t.attrs["effects"] == "ring,drift,maxipix,hot-unmasked"
        drift = t["drift"][()]   # in the Σ I-weighted mean frame (stop 20): up to 3 px from the first scan
        assert drift.shape == (3, 2) and np.abs(drift - drift[0]).max() == pytest.approx(3.0)
        weights = t["drift_weights"][()]   # what each scan sees: the frame's weights, and bench truth's
        np.testing.assert_allclose((weights[:, None] * drift).sum(axis=0) / weights.sum(), 0.0, atol=1e-9)
        assert t["chip_gap_rows"][()].tolist() == [56, 57, 58, 59] == t["chip_gap_cols"][()].tolist()
        assert not frames[:, 56:60, :].any() and mask[56:60, :].all()
        for r, c in t["unmasked_hot_pixels"][()]:
            assert mask[r, c] == 0 and frames[:, r, c].min() > 1000
        assert np.trace(t["peak_shape"][()]) > 3.0  # broader than the compact peak (trace 3)
        assert np.all(t["peak_width"][()][t["mask"][()] > 0] > np.sqrt(3) * t["sigma"][()][t["mask"][()] > 0])


def test_the_drift_frame_is_weighted_by_what_each_scan_sees_of_a_broad_peak():
    """The truth drift is centred on each scan's Σ I on the detector; with a focused beam the rocking curve
    is wider than the compact model's, whose weights put the frame ~0.3 map pixel off on the truth harness's
    `all` map (a shift no registration can find: it cost the mask 3 %)."""
    setup = small()
    particle = ParticleModel(setup, seed=4, mode="uniform")
    renderer = FrameRenderer(setup, particle, shape=peak_shape.FOCUSED)
    etas = setup.eta_values()
    seen = renderer.scan_counts(etas)
    everywhere = np.array([renderer.expected(np.arange(setup.n_points), e, setup.phi, setup.nu, setup.delta).sum()
                           for e in etas])
    np.testing.assert_allclose(seen, everywhere, rtol=1e-9)       # every lit map pixel counted, nothing else
    compact = particle.scan_weights(etas)
    share = lambda w: w / w.sum()  # noqa: E731
    assert np.abs(share(seen) - share(compact)).max() > 0.01      # the broad peak's scans are not the compact ones'
