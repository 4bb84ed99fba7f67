"""The phase watcher reads the live processor's final map messages (encoded by the live
processor's own codec): one survey request per fade, with the brightest points of the brightest
map; a re-sent final map counts once; a new run starts afresh; partial maps are ignored."""
from __future__ import annotations

import numpy as np

from opmon.acquisition.survey import PhaseRequests
from opmon.phase_watch import PhaseWatch
from opmon.processors.maps import MapResult
from opmon.processors.phase import FadingRule
from opmon.streaming.map_messages import encode_map
from opmon.streaming.protocol import unpack


def _message(run: str, number: int, scale: float, final: bool = True) -> tuple[dict, list]:
    shape = (3, 3)
    intensity = scale * np.arange(1.0, 10.0).reshape(shape)
    ones = np.ones(shape)
    result = MapResult(d_spacing=2.03 * ones, tilt_altitude=0 * ones, tilt_azimuth=0 * ones, intensity=intensity,
                       peak_width=ones, q=np.zeros(shape + (3,)), mask=np.ones(shape, dtype=np.uint8),
                       mean_q=np.zeros(3), frames=np.ones(shape, dtype=np.int64))
    parts = encode_map(result, run=run, map_number=number, final=final, frames=9, n_frames=9, frames_lost=0)
    return unpack(parts[1]), parts[2:]


def test_one_survey_per_fade_at_the_brightest_points_and_a_new_run_starts_afresh():
    requests = PhaseRequests()
    watch = PhaseWatch("tcp://127.0.0.1:1", requests, FadingRule(fraction=0.3, maps=2), points=2)  # fed by hand
    for number, scale in enumerate([1.0, 0.9, 0.2]):
        watch.on_message(*_message("r1", number, scale))
    watch.on_message(*_message("r1", 2, 0.2))              # map 2 re-sent: still one map below
    watch.on_message(*_message("r1", 3, 0.1, final=False))  # a partial map says nothing
    assert requests.take_survey() is None
    watch.on_message(*_message("r1", 3, 0.1))
    reason, points = requests.take_survey()
    assert "map 3" in reason and points == [8, 7]          # brightest pixels of map 0, the brightest
    watch.on_message(*_message("r1", 4, 1.0))              # re-centred: bright again
    watch.on_message(*_message("r2", 0, 0.05))             # a new run: its own maximum
    watch.on_message(*_message("r2", 1, 0.05))
    assert requests.take_survey() is None and watch.surveys_asked == 1
