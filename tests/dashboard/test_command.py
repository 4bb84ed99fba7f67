"""`opmon dashboard` as a user starts it: 127.0.0.1, any free port, the token never printed to a
log, the token URL swapped for a cookie, foreign websocket origins refused."""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import zmq
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp_path, experiment, token, archive_port):
    live = experiment.live_endpoint.rsplit(":", 1)[1]
    acq = experiment.acq_endpoint.rsplit(":", 1)[1]
    ctl = experiment.control.endpoint.rsplit(":", 1)[1]
    path = tmp_path / "opmon.toml"
    path.write_text(f'[ports]\ndisplay_live = {live}\ndisplay_acquisition = {acq}\n'
                    f'display_archive = {archive_port}\ncontrol = {ctl}\n[control]\ntoken = "{token}"\n')
    return path


def _ws_status(url: str, origin: str, session_token: str) -> int:
    """HTTP status of a websocket upgrade from `origin` (101 = accepted)."""
    async def go() -> int:
        try:
            conn = await websocket_connect(HTTPRequest(url, headers={"Origin": origin}, connect_timeout=10,
                                                       request_timeout=10),
                                           subprotocols=["bokeh", session_token])
        except HTTPClientError as exc:
            return exc.code
        conn.close()
        return 101
    return asyncio.run(go())


def test_command_prints_urls_serves_the_page_and_restricts_origins(tmp_path, experiment, token):
    idle = zmq.Context.instance().socket(zmq.PUB)           # stands in for the archiver's status
    cfg = _config(tmp_path, experiment, token, idle.bind_to_random_port("tcp://127.0.0.1"))
    proc = subprocess.Popen([sys.executable, "-m", "opmon.cli", "dashboard", "--config", str(cfg), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=dict(os.environ, OPMON_CONTROL_TOKEN=""))
    try:
        lines = []
        deadline = time.monotonic() + 60
        while len(lines) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "opmon dashboard" in line:
                lines.append(line.strip())
        m = re.fullmatch(r"opmon dashboard \(read-only\): http://127\.0\.0\.1:(\d+)/", lines[0])
        assert m, lines[0]
        port = int(m.group(1))                          # --port 0: the port it bound
        # stdout is a pipe here (a log under the supervisor): how to steer, but not the token
        assert lines[1] == f"opmon dashboard (steering):  http://127.0.0.1:{port}/?token=<the steering token>"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/?token={token}", timeout=20) as resp:
            page = resp.read().decode()                 # followed the redirect (the cookie is not kept)
        assert resp.status == 200 and "bokeh" in page.lower() and resp.url == f"http://127.0.0.1:{port}/"
        # the page's own websocket URL carries a session token; use it with two origins
        m = re.search(r'"token":\s*"([^"]+)"', page) or re.search(r"token=([A-Za-z0-9_.\-]+)", page)
        assert m, "no Bokeh session token in the page"
        ws = f"ws://127.0.0.1:{port}/ws"
        assert _ws_status(ws, "http://evil.example:8080", m.group(1)) == 403
        assert _ws_status(ws, f"http://localhost.evil.example:{port}", m.group(1)) == 403
        assert _ws_status(ws, f"http://127.0.0.1:{port}", m.group(1)) == 101
    finally:
        idle.close(0)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
