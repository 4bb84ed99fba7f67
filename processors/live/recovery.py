"""How a restarted live processor catches up: it reads what it missed from the run archive.

While the live processor is down the acquisition keeps going (the archive path is separate),
and frames queued for the dead process are gone from the stream. The archive holds every
frame, so a processor that joins a run mid-stream recovers the run's start header, the ROI
the run's maps were made with, earlier frames of the current map and whole maps it missed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from opmon.errors import ArchiveError, CorruptFrameError, OpmonError
from opmon.streaming.archive.reader import RunArchive

log = logging.getLogger(__name__)

Feed = Callable[[dict[str, Any], npt.NDArray[Any]], None]


def recover_missed_maps(archive: RunArchive, first_map: int, feed: Feed, end_map: Callable[[int], None]) -> int:
    """Feed whole maps that ran while the processor was down and have no archived maps yet.

    Returns the number of frames recovered.
    """
    recovered = 0
    for number in range(first_map):
        if archive.has_maps(number) or not archive.has_frames(number):
            continue
        try:
            for header, frame in archive.frames(number):
                feed(header, frame)
                recovered += 1
        except (ArchiveError, CorruptFrameError, OSError, KeyError) as exc:
            log.error("run %s: cannot recover map %d: %s", archive.uid, number, exc)
            continue
        end_map(number)
        log.warning("run %s: map %d recovered from the archive", archive.uid, number)
    return recovered


def recover_prefix(archive: RunArchive, number: int, first_seq: int, feed: Feed) -> int:
    """Feed the frames of map `number` sent before the processor (re)joined at `first_seq`."""
    recovered = 0
    try:
        for header, frame in archive.frames(number, below_seq=first_seq):
            feed(header, frame)
            recovered += 1
    except (ArchiveError, CorruptFrameError, OSError, KeyError) as exc:
        log.error("run %s map %d: frames before seq %d not recovered: %s", archive.uid, number, first_seq, exc)
    log.warning("run %s map %d: %d earlier frames recovered from the archive", archive.uid, number, recovered)
    return recovered


def map_from_archive(archive: RunArchive, number: int, make: Callable[[dict[str, Any], npt.NDArray[np.uint8] | None,
                     tuple[int, int]], Any]) -> tuple[Any, int]:
    """Accumulate an archived map: `make(start, mask, map_shape)` gives the accumulator.
    Returns (accumulator, frames it holds)."""
    found = archive.start()
    if found is None:
        raise ArchiveError(f"{archive.path}: no run start to make map {number} from")
    from opmon.processors.live.remake import add_frames

    acc = make(found[0], found[1], archive.map_shape(number))
    add_frames(acc, archive.frames(number, wait_s=5.0))
    return acc, acc.frames_seen


def archived_plan(archive: RunArchive, number: int, powder_spots: str = "auto") -> Any:
    """The `offline.MapPlan` `opmon process` takes for archived map `number` (ROI, mask with the
    bad pixels its frames show, powder-arc spots with `powder_spots` auto)."""
    from opmon.processors.offline import ProcessOptions, plan_map
    from opmon.streaming.archive.sources import open_source

    with open_source(archive.map_path(number)) as source:
        return plan_map(source.maps[0], ProcessOptions(roi="auto", powder_spots=powder_spots))


def catch_up(archive_dir: str | Path, outputs: Any, *, skip_runs: set[str], roi: Any, threshold: int, background: Any,
             register: str = "tilt", peak_fit: str = "off", powder_spots: str = "auto") -> int:
    """Make the maps of the newest archived run that no processor delivered; returns how many.

    `roi` is the processor's setting ("auto", None for the full frame, or a tuple). With "auto"
    each map takes the plan `opmon process` takes from its whole archived map (ROI, the bad
    pixels its frames show, and with `powder_spots` auto its spots), as the live processor's
    maps do, so a made map equals the others of the run and `opmon process`.
    """
    from opmon.processors.accumulate import MomentAccumulator
    from opmon.processors.live.engine import geometry_of, make_accumulator, spot_options

    archive = RunArchive.newest(archive_dir)
    if archive is None or archive.uid in skip_runs:
        return 0
    numbers = archive.maps_to_make()
    made = 0
    for number in numbers:
        if (archive.uid, number) in outputs.made:
            if outputs.resend(archive.uid, number):
                log.warning("run %s map %d: final maps missing from the archive (lost on the way to an archiver "
                            "that died); sent again", archive.uid, number)
                made += 1
                continue
        try:
            start = archive.start()
            if start is None:
                return made
            rows, cols = start[0]["frame_shape"]
            plan = archived_plan(archive, number, powder_spots) if roi == "auto" else None
            if plan is not None:
                chosen: Any = plan.roi
            elif roi is None:
                chosen = (0, rows, 0, cols)
            else:
                chosen = tuple(roi)
            options = {"roi": list(chosen), "threshold": threshold, "background": background, "register": register,
                       "peak_fit": peak_fit, **spot_options(plan)}

            def make(start: dict[str, Any], mask: Any, shape: tuple[int, int]) -> MomentAccumulator:
                if plan is not None:
                    return make_accumulator(geometry_of(start), shape, plan.mask, options, plan.spots)
                return make_accumulator(geometry_of(start), shape, mask, options)

            acc, n = map_from_archive(archive, number, make)
        except (OpmonError, OSError, KeyError) as exc:   # ArchiveError, CorruptFrameError, RawFileError...
            log.error("run %s map %d: cannot make its maps from the archive: %s", archive.uid, number, exc)
            continue
        outputs.final(acc, run=archive.uid, number=number, n_frames=n, frames_lost=0, options=options)
        log.warning("run %s map %d: no live maps were made (processor down); made from its %d archived frames",
                    archive.uid, number, n)
        made += 1
    return made
