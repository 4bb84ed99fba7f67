"""`opmon demo --dose-limit`: the live dose map pauses the run through the control channel with
its reason (recorded in the run's `steering` stream), and each archived map holds the run's dose
(exposure × flux × frames per position)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import h5py
import numpy as np
import pytest

from opmon.dashboard.control_client import ControlClient
from opmon.dose_watch import DoseWatch, limit_reason
from opmon.port_picker import port_block
from opmon.streaming.archive.maps_file import read_dose
from opmon.streaming.control import ControlServer

from tests.waiting import stop_processes, until

EXPOSURE, FLUX, STEP = 0.01, 1e9, 0.1          # ExperimentPlan's step scan: 10 ms at 1e9 photons/s, 0.1 µm


class _Steering:
    """Records the pauses the control channel hands on (the RunEngine side is the demo test's)."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def pause(self, reason: str = "", automatic: str = "") -> dict:
        self.reasons.append(reason)
        return {"state": "running"}

    def status(self) -> dict:
        return {}


def test_watch_pauses_once_per_run_with_the_reason_through_the_control_channel():
    steering = _Steering()
    server = ControlServer("tcp://127.0.0.1:0", "tok", steering).start()
    watch = DoseWatch("tcp://127.0.0.1:1", server.endpoint, "tok", limit=1.5e8)   # maps fed by hand here
    try:
        watch.on_map({"run": "r1", "map": 0, "dose": {"max": 1e8}})
        assert steering.reasons == []
        watch.on_map({"run": "r1", "map": 1, "dose": {"max": 2e8}})
        watch.on_map({"run": "r1", "map": 1, "dose": {"max": 3e8}})           # already paused for r1
        watch.on_map({"run": "r1", "map": 1})                                 # a map without dose
        assert len(steering.reasons) == 1 and "dose limit" in steering.reasons[0] and "map 1 of run r1" in steering.reasons[0]
        assert limit_reason(1.5e8, {"dose": {"max": True}}) is None
        with pytest.raises(Exception, match="positive"):
            DoseWatch("tcp://127.0.0.1:1", server.endpoint, "tok", limit=0)
    finally:
        watch.close()
        server.close()


def _frames_per_position(raw_files) -> Counter:
    """Frames each piezo position took, counted from the archived raw maps' x/y (not by the ledger)."""
    count: Counter = Counter()
    for path in raw_files:
        with h5py.File(path, "r") as f:
            xs, ys = f["entry/scan/x"][()], f["entry/scan/y"][()]
        count.update(zip(np.round(ys / STEP).astype(int), np.round(xs / STEP).astype(int)))
    return count


@pytest.mark.timeout(240)
def test_dose_limit_pauses_a_demo_run_and_every_map_archives_the_dose(tmp_path):
    archive = tmp_path / "archive"
    base = port_block(10)
    env = dict(os.environ, OPMON_CONTROL_TOKEN="dose-test-token")
    # 4 x 4 map, 10 angles: each position takes 1e8 photons per map, so the 1.5e8 limit falls in map 1
    cmd = [sys.executable, "-m", "opmon.cli", "demo", "--headless", "--archive-dir", str(archive),
           "--port-base", str(base), "--map-shape", "4", "4", "--angles", "10", "--acceleration", "1500",
           "--maps-at", "4.5", "4.7", "--max-maps", "2", "--dose-limit", "1.5e8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    control = ControlClient(f"tcp://127.0.0.1:{base + 8}", timeout=2.0)
    state: dict = {}

    def paused() -> bool:
        try:
            reply = control.request("status", None)
        except Exception:                        # not up yet
            return proc.poll() is not None
        state.update(reply.get("result") or {})
        return state.get("state") == "paused" or proc.poll() is not None

    try:
        assert until(paused, 150, interval_s=0.2), "the run never paused"
        assert state.get("state") == "paused", f"demo ended without pausing: {proc.stdout.read()[-3000:]}"
        assert "dose limit" in state["pause_reason"] and "limit 1.5e+08" in state["pause_reason"]
        assert control.request("resume", "dose-test-token")["ok"]      # once per run: it runs to the end now
        out, _ = proc.communicate(timeout=150)
    finally:
        control.close()
        stop_processes([proc], 30)
    assert proc.returncode == 0 and "exit status: success" in out, out[-3000:]
    (run_dir,) = [p for p in archive.iterdir() if p.is_dir() and p.name != "logs"]
    docs = [json.loads(line) for line in (run_dir / "documents.jsonl").read_text().splitlines()]
    decisions = [d["doc"]["data"] for d in docs if d["name"] == "event" and "steering-decision" in d["doc"]["data"]]
    pauses = [d for d in decisions if d["steering-decision"] == "pause"]
    assert len(pauses) == 1 and pauses[0]["steering-reason"] == state["pause_reason"]   # in the run's documents
    raws = sorted(run_dir.glob("map_[0-9][0-9][0-9][0-9].h5"))
    assert len(raws) == 2                         # maps at 4.5 and 4.7 V
    for number in range(2):
        count = _frames_per_position(raws[: number + 1])
        with h5py.File(run_dir / f"map_{number:04d}_maps.h5", "r") as f:
            dose = read_dose(f["entry"])
        x, y = dose.axes()
        got = {(int(round(yy / STEP)), int(round(xx / STEP))): dose.photons[i, j]
               for i, yy in enumerate(y) for j, xx in enumerate(x) if dose.photons[i, j] > 0}
        assert got == pytest.approx({k: n * EXPOSURE * FLUX for k, n in count.items()}), number
    assert max(_frames_per_position(raws[:1]).values()) * EXPOSURE * FLUX == pytest.approx(1e8)
