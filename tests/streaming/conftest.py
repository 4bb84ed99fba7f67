"""Shared helpers for streaming tests: real sockets on 127.0.0.1, random ports."""
from __future__ import annotations

import numpy as np
import pytest
import zmq


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


GEOMETRY = dict(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(4.0, 4.0))


def frames_for(n: int, shape=(8, 8), dtype=np.uint32, seed: int = 0) -> np.ndarray:
    """Distinct small frames so a test can check payloads arrive intact."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, size=(n, *shape)).astype(dtype)
