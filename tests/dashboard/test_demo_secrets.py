"""`opmon demo` with its dashboard writes the steering token into no file of its archive
(issue 11 §5): not the logs (tornado's access log saw the token URL), not opmon-demo.toml
(the token was configured in a file), not the HDF5 files or the documents.
"""
from __future__ import annotations

import http.client
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from opmon.dashboard.auth import cookie_name
from opmon.port_picker import port_block

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _get(port: int, path: str, cookie: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


@pytest.mark.timeout(400)
def test_no_file_the_demo_writes_holds_the_token(tmp_path):
    token = "tok-" + secrets.token_urlsafe(24)
    config = tmp_path / "mine.toml"                 # the user keeps the token in a config file
    config.write_text(f'[control]\ntoken = "{token}"\n')
    archive = tmp_path / "archive"
    base = port_block(10)
    http_port = base + 9
    proc = subprocess.Popen([sys.executable, "-m", "opmon.cli", "demo", "--no-browser", "--config", str(config),
                             "--archive-dir", str(archive), "--port-base", str(base),
                             "--dashboard-port", str(http_port), "--map-shape", "6", "6", "--angles", "10",
                             "--max-maps", "1", "--acceleration", "3000"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True, env=dict(os.environ, OPMON_CONTROL_TOKEN=""))
    out: list[str] = []
    try:
        steering = None
        deadline = time.monotonic() + 180
        while steering is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
            if line.startswith("dashboard (steering):"):
                steering = line.split()[-1]
        assert steering == f"http://127.0.0.1:{http_port}/?token={token}", "".join(out)
        # the user opens the steering URL once: the token is swapped for a cookie ...
        first = _get(http_port, steering.split(str(http_port), 1)[1])
        assert first.status == 303 and first.getheader("Location") == "/"
        sid = first.getheader("Set-Cookie").split(";")[0]
        assert sid.startswith(cookie_name(http_port) + "=") and token not in sid
        assert _get(http_port, "/", cookie=sid).status == 200
        assert _get(http_port, f"/nowhere?token={token}").status == 404    # a mistyped URL: logged too
        while not any(line.startswith("run finished") for line in out) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out.append(line)
        assert any(line.startswith("run finished") for line in out), "".join(out)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)        # the demo stops its services, flushing their logs
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        proc.stdout.close()

    files = [p for p in archive.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".log", ".toml", ".h5", ".jsonl"} <= kinds, sorted(map(str, files))
    holding = [str(p.relative_to(archive)) for p in files if token.encode() in p.read_bytes()]
    assert holding == [], f"the steering token is written in {holding}"
    access = (archive / "logs" / "dashboard.log").read_text()
    assert "303 GET / (127.0.0.1)" in access and "404 GET /nowhere (127.0.0.1)" in access, access[-2000:]
