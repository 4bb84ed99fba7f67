"""One TOML file sets every port and path; mistakes name the file and key."""
from __future__ import annotations

import pytest

from opmon.config import load_config
from opmon.errors import ConfigError


def test_defaults_come_from_the_packaged_file():
    config = load_config()
    assert config.host == "127.0.0.1" and config.ports.frames_live == 5551
    assert config.endpoint("display_live") == "tcp://127.0.0.1:5555"
    assert config.archive.flush_interval_s <= 0.5


def test_a_user_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[ports]\nframes_live = 7001\n[archive]\ndir = "/data/run"\nflush_interval_s = 1\n')
    config = load_config(path)
    assert config.ports.frames_live == 7001 and config.ports.frames_archive == 5550
    assert config.archive.dir == "/data/run" and config.archive.flush_interval_s == 1.0


@pytest.mark.parametrize("text, match", [
    ("[ports]\nframes_lvie = 1\n", "unknown key 'frames_lvie'"),
    ("[ports]\nframes_live = \"x\"\n", "ports.frames_live: expected int"),
    ("[ports]\nframes_live = 70000\n", "not a TCP port"),
    ("[live]\nworkers = 0\n", "live.workers"),
    ("[live]\nregister = \"sideways\"\n", "live.register"),
    ("[detector]\ncompression = \"zstd\"\n", "detector.compression: 'zstd', expected one of 'none', 'bslz4'"),
    ("ports = 3\n", "expected a table"),
    ("[ports\n", "not valid TOML"),
])
def test_bad_values_name_the_key(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="no port named"):
        load_config().endpoint("nowhere")


AWKWARD_DIR = 'run "7" \\ cathode'       # a quote and a backslash, as a user's folder may hold


def test_the_demos_written_config_reads_back_equal_with_quotes_and_backslashes_in_the_path(tmp_path):
    from opmon.demo import write_config
    config = load_config()
    config.archive.dir = str(tmp_path / AWKWARD_DIR)
    config.ports.control = 6123
    config.control.token = "secret"
    again = load_config(write_config(config, tmp_path / "effective.toml"))
    config.control.token = ""                    # the token never goes into the file
    assert again == config


@pytest.mark.slow
def test_the_demos_services_start_from_an_archive_path_with_a_quote_and_a_backslash(tmp_path):
    import subprocess
    import sys

    from opmon.port_picker import port_block
    archive = tmp_path / AWKWARD_DIR
    cmd = [sys.executable, "-m", "opmon.cli", "demo", "--headless", "--archive-dir", str(archive),
           "--port-base", str(port_block(10)), "--map-shape", "4", "4", "--angles", "6",
           "--acceleration", "3000", "--maps-at", "4.5", "--max-maps", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exit status: success" in done.stdout and "frames lost: 0" in done.stdout
    assert [p for p in archive.iterdir() if p.is_dir() and p.name != "logs"]   # the run was archived there
