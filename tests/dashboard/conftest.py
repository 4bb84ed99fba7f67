"""Fixtures of the dashboard tests: a real simulated experiment and a real dashboard server."""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

# the suite runs with --import-mode=importlib, which leaves sys.path alone: make this folder's
# helper modules (dashboard_producer, dashboard_http) importable by name
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dashboard_producer import SimulatedExperiment
from opmon.dashboard.server import DashboardConfig, DashboardServer

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(12)


@pytest.fixture
def experiment(token):
    """RunEngine + ZeroMQ display publishers + token-checked control server, all on 127.0.0.1."""
    exp = SimulatedExperiment(token).start()
    yield exp
    exp.close()


@pytest.fixture
def dashboard(experiment, token):
    """A dashboard server following `experiment`, with the same steering token."""
    srv = DashboardServer(DashboardConfig(display_endpoints=[experiment.live_endpoint, experiment.acq_endpoint],
                                          control_endpoint=experiment.control.endpoint, port=0,
                                          token=token)).start()
    yield srv
    srv.stop()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
