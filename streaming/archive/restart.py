"""How a restarted archiver picks up a run it was archiving when it died.

A file killed while open for SWMR writing stays readable (open it with ``swmr=True``) but
can never be opened for writing again. So the restarted archiver moves such a file aside
(``*.crashed-<time>.h5``), starts a fresh one under the public name, copies everything the
old one held (every frame up to its last flush, read back through `RunArchive`'s readers),
and carries on with the stream. Frames sent between the last flush and the restart are gone
from the archive unless the sender re-sends them; they are counted as lost.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from opmon.streaming.archive.layout import crashed_name
from opmon.streaming.archive.reader import RunArchive
from opmon.streaming.archive.run_writer import RunDirectory


def set_aside(path: Path) -> Path:
    """Rename a file that cannot be reopened for writing; returns its new name.

    The name carries the time to the microsecond, and a counter if even that is taken, so two
    crashes within one second never collide (the second rename would overwrite the first).
    """
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}"
    aside = path.with_name(crashed_name(path.stem, stamp, path.suffix))
    extra = 1
    while aside.exists():
        aside = path.with_name(crashed_name(path.stem, f"{stamp}-{extra}", path.suffix))
        extra += 1
    path.rename(aside)
    return aside


def rebuild(run_path: Path, uid: str, start: dict[str, Any]) -> RunDirectory:
    """The RunDirectory bookkeeping of an archived run, from its files."""
    archive = RunArchive.at(run_path)
    run = RunDirectory(run_path, uid, start=start)
    for number in archive.map_numbers():
        rec = run.record(number)
        info = archive.map_info(number)
        rec.frames, rec.complete = info.frames, info.complete
        rec.has_maps = archive.has_maps(number)
    run.documents.update(archive.documents())
    run.stop = archive.stop()       # an ended run stays ended when its master is rewritten
    return run
