"""`opmon bench stream` entry point (the CLI looks here): the live-chain benchmark.

The benchmark spans the whole chain, detector sink to live processor, so its body lives with
the live processor in `opmon.processors.live_benchmark`; this name only keeps the CLI's table.
"""
from __future__ import annotations

from opmon.processors.live_benchmark import main

__all__ = ["main"]
