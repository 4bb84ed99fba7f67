"""The shared port picker: below the ephemeral range, never a demo default, never a held port."""
import socket

import pytest

from opmon import port_picker as ports


def test_picked_ports_are_outside_the_ephemeral_range_and_the_demo_defaults():
    for _ in range(50):
        block = ports.free_ports(10)
        assert block == list(range(block[0], block[0] + 10))
        assert ports.LOW <= block[0] and block[-1] < min(ports.HIGH, ports._ephemeral_low())
        assert not ports.DEMO_DEFAULTS.intersection(block)


def test_a_port_somebody_holds_is_seen_and_skipped(monkeypatch):
    held = socket.socket()
    try:
        free, port = ports.free_ports(2)                   # two ports nobody holds; hold the second
        held.bind(("127.0.0.1", port))                      # for the whole test, never released
        held.listen()
        assert port in ports.ports_in_use() and free not in ports.ports_in_use()
        monkeypatch.setattr(ports, "LOW", free)             # a pool of two: the free and the held port
        monkeypatch.setattr(ports, "HIGH", port + 1)
        assert all(ports.free_ports(1) == [free] for _ in range(20))
        monkeypatch.setattr(ports, "LOW", port)             # only the held port left
        with pytest.raises(RuntimeError, match="no block of 1 free ports"):
            ports.free_ports(1)
    finally:
        held.close()
