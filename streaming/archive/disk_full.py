"""Disk full while archiving: recognise it, say where, and know when writing may resume.

A full disk must not kill the archiver (a restart would meet the same full disk) nor make it
drop frames: it stops taking frames, so they wait in the sender's queues and the acquisition
blocks or pauses, and it tells everyone through its status. `DiskGuard` holds that state; the
archiver calls `check_space` before each flush (a free-space reserve, so the usual case stops
before any write fails) and `enter` when a write raised ENOSPC anyway.
"""
from __future__ import annotations

import errno
import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Free bytes the archiver keeps in hand: below this it stops taking frames before a write fails
#: (16 uncompressed 512 x 512 uint32 frames between checks, HDF5's chunk cache, the maps files).
DEFAULT_RESERVE = 64 * 2**20


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, raised by the OS or reported inside an HDF5 error message."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota exceeded" in text


class DiskGuard:
    """Whether the archive's disk can take more, and the one-line reason when it cannot.

    Parameters
    ----------
    directory
        the archive root (its filesystem is the one measured).
    reserve_bytes
        free space below which writing stops; resumes above twice that (no flapping). Below
        twice the reserve the disk is already reported full (`low`) while frames are still
        taken: the acquisition pauses while the frames queued towards the archiver still fit.
    retry_s
        how often to try writing again while full.
    """

    def __init__(self, directory: Path, reserve_bytes: int = DEFAULT_RESERVE, retry_s: float = 2.0) -> None:
        self.directory = directory
        self.reserve_bytes = reserve_bytes
        self.retry_s = retry_s
        self.error: str | None = None       # "disk full: <path> (...)" while full
        self.low: str | None = None         # the same message while under twice the reserve
        self.since: float | None = None
        self.episodes = 0
        self._next_retry = 0.0

    @property
    def full(self) -> bool:
        return self.error is not None

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.directory).free

    def check_space(self, path: Path) -> bool:
        """False (and full) when less than the reserve is free on the archive's filesystem."""
        if self.full:
            return False
        try:
            free = self.free_bytes()
        except OSError:
            return True
        detail = f"{free / 2**20:.1f} MiB free, reserve {self.reserve_bytes / 2**20:g} MiB"
        if free < self.reserve_bytes:
            self.enter(path, detail)
            return False
        if free < 2 * self.reserve_bytes:
            if self.low is None:
                log.error("disk nearly full: %s (%s); asking the acquisition to pause", path, detail)
            self.low = f"disk full: {path} ({detail})"
        else:
            self.low = None
        return True

    @property
    def report(self) -> str | None:
        """What the status says: the error while full or nearly full, else None."""
        return self.error or self.low

    def enter(self, path: Path, detail: str) -> None:
        """Record the disk as full (logged once per episode)."""
        if self.error is None:
            self.episodes += 1
            self.since = time.time()
            log.error("disk full: %s (%s); archiver stops taking frames until space is freed", path, detail)
        self.error = f"disk full: {path} ({detail})"
        self._next_retry = time.monotonic() + self.retry_s

    def due(self) -> bool:
        """Time to try writing again (and there is room above twice the reserve)."""
        if not self.full or time.monotonic() < self._next_retry:
            return False
        self._next_retry = time.monotonic() + self.retry_s
        try:
            return self.free_bytes() >= 2 * self.reserve_bytes
        except OSError:
            return False

    def clear(self) -> None:
        if self.error is not None:
            log.warning("archive disk has room again after %.0f s: taking frames again",
                        time.time() - (self.since or time.time()))
        self.error = None
        self.since = None
