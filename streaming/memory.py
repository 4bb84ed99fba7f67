"""Allocator settings for processes that receive detector frames.

libzmq allocates each received message with malloc. A 1 MB frame is above glibc's initial
mmap threshold, and freed heap tops above the trim threshold go back to the kernel, so the
next receive page-faults fresh zeroed pages in: measured 13-36 page faults per 512 x 512
uint32 frame, as much kernel time in the receiving I/O thread as the copy out of the socket
(`opmon bench stream`, 2026-11-24). Fixing both thresholds keeps freed frame buffers in the
process for the next message. The memory kept is bounded by what the receive queue held at
its fullest (the receive high-water mark times the frame size).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024      # glibc's largest: frames up to 32 MB come from the heap
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024    # keep up to 1 GB of freed heap for the next frames

_done = False


def keep_frame_buffers() -> bool:
    """Tune glibc malloc (once per process) so frame buffers are reused, not re-faulted.

    Returns False where there is no glibc (other platforms keep their defaults).
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        log.warning("mallopt refused the frame-buffer settings: received frames may page-fault")
    _done = ok
    return ok
