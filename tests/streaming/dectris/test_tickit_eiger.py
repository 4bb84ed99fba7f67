"""A producer opmon did not write: tickit-devices' simulated Eiger (DLS), whose stream V2
endpoint replays a start and an image message recorded from a real EIGER2 16M (bslz4, uint16,
4362 x 4148, two thresholds), driven through its SIMPLON REST API into `opmon live --source
dectris:` and `opmon archive`."""
from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import cbor2
import h5py
import numpy as np
import pytest

from opmon.port_picker import free_ports
from opmon.ports import is_free
from opmon.processors.maps import read_map_result
from opmon.processors.offline import ProcessOptions, process_entry

from tests.processors.conftest import assert_same_maps
from tests.streaming.conftest import write_config
from tests.waiting import stop_processes, until

tickit_eiger = pytest.importorskip("tickit_devices.eiger")
IMAGES = 3


def simplon(base: str, path: str, value: object = None) -> None:
    """One PUT of DECTRIS's SIMPLON API (a value for config keys, nothing for commands)."""
    body = b"" if value is None else json.dumps({"value": value}).encode()
    request = urllib.request.Request(base + path, data=body, method="PUT", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def recorded_frame() -> tuple[np.ndarray, bytes]:
    """The recorded image as DECTRIS's documented client decodes it (cbor2 + dectris-compression),
    and its bslz4 bytes."""
    from dectris.compression import decompress
    raw = (Path(tickit_eiger.__file__).parent / "data" / "stream2" / "image.cbor").read_bytes()
    message = cbor2.loads(raw)
    dims, typed = message["data"]["threshold_1"].value
    algorithm, elem_size, data = typed.value.value
    assert (typed.tag, algorithm) == (69, "bslz4")
    return np.frombuffer(decompress(data, algorithm, elem_size=elem_size), dtype="<u2").reshape(dims), data


def test_tickit_eiger_series_reaches_live_maps_and_archive(tmp_path):
    config, path = write_config(tmp_path)
    archive = tmp_path / "archive"
    http, cbor, legacy = free_ports(3)
    (tmp_path / "eiger.yaml").write_text(
        f"- type: tickit_devices.eiger.Eiger\n  name: eiger\n  inputs: {{}}\n  host: 127.0.0.1\n  port: {http}\n"
        f"  stream_host: 127.0.0.1\n  stream_legacy_port: {legacy}\n  stream_cbor_port: {cbor}\n")
    log = open(tmp_path / "live.log", "w+")        # noqa: SIM115 (read after the process ended)
    procs = [subprocess.Popen([sys.executable, "-m", "tickit", "all", str(tmp_path / "eiger.yaml"), "--backend",
                               "internal"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "opmon.cli", "archive", "--config", path],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    base = f"http://127.0.0.1:{http}"
    try:
        assert until(lambda: not is_free("127.0.0.1", http) and not is_free(config.host, config.ports.maps_archive), 60)
        procs.append(subprocess.Popen([sys.executable, "-m", "opmon.cli", "live", "--config", path, "--archive-dir",
                                       str(archive), "--source", f"dectris:tcp://127.0.0.1:{cbor}"],
                                      stdout=log, stderr=log))
        assert until(lambda: not is_free(config.host, config.ports.frames_live), 60)
        simplon(base, "/stream/api/1.8.0/config/format", "cbor")
        simplon(base, "/detector/api/1.8.0/config/nimages", IMAGES)
        simplon(base, "/detector/api/1.8.0/config/trigger_mode", "ints")
        simplon(base, "/detector/api/1.8.0/command/initialize")
        simplon(base, "/detector/api/1.8.0/command/arm")
        simplon(base, "/detector/api/1.8.0/command/trigger")     # returns when the series' images are sent
        simplon(base, "/detector/api/1.8.0/command/disarm")
        runs = lambda: [p for p in archive.glob("dectris-1-*") if (p / "map_0000_maps.h5").exists()]  # noqa: E731
        assert until(lambda: len(runs()) == 1, 120), "final maps not archived"
    finally:
        stop_processes(procs[::-1], 30)
    log.seek(0)
    text = log.read()
    summary = json.loads(text.split("dectris bridge: ")[-1].splitlines()[0])
    series = summary["series"][0]
    assert (series["received"], series["lost"], series["ended"]) == (IMAGES, 0, True), text[-3000:]
    assert summary["accepted"] == IMAGES and summary["lost"] == 0
    run = runs()[0]
    with h5py.File(run / "map_0000_maps.h5", "r") as f:
        live = read_map_result(f["entry"])
        roi = tuple(int(v) for v in f["entry/maps"].attrs["roi"])
    with h5py.File(run / "map_0000.h5", "r") as f:
        entry = f["entry"]
        frame, chunk = recorded_frame()
        for i in range(IMAGES):
            np.testing.assert_array_equal(entry["instrument/detector/data"][i], frame)
            assert bytes(entry["instrument/detector/data"].id.read_direct_chunk((i, 0, 0))[1]) == chunk
        np.testing.assert_allclose(entry["instrument/detector/distance"][()], 0.23715919962215962)
        np.testing.assert_allclose(entry["instrument/beam/incident_energy"][()], 13500.299829398293)
        np.testing.assert_allclose(entry["sample/positioners/eta"][()], [0.0, 0.1, 0.2])   # goniometer omega
        offline, _ = process_entry(entry, ProcessOptions(roi=roi))
    assert_same_maps(live, offline)
