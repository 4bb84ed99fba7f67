"""A flagged onset in a final map message asks the plan for a map now, once per cooldown,
through the steering object the dashboard uses (real PUB/SUB sockets, real RunEngineSteering
and the plan's steering soft signals)."""
from __future__ import annotations

import numpy as np
import zmq
from bluesky import RunEngine

from opmon.acquisition import SteeringRequests
from opmon.acquisition.steering import RunEngineSteering
from opmon.onset_watch import OnsetWatch
from opmon.processors.maps import MapResult
from opmon.streaming.map_messages import encode_map
from tests.waiting import until


def _final_map(number: int, onset: dict | None) -> list:
    shape = (2, 2)
    ones = np.ones(shape)
    result = MapResult(d_spacing=2.04 * ones, tilt_altitude=0 * ones, tilt_azimuth=0 * ones, intensity=ones,
                       peak_width=ones, q=np.zeros(shape + (3,)), mask=np.ones(shape, dtype=np.uint8),
                       mean_q=np.zeros(3), frames=np.ones(shape, dtype=np.int64))
    return encode_map(result, run="r1", map_number=number, final=True, frames=4, n_frames=4, frames_lost=0,
                      onset=onset)


def test_an_onset_asks_for_one_map_and_the_cooldown_holds_the_next():
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    RE = RunEngine({})
    requests = SteeringRequests(loop=RE.loop)
    watch = OnsetWatch(f"tcp://127.0.0.1:{port}", RunEngineSteering(RE, requests), cooldown_s=3600,
                       context=ctx).start()
    try:
        onset = {"map": 3, "kind": "fading region", "pixels": 5, "reason": "5 connected pixels lost 80%"}

        def sent_until_seen(parts, key) -> bool:       # PUB/SUB: the first messages may precede the connection
            pub.send_multipart(parts)
            return key in watch.seen
        assert until(lambda: sent_until_seen(_final_map(3, onset), ("r1", 3)), 10)
        assert until(lambda: watch.maps_asked == 1, 10)     # `seen` holds the map before its request is made
        pub.send_multipart(_final_map(4, None))        # a final map without an onset asks nothing
        asked = requests.current()
        assert asked["map_requests"] == 1
        assert "onset flagged on map 3" in asked["map_reason"] and "5 connected pixels" in asked["map_reason"]
        assert until(lambda: sent_until_seen(_final_map(7, onset), ("r1", 7)), 10)
        assert requests.current()["map_requests"] == 1 and watch.maps_asked == 1      # map 4 asked nothing; map 7 is in the cooldown
    finally:
        watch.close()
        pub.close(0)
        ctx.destroy(0)
