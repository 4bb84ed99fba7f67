"""A map taken with a provisional ROI, accumulated again at its end with the ROI its whole map asks for.

The first map of an eta-outer scan starts off the rocking curve: the live ROI decided from its
first frames is the full frame or a window around the rocking tails, and on a background
gradient or a faint peak that costs the map its accuracy. At the map's end its own ROI and mask
are known (`engine.LiveRun.map_plan`, the rule and frames of `opmon process`); the map is then
accumulated again with them from its frames kept in memory (`held_frames`), else from the run's
archive, so its final maps are the ones `opmon process` makes. A map whose frames hold powder-arc
spots (`--powder-spots auto`: found at its end in the frames `opmon process` samples, summed per eta
scan) is re-made the same way with them replaced, so its maps are those of `opmon process
--powder-spots auto` (spots of a map apply to that map, not the next). With neither, the map keeps
the sums it was taken with.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy.typing as npt

from opmon.errors import ArchiveError, CorruptFrameError
from opmon.processors.accumulate import MomentAccumulator
from opmon.processors.live.engine import LiveMap, LiveRun, frame_count, make_accumulator, spot_options
from opmon.processors.live.held_frames import HeldFrames
from opmon.processors.offline import MapPlan
from opmon.streaming.archive.reader import RunArchive

log = logging.getLogger(__name__)

#: longest wait for the archiver to hold the whole map (its last frames may still be on their way)
ARCHIVE_WAIT_S = 10.0


def add_frames(acc: MomentAccumulator, frames: Iterable[tuple[dict[str, Any], npt.NDArray[Any]]]) -> None:
    """Add (frame header, frame) pairs into `acc` (held frames, archived frames)."""
    for header, frame in frames:
        acc.process_frame(frame, header["index"], header["eta"], header["phi"], header["nu"], header["delta"],
                          header.get("monitor"))


def remake_map(run: LiveRun, lm: LiveMap, plan: MapPlan, archive_dir: Path | None,
               held: HeldFrames | None) -> tuple[MomentAccumulator, dict[str, Any]] | None:
    """`lm`'s sums again with `plan`'s ROI and mask, from its `held` frames or the archive, and the
    options they were taken with; None when its frames are no longer at hand. Runs on a thread
    (`service.LiveService`): a 100 x 100 map read back from the archive takes a minute or more, and
    the live stream must keep flowing meanwhile."""
    options = dict(run.options, roi=list(plan.roi), **spot_options(plan))
    acc = make_accumulator(run.geometry, lm.map_shape, plan.mask, options, plan.spots,
                           n_frames=frame_count(lm) or lm.received)
    t0 = time.perf_counter()
    if held is not None and not held.overflowed and len(held) == lm.received:
        add_frames(acc, held.frames())
        where = "its frames held in memory"
    elif archive_dir is not None:
        try:
            add_frames(acc, RunArchive(archive_dir, run.uid).frames(lm.number, wait_s=ARCHIVE_WAIT_S))
        except (ArchiveError, CorruptFrameError, OSError, KeyError) as exc:
            log.error("run %s map %d: kept with ROI %s (cannot re-make it from the archive: %s)", run.uid, lm.number,
                      lm.roi, exc)
            return None
        where = "the archive"
    else:
        log.warning("run %s map %d: kept with its provisional ROI %s (its frames were over the memory budget and "
                    "there is no archive)", run.uid, lm.number, lm.roi)
        return None
    log.info("run %s map %d: re-made with its own ROI %s (was %s) from %s in %.2f s", run.uid, lm.number, plan.roi,
             lm.roi, where, time.perf_counter() - t0)
    return acc, options
