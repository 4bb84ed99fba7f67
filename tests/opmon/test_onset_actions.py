"""`--on-onset shorter-period:S | finer-map`: a flagged onset in a final map message sets a periodic
rule for a while, or the next maps' finer grid over the particle, through RunEngineSteering onto
the plan's steering soft signals (real PUB/SUB sockets); the cooldown and the dashboard's switch hold."""
from __future__ import annotations

import json

import numpy as np
import pytest
import zmq
from bluesky import RunEngine

from opmon.acquisition import SteeringRequests, rule_from_values
from opmon.acquisition.steering import RunEngineSteering
from opmon.dose_region import ScanGrid
from opmon.errors import ConfigError
from opmon.onset_watch import OnsetWatch, finer_grid, parse_onset_action, particle_box
from opmon.processors.maps import MapResult
from opmon.streaming.map_messages import encode_map
from tests.waiting import until

GRID = ScanGrid((1.0, 2.0), 0.1, (6, 8))
ONSET = {"map": 3, "kind": "fading region", "pixels": 5, "reason": "5 connected pixels lost 80%"}


def _final_map(number: int, onset: dict | None, run: str = "r1") -> list:
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[2:4, 3:6] = 1                                    # the particle: rows 2-3, columns 3-5
    ones = np.ones((6, 8))
    result = MapResult(d_spacing=2.04 * ones, tilt_altitude=0 * ones, tilt_azimuth=0 * ones, intensity=ones,
                       peak_width=ones, q=np.zeros((6, 8, 3)), mask=mask, mean_q=np.zeros(3),
                       frames=np.ones((6, 8), dtype=np.int64))
    return encode_map(result, run=run, map_number=number, final=True, frames=48, n_frames=48, frames_lost=0,
                      onset=onset)


def test_actions_parse_and_the_finer_grid_covers_the_particle_at_half_the_step():
    assert parse_onset_action("shorter-period:120").period_s == 120.0
    assert parse_onset_action("finer-map").kind == "finer-map"
    for bad in ("shorter-period:0", "shorter-period:x", "denser"):
        with pytest.raises(ConfigError, match="on-onset"):
            parse_onset_action(bad)
    mask = np.zeros((6, 8))
    mask[2:4, 3:6] = 1
    assert particle_box(mask) == (1, 5, 2, 7)            # one pixel of margin
    fine = finer_grid(GRID, (1, 5, 2, 7))
    assert fine.step_um == pytest.approx(0.05) and fine.shape == (7, 9)
    assert fine.origin_um == pytest.approx((1.2, 2.1))   # from the box's first point to its last
    assert particle_box(np.zeros((6, 8))) is None


@pytest.mark.parametrize("action", ["shorter-period:60", "finer-map"])
def test_an_onset_sets_the_denser_mapping_once_per_cooldown(action):
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    RE = RunEngine({})
    requests = SteeringRequests(loop=RE.loop)
    steering = RunEngineSteering(RE, requests, rule_from_values)
    watch = OnsetWatch(f"tcp://127.0.0.1:{port}", steering, cooldown_s=3600, context=ctx, action=action,
                       grid=GRID).start()

    def sent_until_seen(parts, key) -> bool:      # PUB/SUB: the first messages may precede the connection
        pub.send_multipart(parts)
        return key in watch.seen
    try:
        assert until(lambda: sent_until_seen(_final_map(3, ONSET), ("r1", 3)), 10)
        asked = requests.current()
        if action == "finer-map":
            grid = json.loads(asked["grid"])
            assert asked["grid_changes"] == 1 and "onset flagged on map 3" in grid["reason"]
            assert grid["grid"] == {"shape": [7, 9], "step_um": pytest.approx(0.05), "origin_um": pytest.approx([1.2, 2.1])}
        else:
            rule = json.loads(asked["rule"])
            assert asked["rule_changes"] == 1 and "maps every 60 s for a while" in rule["reason"]
            assert rule["values"] == {"period_s": 60.0, "for_s": 180.0}
        assert until(lambda: sent_until_seen(_final_map(4, ONSET), ("r1", 4)), 10)     # in the cooldown
        steering.set_automatic("onset", False)
        watch.cooldown_s = 0
        assert until(lambda: sent_until_seen(_final_map(5, ONSET, run="r2"), ("r2", 5)), 10)   # switched off
        again = requests.current()
        assert again["rule_changes"] + again["grid_changes"] == 1 and len(watch.actions) == 1
    finally:
        watch.close()
        pub.close(0)
        ctx.destroy(0)
