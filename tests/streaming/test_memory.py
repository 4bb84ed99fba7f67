"""Frame buffers stay in the receiving process (streaming.memory): glibc's malloc settings."""
from __future__ import annotations

import subprocess
import sys

import pytest

# In a fresh interpreter: malloc and free 4 MB (a frame-sized buffer), then print how many
# mmapped chunks the 4 MB malloc created and whether the freed heap was given back.
PROBE = r"""
import ctypes, sys
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "receiver":      # what every frame-receiving process constructs
    from opmon.streaming.receiver import FrameReceiver
    FrameReceiver("tcp://127.0.0.1:9")
elif sys.argv[1] == "worker":
    from opmon.processors.live.worker import FanOutWorker
    FanOutWorker(0, 2, "tcp://127.0.0.1:9", "tcp://127.0.0.1:9", "tcp://127.0.0.1:9")
before = libc.mallinfo2()
p = libc.malloc(4 << 20)
during = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
print(during.hblks - before.hblks, int(after.arena >= during.arena))
"""


def probe(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    mmapped, kept = out.stdout.split()
    return int(mmapped), int(kept)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
@pytest.mark.parametrize("process", ["receiver", "worker"])
def test_frame_receiving_processes_keep_frame_buffers(process):
    # the probe can tell: by default glibc maps a fresh 4 MB buffer and unmaps it on free
    assert probe("default")[0] == 1
    # in a process that receives frames the buffer comes from the heap, and freeing it does
    # not shrink the heap: the next frame reuses the pages instead of faulting new ones in
    assert probe(process) == (0, 1)
