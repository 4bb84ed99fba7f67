"""`opmon demo` starts the acquisition only once the live processor says it takes frames: on a
first start its kernels compile for 20-60 s, and frames sent meanwhile stalled the acquisition
(a fresh install's demo failed this way)."""
from __future__ import annotations

import threading

import zmq

from opmon.demo import wait_for_live
from opmon.processors.live import open_live_processor


def test_the_demo_waits_for_the_live_processors_first_status():
    ctx = zmq.Context()
    frames = ctx.socket(zmq.PUSH)
    frames_port = frames.bind_to_random_port("tcp://127.0.0.1")
    probe = ctx.socket(zmq.PUB)
    display_port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(0)                               # a free port the live processor binds next
    display = f"tcp://127.0.0.1:{display_port}"
    cancel = threading.Event()
    assert not wait_for_live(display, 0.5, cancel)          # nobody there: not ready, bounded
    processor = open_live_processor(f"tcp://127.0.0.1:{frames_port}", display, None, context=ctx)
    thread = threading.Thread(target=processor.serve, daemon=True)
    thread.start()
    try:
        assert wait_for_live(display, 30, cancel)
    finally:
        processor.stopped = True
        thread.join(10)
        frames.close(0)
        ctx.destroy(0)
    cancel.set()
    assert not wait_for_live(display, 30, cancel)           # a stop request ends the wait at once
