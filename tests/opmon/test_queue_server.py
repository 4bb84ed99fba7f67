"""opmon's plan and devices run from bluesky-queueserver's queue, steered through its API.

Everything real: Debian's redis-server (scripts/install-redis.sh), `start-re-manager` with the
profile `opmon.queue_profile`, `opmon archive` and `opmon live` on the same configuration, and
bluesky-queueserver-api's REManagerAPI as the client. One run is paused, resumed, paused again
and aborted; the archive records it as aborted. A second run goes to its end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from opmon.port_picker import free_ports
from tests.waiting import stop_processes, until

pytestmark = pytest.mark.slow

REDIS = "/usr/bin/redis-server"


def _status(rm, key: str):
    return rm.status()[key]


@pytest.fixture
def queue(tmp_path):
    """(REManagerAPI, archive dir) of a running queue server with opmon's profile."""
    assert Path(REDIS).is_file(), "redis-server missing: run scripts/setup.sh test (it installs it)"
    from bluesky_queueserver_api.zmq import REManagerAPI

    from opmon.queue_profile import PERMISSIONS
    names = ("frames_archive", "frames_live", "docs", "maps_archive", "frames_archive_ack", "display_live",
             "display_acquisition", "display_archive", "control")
    ports = free_ports(len(names) + 3)
    archive = tmp_path / "archive"
    config = tmp_path / "opmon.toml"
    config.write_text("[ports]\n" + "".join(f"{n} = {p}\n" for n, p in zip(names, ports))
                      + f'[archive]\ndir = "{archive}"\n')
    redis_port, control_port, info_port = ports[-3:]
    env = dict(os.environ, OPMON_CONFIG=str(config), OPMON_QUEUE_MAP="4,4", OPMON_QUEUE_ANGLES="6")
    log = open(tmp_path / "services.log", "wb")
    procs = [subprocess.Popen([REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no"], stdout=log, stderr=log)]
    opmon = [sys.executable, "-m", "opmon.cli"]
    procs += [subprocess.Popen([*opmon, service, "--config", str(config)], stdout=log, stderr=log, env=env)
              for service in ("archive", "live")]
    manager = shutil.which("start-re-manager", path=str(Path(sys.executable).parent))
    procs.append(subprocess.Popen(
        [manager, "--startup-module", "opmon.queue_profile", "--user-group-permissions", PERMISSIONS,
         "--existing-plans-devices", str(tmp_path / "plans_devices.yaml"),
         "--update-existing-plans-devices", "ENVIRONMENT_OPEN", "--redis-addr", f"127.0.0.1:{redis_port}",
         "--zmq-control-addr", f"tcp://127.0.0.1:{control_port}", "--zmq-info-addr", f"tcp://127.0.0.1:{info_port}",
         "--console-output", "OFF"], stdout=log, stderr=log, env=env))
    rm = REManagerAPI(zmq_control_addr=f"tcp://127.0.0.1:{control_port}", zmq_info_addr=f"tcp://127.0.0.1:{info_port}",
                      timeout_recv=10)
    try:
        assert until(lambda: _manager_up(rm), 30), "start-re-manager did not answer"
        rm.environment_open()
        rm.wait_for_idle(timeout=120)
        assert _status(rm, "worker_environment_exists"), (tmp_path / "services.log").read_text()[-2000:]
        yield rm, archive
        if _status(rm, "worker_environment_exists"):
            rm.environment_close()
            rm.wait_for_idle(timeout=60)
    finally:
        rm.close()
        stop_processes(procs[::-1], 20)
        log.close()


def _manager_up(rm) -> bool:
    try:
        rm.status()
        return True
    except Exception:       # the API raises its own timeout classes while the manager starts
        return False


def _stop_document(archive: Path, uid: str) -> dict:
    def stopped() -> bool:
        try:
            with h5py.File(archive / uid / "run.h5", "r") as f:
                return "document_stop" in f.attrs
        except (OSError, KeyError):
            return False
    assert until(stopped, 30), f"run {uid} never closed in the archive"
    with h5py.File(archive / uid / "run.h5", "r") as f:
        return json.loads(f.attrs["document_stop"])


def test_operando_maps_from_the_queue_pauses_resumes_aborts_and_completes(queue):
    from bluesky_queueserver_api import BPlan
    rm, archive = queue
    assert "operando_maps" in rm.plans_allowed()["plans_allowed"]
    assert {"potentiostat", "stage", "diffractometer", "detector"} <= set(rm.devices_allowed()["devices_allowed"])

    rm.item_add(BPlan("operando_maps", thresholds_v=[4.5, 4.7], max_maps=2))
    rm.queue_start()
    assert until(lambda: _status(rm, "re_state") == "running", 60)
    rm.re_pause(option="immediate")
    rm.wait_for_idle_or_paused(timeout=60)
    assert _status(rm, "re_state") == "paused" and _status(rm, "manager_state") == "paused"
    rm.re_resume()
    assert until(lambda: _status(rm, "re_state") == "running", 30)
    rm.re_pause(option="immediate")
    rm.wait_for_idle_or_paused(timeout=60)
    assert _status(rm, "re_state") == "paused"
    rm.re_abort()
    rm.wait_for_idle(timeout=120)
    (aborted,) = rm.history_get()["items"]
    assert aborted["result"]["exit_status"] == "aborted"
    (uid,) = aborted["result"]["run_uids"]
    assert _stop_document(archive, uid)["exit_status"] == "abort"

    rm.item_add(BPlan("operando_maps", thresholds_v=[4.5], max_maps=1))
    rm.queue_start()
    rm.wait_for_idle(timeout=240)
    done = rm.history_get()["items"][-1]
    assert done["result"]["exit_status"] == "completed", done["result"].get("msg")
    (uid,) = done["result"]["run_uids"]
    assert _stop_document(archive, uid)["exit_status"] == "success"
    assert until(lambda: (archive / uid / "map_0000_maps.h5").is_file(), 60), "the live processor's maps never archived"
