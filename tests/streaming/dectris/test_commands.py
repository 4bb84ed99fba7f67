"""`opmon bridge` and `opmon live --source`: a bad source is one line and exit 2, before anything binds."""
from __future__ import annotations

from opmon.cli import main


def test_a_source_that_is_not_a_dectris_stream_is_refused_in_one_line(capsys):
    assert main(["live", "--source", "eiger:tcp://127.0.0.1:31001", "--no-recover"]) == 2
    assert main(["bridge", "--source", "dectris:http://127.0.0.1:31001"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["opmon live: error: --source 'eiger:tcp://127.0.0.1:31001': expected opmon, bluesky:tcp://HOST:PORT "
                   "(a bluesky 0MQ proxy) or dectris:tcp://HOST:PORT (a DECTRIS detector's stream V2)",
                   "opmon bridge: error: source 'dectris:http://127.0.0.1:31001': expected dectris:tcp://HOST:PORT "
                   "(the detector's stream V2, port 31001)"]
