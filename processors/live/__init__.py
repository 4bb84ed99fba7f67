"""Live processing: one engine and two executors of the same accumulator.

LiberTEM's UDF/executor split is the model: the engine (`engine.LiveRun`, the run and map
bookkeeping around `MomentAccumulator`; `roi.RoiDecider`, the auto-ROI rule; `outputs.MapOutputs`,
where maps go) is one, and who feeds it frames is a setting. `inline.LiveProcessor` accumulates
in the receiving process; `fanout.FanOutProcessor` lets `worker` processes take frames straight
from the stream and merges their sums. Both run the same service loop (`service.LiveService`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from opmon.processors.live.fanout import FanOutProcessor
from opmon.processors.live.inline import LiveProcessor
from opmon.processors.live.service import LiveService

__all__ = ["FanOutProcessor", "LiveProcessor", "LiveService", "open_live_processor"]


def open_live_processor(frames_endpoint: str, display_endpoint: str | None = None, maps_endpoint: str | None = None, *,
                        workers: int = 1, archive_dir: str | Path | None = None, **options: Any) -> LiveService:
    """The live processor for `workers`: inline for 1, fan-out to worker processes for more.

    Both take the same options (see `LiveProcessor`) and publish the same messages.
    """
    executor = FanOutProcessor if workers > 1 else LiveProcessor
    return executor(frames_endpoint, display_endpoint, maps_endpoint, workers=workers, archive_dir=archive_dir,
                    **options)
