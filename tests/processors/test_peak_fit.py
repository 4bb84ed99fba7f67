"""The optional per-pixel peak fit: a rocking curve cut on one side biases the centre of mass, not the fit."""
import h5py
import numpy as np
import pytest

from opmon.benchmarks.bench_peak_fit import G, SIGMA_STEPS, SLOPE, STEP, WITHIN, sliced_moments
from opmon.cli import main
from opmon.errors import OpmonError
from opmon.processors.maps import FLAG_ROCKING, read_map_result
from opmon.processors.offline import process_file
from opmon.processing_options import PEAK_FIT_CHOICES
from opmon.processors.peak_fit import PEAK_FIT_MODELS, fit_gauss, parse_peak_fit, read_fit


def sliced_peaks(centres_steps, counts=2e4, n=16, seed=1):
    """Per-eta-scan moments of 1 x k pixels whose peak is a Gaussian blob in q sliced at each eta:
    pixel j's rocking curve is centred `centres_steps[j]` steps from the first scan."""
    return sliced_moments(np.asarray(centres_steps, dtype=float)[None, :], n, counts, seed)


def d_of(q):
    return 2 * np.pi / np.linalg.norm(q, axis=-1)


def test_a_rocking_curve_cut_on_one_side_biases_the_centre_of_mass_not_the_fit():
    # centres: 0.5 step inside the first scan (cut at its maximum), 1 σ inside, mid-scan (whole)
    eta, s0, s1, s2, var = sliced_peaks([0.5, SIGMA_STEPS, 7.5])
    fit = fit_gauss(eta, s0, s1, s2, var, np.ones((1, 3), bool))
    com = s1.sum(axis=0) / s0.sum(axis=0)[..., None]
    d_true = d_of(G)
    com_err, fit_err = np.abs(d_of(com) - d_true)[0], np.abs(fit.d_spacing - d_true)[0]
    assert com_err[0] > 5e-5 and com_err[1] > 2e-5, com_err   # the cut side: the centre of mass is pulled inward
    assert (fit_err < 1e-5).all(), fit_err                   # the fit finds the centre, cut or whole
    assert com_err[2] < 1e-5                                 # a whole peak: both agree with the truth
    np.testing.assert_allclose(fit.rocking_centre[0], eta[0] + STEP * np.array([0.5, SIGMA_STEPS, 7.5]), atol=0.1 * STEP)
    np.testing.assert_allclose(fit.rocking_width[0], SIGMA_STEPS * STEP, rtol=0.1)
    width_true = np.sqrt(3 * WITHIN + (SLOPE @ SLOPE) * SIGMA_STEPS ** 2)
    np.testing.assert_allclose(fit.peak_width[0], width_true, rtol=0.03)
    assert (fit.reduced_chi2[0] < 3).all(), fit.reduced_chi2  # Poisson noise only: χ²/dof about 1


def test_no_fit_where_the_scan_saw_only_a_tail_or_no_peak():
    # centre 2 σ before the first scan (a tail only: 3 scans with signal), a flat profile (no concave rocking curve), an unmasked pixel
    eta, s0, s1, s2, var = sliced_peaks([-2 * SIGMA_STEPS, 7.5, 7.5])
    s0[:, 0, 1] = 500.0
    s1[:, 0, 1] = 500.0 * G
    valid = np.array([[True, True, False]])
    fit = fit_gauss(eta, s0, s1, s2, var, valid)
    assert np.isnan(fit.d_spacing).all() and np.isnan(fit.reduced_chi2).all(), fit.d_spacing


def test_peak_fit_words():
    assert parse_peak_fit("gauss") == "gauss" and parse_peak_fit("off") == "off"
    assert PEAK_FIT_CHOICES == PEAK_FIT_MODELS      # the command line offers what the processor takes
    with pytest.raises(OpmonError, match="--peak-fit takes off or gauss"):
        parse_peak_fit("lorentz")


@pytest.fixture(scope="module")
def cut_map(tmp_path_factory):
    """A 12 x 12 simulated map whose 16-step rocking scan ends inside some pixels' rocking curves."""
    raw = tmp_path_factory.mktemp("peak_fit") / "cut.h5"
    assert main(["simulate", "-o", str(raw), "--ny", "12", "--nx", "12", "--roi", "96", "416", "160", "352",
                 "--x-mean", "1.0", "--seed", "4", "--eta-center", "19.0", "--angles", "16", "-q"]) == 0
    return raw


def test_on_a_simulated_map_cut_by_the_rocking_range_the_fit_beats_the_centre_of_mass(cut_map, tmp_path, capsys):
    com = process_file(cut_map, tmp_path / "off.h5")["entry"]
    assert main(["process", str(cut_map), "-o", str(tmp_path / "gauss.h5"), "-q", "--peak-fit", "gauss"]) == 0
    assert "entry: peak fit (gauss): " in capsys.readouterr().out
    with h5py.File(tmp_path / "gauss.h5", "r") as f:
        fitted = read_map_result(f["entry"])
        fitted.fit = read_fit(f["entry/maps"])
    with h5py.File(cut_map, "r") as f:
        d_true, true_mask = f["entry/truth/d_spacing"][()], f["entry/truth/mask"][()] > 0
    with h5py.File(tmp_path / "off.h5", "r") as f:
        assert "fit" not in f["entry/maps"] and f["entry/maps"].attrs["peak_fit"] == "off"
    with h5py.File(tmp_path / "gauss.h5", "r") as f:
        group = f["entry/maps/fit"]
        assert group.attrs["NX_class"] == "NXdata" and "NaN where" in group.attrs["description"]
        assert list(group.attrs["axes"]) == ["y", "x"] and group["x"] == f["entry/maps/x"]   # the maps' µm axes
    # the fit adds maps; the centre-of-mass ones stay what they were (to the background refit's 1e-6 Å: it takes its
    # off-particle points per map pixel and eta scan when the scans are kept apart, as with --register)
    np.testing.assert_array_equal(fitted.mask, com.mask)
    np.testing.assert_allclose(fitted.d_spacing, com.d_spacing, atol=2e-6, rtol=0, equal_nan=True)
    both = (com.mask > 0) & true_mask
    cut = both & ((com.flags & FLAG_ROCKING) > 0)
    assert cut.sum() >= 5 and (both & ~cut).sum() >= 10, (cut.sum(), both.sum())
    assert np.isfinite(fitted.fit.d_spacing[both]).all()
    com_err = np.abs(com.d_spacing - d_true)
    fit_err = np.abs(fitted.fit.d_spacing - d_true)
    assert np.median(com_err[cut]) > 5e-5, np.median(com_err[cut])       # cut peaks: the centre of mass is biased
    assert np.median(fit_err[cut]) < 2e-5, np.median(fit_err[cut])       # ... the fit is within 2e-5 Å of truth
    assert np.median(fit_err[both & ~cut]) <= 1.2 * np.median(com_err[both & ~cut]) + 2e-6   # no worse elsewhere


def test_the_gauss_newton_steps_on_the_counts_improve_on_the_log_parabola_at_low_counts(monkeypatch):
    import opmon.processors.peak_fit as peak_fit
    centres = np.tile([0.5, SIGMA_STEPS, 7.5], 100)
    eta, s0, s1, s2, var = sliced_peaks(list(centres), counts=1000, seed=3)
    errors = {}
    for steps in (0, peak_fit.NEWTON_STEPS):
        monkeypatch.setattr(peak_fit, "NEWTON_STEPS", steps)
        fit = fit_gauss(eta, s0, s1, s2, var, np.ones(s0.shape[1:], bool))
        errors[steps] = np.median(np.abs((fit.rocking_centre[0] - eta[0]) / STEP - centres))
    assert errors[peak_fit.NEWTON_STEPS] < 0.95 * errors[0], errors


def test_two_phases_in_one_pixel_get_two_gaussians_and_both_d_values():
    centres = np.array([[6.0, 6.0]])
    eta, *parent = sliced_moments(centres, 24, counts=1.4e4, seed=1)
    # the product phase: d 0.7 % smaller, at its own Bragg eta 9 steps on
    _, *product = sliced_moments(centres + 9.0, 24, counts=6e3, seed=2, g=G * 1.007)
    both = np.array([1.0, 0.0])                                  # pixel 0: both phases; pixel 1: the parent alone
    s0, s1, s2, var = (a + b * both.reshape((1, 1, 2) + (1,) * (a.ndim - 3)) for a, b in zip(parent, product))
    fit = fit_gauss(eta, s0, s1, s2, var, np.ones((1, 2), bool))
    assert list(fit.peaks[0]) == [2.0, 1.0], fit.peaks
    assert abs(fit.d_spacing_peak1[0, 0] - d_of(G)) < 2e-5 and abs(fit.d_spacing_peak2[0, 0] - d_of(G * 1.007)) < 2e-5
    assert abs(fit.second_fraction[0, 0] - 0.3) < 0.02 and fit.second_fraction[0, 1] == 0.0
    assert fit.reduced_chi2[0, 0] < 3, fit.reduced_chi2
    assert np.isnan(fit.d_spacing_peak2[0, 1]) and abs(fit.d_spacing_peak1[0, 1] - d_of(G)) < 1e-5


def test_a_profile_neither_one_nor_two_gaussians_describe_is_flagged_by_its_reduced_chi2():
    parts = [sliced_moments(np.array([[c]]), 24, counts=1e4, seed=k) for k, c in enumerate((3.0, 11.0, 19.0))]
    eta = parts[0][0]
    s0, s1, s2, var = (sum(part[i] for part in parts) for i in range(1, 5))      # three peaks in one pixel
    one = sliced_moments(np.array([[11.0]]), 24, counts=3e4, seed=5)
    fit = fit_gauss(eta, np.concatenate([s0, one[1]], axis=2), np.concatenate([s1, one[2]], axis=2),
                    np.concatenate([s2, one[3]], axis=2), np.concatenate([var, one[4]], axis=2), np.ones((1, 2), bool))
    assert fit.peaks[0, 0] == 1.0 and fit.reduced_chi2[0, 0] > 20 and fit.reduced_chi2[0, 1] < 3, fit.reduced_chi2
