"""Shared helpers for streaming tests: real sockets on 127.0.0.1, random ports."""
from __future__ import annotations

import numpy as np
import pytest
import zmq

from opmon.port_picker import free_ports


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


def write_config(tmp_path, **extra_sections) -> "tuple[object, str]":
    """A TOML config for a service that binds from it (ports from the shared picker,
    opmon.port_picker) and the archive in tmp_path; returns (Config, path)."""
    from opmon.config import Ports, load_config
    import dataclasses
    names = [f.name for f in dataclasses.fields(Ports)]
    lines = ["[ports]"] + [f"{name} = {port}" for name, port in zip(names, free_ports(len(names)))]
    lines += ["[archive]", f'dir = "{tmp_path / "archive"}"', "flush_interval_s = 0.2"]
    for section, values in extra_sections.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in values.items()]
    path = tmp_path / "opmon.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path), str(path)
