"""Ports: checked before anything starts; a taken one is named with the process holding it, one line,
non-zero exit, no traceback; `opmon demo` moves default ports that are taken. Real sockets."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from opmon.config import load_config
from opmon.demo import settle_ports
from opmon.errors import ConfigError
from opmon.port_picker import next_free
from opmon.ports import PortInUseError, check_range, holder, is_free, require_free

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def held():
    """A port this test process listens on (picked by the kernel: port 0)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def _opmon(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "opmon.cli", *argv], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]


def test_a_taken_port_names_itself_and_its_holder(held):
    assert not is_free("127.0.0.1", held)
    assert holder(held) is not None and holder(held).startswith(f"pid {os.getpid()} (")
    with pytest.raises(PortInUseError, match=rf"^maps_archive port 127.0.0.1:{held} is already in use by pid {os.getpid()} "):
        require_free("127.0.0.1", {"maps_archive": held})


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_ports_outside_the_tcp_range_are_refused(port):
    with pytest.raises(ConfigError, match=rf"^control port {port} is outside 1\.\.65535$"):
        check_range({"control": port})


def test_archive_service_with_its_port_taken_says_so_in_one_line(tmp_path, held):
    cfg = tmp_path / "opmon.toml"
    cfg.write_text(f'[ports]\nmaps_archive = {held}\n[archive]\ndir = "{tmp_path / "archive"}"\n')
    done = _opmon("archive", "--config", str(cfg), cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done).startswith(f"opmon archive: error: maps_archive port 127.0.0.1:{held} is already in use "
                                      f"by pid {os.getpid()} (")


def test_dashboard_with_its_port_taken_or_out_of_range_says_so_in_one_line(tmp_path, held):
    done = _opmon("dashboard", "--port", str(held), cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done).startswith(f"opmon dashboard: error: dashboard port 127.0.0.1:{held} is already in use by "
                                      f"pid {os.getpid()} (")
    done = _opmon("dashboard", "--port", "70000", cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done) == "opmon dashboard: error: dashboard port 70000 is outside 1..65535"


def test_demo_with_a_chosen_port_taken_stops_before_starting_anything(tmp_path, held):
    cfg = tmp_path / "opmon.toml"
    cfg.write_text(f"[ports]\nframes_archive = {held}\n")    # the first port the demo checks
    archive = tmp_path / "archive"
    done = _opmon("demo", "--headless", "--config", str(cfg), "--archive-dir", str(archive), cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done).startswith(f"opmon demo: error: frames_archive port 127.0.0.1:{held} is already in use by "
                                      f"pid {os.getpid()} (")
    assert not archive.exists()           # nothing started, nothing written


def test_demo_port_base_out_of_range_is_refused_before_anything_starts(tmp_path):
    archive = tmp_path / "archive"
    done = _opmon("demo", "--headless", "--port-base", "70000", "--archive-dir", str(archive), cwd=tmp_path)
    assert done.returncode == 2
    assert _one_line(done) == "opmon demo: error: --port-base 70000 puts the ports at 70000-70008, outside 1..65535"
    assert not archive.exists()


def test_demo_moves_default_ports_that_are_taken_and_prints_them(held, capsys):
    config = load_config(None)
    offsets = {name: port - 5550 for name, port in vars(config.ports).items()}
    for name, offset in offsets.items():          # "defaults" placed on the held port
        setattr(config.ports, name, held + offset)
    assert settle_ports(config, explicit=False, headless=True, dashboard_port=None) is None
    moved = vars(config.ports)
    assert held not in moved.values()
    assert {name: port - moved["frames_archive"] for name, port in moved.items()} == offsets  # same layout
    assert all(is_free("127.0.0.1", port) for port in moved.values())
    out = capsys.readouterr().out
    assert f"frames_archive port 127.0.0.1:{held} is already in use by pid {os.getpid()}" in out
    assert f"using ports {moved['frames_archive']}-{moved['control']}" in out
    with pytest.raises(PortInUseError):          # chosen by the user: never moved
        config.ports.control = held
        settle_ports(config, explicit=True, headless=True, dashboard_port=None)


def test_a_taken_dashboard_port_is_skipped(held):
    assert next_free("127.0.0.1", held) != held


def test_version_comes_from_the_installed_distribution(tmp_path):
    from importlib.metadata import version
    done = _opmon("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"opmon {version('operando-monitor')}"
