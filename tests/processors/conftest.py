"""Shared test data of the processors: small raw SXDM files written through the public layout
writer, synthetic live maps, and the live = offline comparison the live tests share."""
import h5py
import numpy as np
import pytest
import zmq

from opmon.streaming.archive.raw import RawMapWriter
from opmon.processors.maps import MapResult
from opmon.streaming.map_messages import decode_map
from opmon.processors.offline import ProcessOptions, process_entry
from opmon.streaming import protocol as P

SHAPE = (40, 48)


def write_raw(path, n_side=3, angles=6, seed=0, intensity=50.0, **overrides):
    """A map of n_side² pixels whose peak moves with the pixel, background 1e-3."""
    rng = np.random.default_rng(seed)
    n = n_side * n_side * angles
    index = np.repeat(np.arange(n_side * n_side), angles)
    eta = np.tile(np.linspace(18.9, 19.1, angles), n_side * n_side)
    frames = (rng.random((n,) + SHAPE) < 1e-3).astype(np.uint32)
    for f in range(n):
        r, c = 15 + index[f] % n_side, 20 + index[f] // n_side
        frames[f, r - 2:r + 3, c - 2:c + 3] += rng.poisson(intensity, (5, 5)).astype(np.uint32)
    with h5py.File(path, "w") as f:
        w = RawMapWriter(f.create_group("entry"), frame_shape=SHAPE, dtype=np.uint32, energy_ev=10000.0, distance_m=1.6,
                         pixel_size_m=(55e-6, 55e-6), beam_center=(200.0, 24.0), map_shape=(n_side, n_side))
        w.append(frames, index, eta, 0.0, 0.0, 35.0)
        for path_, value in overrides.items():
            del f[path_]
            f[path_] = value
    return path


def simulate_effect(tmp_path, name, effects, side=10):
    """A small realistic map from `opmon simulate --effects` (seed 4, the accuracy tests' window)."""
    from opmon.cli import main

    raw = tmp_path / f"{name}.h5"
    assert main(["simulate", "-o", str(raw), "--ny", str(side), "--nx", str(side), "--roi", "96", "416", "160", "352",
                 "--seed", "4", "--effects", effects, "-q"]) == 0
    return raw


@pytest.fixture
def make_raw():
    return write_raw


@pytest.fixture
def raw_file(tmp_path):
    return write_raw(tmp_path / "raw.h5")


# -- the live processor's maps against `opmon process` -------------------------------------------
GEOMETRY = dict(energy_ev=10000.0, distance_m=1.6, pixel_size_m=(55e-6, 55e-6), beam_center=(-600.0, 20.0))
FRAME = (40, 48)
MAP = (3, 4)
ETAS = 10.0 + 0.016 * np.arange(6)


def synthetic_map(m: int, seed: int = 0) -> list[tuple[np.ndarray, int, float]]:
    """Frames of one map: a Bragg spot whose position and strength vary over the particle and
    with eta, on a faint Poisson background (real uint32 counts, not a mock)."""
    rng = np.random.default_rng(seed + m)
    rows, cols = np.mgrid[: FRAME[0], : FRAME[1]]
    out = []
    for k, eta in enumerate(ETAS):
        for p in range(MAP[0] * MAP[1]):
            r0 = 18 + 0.4 * (p % 4) + 0.3 * m + 0.8 * (k - 2.5)
            c0 = 22 + 0.5 * (p // 4) - 0.2 * m
            amp = 400 * (1 + p % 3) * np.exp(-0.5 * ((k - 2.5 - 0.1 * p) / 1.5) ** 2)
            lam = amp * np.exp(-((rows - r0) ** 2 + (cols - c0) ** 2) / (2 * 2.0 ** 2)) + 0.01
            out.append((rng.poisson(lam).astype(np.uint32), p, float(eta)))
    return out


def offline_maps(frames: list[tuple[np.ndarray, int, float]], roi, tmp_path, name: str):
    """`opmon process` on the same frames written in the FORMATS.md raw layout."""
    with h5py.File(tmp_path / f"{name}.h5", "w") as f:
        writer = RawMapWriter(f.create_group("entry"), frame_shape=FRAME, dtype=np.uint32, map_shape=MAP, **GEOMETRY)
        writer.append(np.stack([fr for fr, _, _ in frames]), [p for _, p, _ in frames], [e for _, _, e in frames],
                      0.0, 0.0, 30.0)
    with h5py.File(tmp_path / f"{name}.h5", "r") as f:
        result, _ = process_entry(f["entry"], ProcessOptions(roi=tuple(roi)))
    return result


def map_sockets(ctx):
    """A bound PULL for final maps (and its endpoint) and a SUB for maps and status, not yet connected."""
    maps_in = ctx.socket(zmq.PULL)
    maps_port = maps_in.bind_to_random_port("tcp://127.0.0.1")
    display = ctx.socket(zmq.SUB)
    display.setsockopt(zmq.SUBSCRIBE, b"map")
    display.setsockopt(zmq.SUBSCRIBE, b"status")
    return maps_in, f"tcp://127.0.0.1:{maps_port}", display


def recv_map(sock, timeout_ms=60000):
    """The next map message on `sock` (bounded wait): its header and decoded maps."""
    assert sock.poll(timeout_ms), "no map message"
    parts = sock.recv_multipart()
    header = P.unpack(parts[1])
    return header, MapResult.from_arrays(decode_map(header, parts[2:]), header["background"])


# peak_width is sqrt(E[q²] - E[q]²): the subtraction cancels all but ~(σ/|q|)² ≈ 1e-7 of the sums,
# so a different summation order (fan-out workers take frames in any order) moves it by up to
# ~1e-8 relative (2.2e-9 seen); every other map agrees to 1e-9. A real disagreement is >= 1e-4.
RTOL = {"peak_width": 1e-7}


def assert_same_maps(live, offline):
    """Live maps equal `opmon process` maps (to RTOL for the peak width, 1e-9 otherwise)."""
    for name in ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mean_q"):
        np.testing.assert_allclose(getattr(live, name), getattr(offline, name), rtol=RTOL.get(name, 1e-9), atol=1e-12,
                                   equal_nan=True, err_msg=name)
    np.testing.assert_array_equal(live.mask, offline.mask)
    np.testing.assert_array_equal(live.flags, offline.flags)
