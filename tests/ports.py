"""Tests take the ports they must choose ahead from the one shared picker (opmon.streaming.ports)."""
from opmon.streaming.ports import free_ports, port_block, ports_in_use

__all__ = ["free_ports", "port_block", "ports_in_use"]
