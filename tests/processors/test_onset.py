"""Onset of a transformation, flagged from successive maps of a simulated charge (paper mode: the
detector on one phase, so a transforming region stops diffracting), within one map of the
simulator's true onset; never in a steady run of 20 maps, nor for a common beam change."""
from __future__ import annotations

import numpy as np

from opmon.processors.maps import MASK_FRACTION
from opmon.processors.onset import OnsetDetector
from opmon.simulators.crystal import ParticleModel
from opmon.simulators.instrument import SxdmSetup

SETUP = SxdmSetup(map_shape=(24, 24))


def _observed(truth: dict, rng: np.random.Generator, beam: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A processed map as the live processor gives it: Poisson counts, d scattered by counting
    statistics (1e-5 Å at 1e4 counts), the 20 % mask."""
    counts = rng.poisson(beam * np.nan_to_num(truth["intensity"])).astype(np.float64)
    d = truth["d_spacing"] + 1e-5 * np.sqrt(1e4 / np.maximum(counts, 1.0)) * rng.standard_normal(counts.shape)
    valid = (counts > 0) & (counts >= MASK_FRACTION * counts.max())
    return counts, np.where(valid, d, np.nan), valid.astype(np.uint8)


def test_the_onset_of_the_first_plateau_is_flagged_within_one_map():
    model = ParticleModel(SETUP, seed=2, mode="paper", window="one-phase")
    rng = np.random.default_rng(5)
    detector = OnsetDetector()
    xs = np.round(np.arange(1.0, 0.70, -0.01), 3)
    true_onset = flagged = None
    for number, x in enumerate(xs):
        model.set_charge_state(float(x))
        truth = model.truth()
        seen = np.nan_to_num(truth["imaged_fraction"], nan=1.0)
        if true_onset is None and (seen[truth["support"].astype(bool)] < 0.999).any():
            true_onset = number
        found = detector.update(number, *_observed(truth, rng))
        if found is not None and flagged is None:
            flagged = number
    assert true_onset is not None and flagged is not None, (true_onset, flagged, detector.flags)
    assert true_onset <= flagged <= true_onset + 1, (true_onset, flagged, detector.flags[0])


def test_a_steady_run_and_a_beam_change_flag_nothing():
    model = ParticleModel(SETUP, seed=2, mode="paper", window="one-phase")
    model.set_charge_state(0.95)        # the sloping region: one phase, d shifting slowly
    truth = model.truth()
    rng = np.random.default_rng(9)
    detector = OnsetDetector()
    for number in range(20):
        beam = 0.7 if number >= 10 else 1.0       # a 30 % beam drop halfway: every pixel alike
        assert detector.update(number, *_observed(truth, rng, beam)) is None, detector.flags


class _Finished:
    """A finished map as MapOutputs takes it (what `MomentAccumulator` gives: `finalize`, `frames_seen`)."""

    def __init__(self, intensity, d, mask):
        from opmon.processors.maps import MapResult
        shape = intensity.shape
        nan = np.full(shape, np.nan)
        self.result = MapResult(d_spacing=d, tilt_altitude=nan, tilt_azimuth=nan, intensity=intensity,
                                peak_width=nan, q=np.zeros(shape + (3,)), mask=mask, mean_q=np.zeros(3),
                                frames=np.ones(shape, dtype=np.int64))
        self.frames_seen = int(np.prod(shape))

    def finalize(self, partial: bool = False):
        return self.result


def test_the_live_processor_flags_the_onset_in_its_final_map_message_and_the_dashboard_shows_it():
    import zmq
    from bokeh.document import Document

    from opmon.dashboard.app import DashboardOptions, Session
    from opmon.dashboard.model import DashboardModel, MapUpdate
    from opmon.processors.live.outputs import MapOutputs
    from opmon.streaming import protocol as P
    outputs = MapOutputs(zmq.Context.instance(), None, None)
    model = ParticleModel(SETUP, seed=2, mode="paper", window="one-phase")
    rng = np.random.default_rng(5)
    headers = []
    for number, x in enumerate(np.round(np.arange(0.95, 0.84, -0.01), 3)):
        model.set_charge_state(float(x))
        outputs.final(_Finished(*_observed(model.truth(), rng)), run="r1", number=number, n_frames=1, frames_lost=0,
                      options={})
        headers.append(P.unpack(outputs.encoded[("r1", number)][1]))
    flagged = [h["map"] for h in headers if "onset" in h]
    assert len(flagged) == 1 and flagged[0] in (6, 7), flagged          # x = 0.89 is map 6
    assert [s["onset"] is not None for s in outputs.summaries].count(True) == 1
    dash = DashboardModel()
    session = Session(Document(), dash, None, None, DashboardOptions())
    for h in headers:
        shape = tuple(h["map_shape"])
        arrays = {k: np.zeros(shape) for k in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width")}
        dash.on_map(MapUpdate(h["map"], arrays, progress=1.0, final=True, seq=1, meta=h))
    session.update()
    assert 'data-decision="onset flagged"' in session.decisions_div.text and "connected pixels" in session.decisions_div.text
