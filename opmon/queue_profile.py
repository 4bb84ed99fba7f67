"""A bluesky-queueserver profile: opmon's simulated beamline and operando plan, run from a queue.

    OPMON_CONFIG=my.toml start-re-manager --startup-module opmon.queue_profile \\
        --existing-plans-devices /tmp/opmon-plans-devices.yaml --update-existing-plans-devices ENVIRONMENT_OPEN

The queue server's worker imports this module when its environment opens: the RunEngine,
the devices (potentiostat, piezo stage, diffractometer, detector of the simulated beamline)
and the plan `operando_maps` become the queue's. Frames and documents go out on the stream
endpoints of the opmon configuration in `OPMON_CONFIG` (default: opmon's own defaults), so
`opmon archive`, `opmon live` and `opmon dashboard` started with the same configuration
archive and show runs taken from the queue exactly as runs of `opmon demo`. Pause, resume and
abort are the queue server's own (`re_pause`, `re_resume`, `re_abort`).

The simulated experiment's size comes from environment variables read once, here:
`OPMON_QUEUE_MAP` ("NY,NX", default 12,12), `OPMON_QUEUE_ANGLES` (30) and
`OPMON_QUEUE_ACCELERATION` (simulated s per wall s, 900).
"""
from __future__ import annotations

# Every name but the RunEngine, the devices and the plan starts with "_": the queue server
# exposes what a profile's namespace holds, and its permissions (queue_permissions.yaml) hide "_".
import os as _os
from pathlib import Path as _Path
from typing import Any as _Any

from bluesky import RunEngine as _RunEngine

from opmon.acquisition import CellCommand as _CellCommand
from opmon.acquisition import PublisherSink as _PublisherSink
from opmon.acquisition import operando_series as _operando_series
from opmon.acquisition.cell_state import CellMode as _CellMode
from opmon.config import load_config as _load_config
from opmon.errors import ConfigError as _ConfigError
from opmon.experiment import ExperimentPlan as _ExperimentPlan
from opmon.experiment import make_rule as _make_rule
from opmon.simulators.beamline import BeamlineConfig as _BeamlineConfig
from opmon.simulators.beamline import SimulatedBeamline as _SimulatedBeamline
from opmon.streaming.documents import DocumentPublisher as _DocumentPublisher
from opmon.streaming.publisher import ZmqFrameSink as _ZmqFrameSink

#: the user group permissions to start the queue server with (`--user-group-permissions`)
PERMISSIONS = str(_Path(__file__).with_name("queue_permissions.yaml"))


def _experiment_from_environment() -> _ExperimentPlan:
    """The simulated experiment's size, from OPMON_QUEUE_* (a clear error naming a bad one)."""
    try:
        ny, nx = (int(v) for v in _os.environ.get("OPMON_QUEUE_MAP", "12,12").split(","))
        angles = int(_os.environ.get("OPMON_QUEUE_ANGLES", "30"))
        acceleration = float(_os.environ.get("OPMON_QUEUE_ACCELERATION", "900"))
    except ValueError as exc:
        raise _ConfigError(f"OPMON_QUEUE_MAP (NY,NX), OPMON_QUEUE_ANGLES, OPMON_QUEUE_ACCELERATION: {exc}") from exc
    if min(ny, nx, angles) < 1 or not acceleration > 0:
        raise _ConfigError(f"queue profile: map {ny} x {nx}, {angles} angles, acceleration {acceleration}: "
                          "all must be positive")
    return _ExperimentPlan(map_shape=(ny, nx), n_angles=angles, acceleration=acceleration)


_config = _load_config(_os.environ.get("OPMON_CONFIG") or None)
_experiment = _experiment_from_environment()

RE = _RunEngine({})   # the queue server's worker takes the RunEngine its profile makes
_publisher = _ZmqFrameSink([_config.endpoint("frames_archive"), _config.endpoint("frames_live")],
                          sndhwm=_config.stream.sndhwm, stall_timeout_s=_config.stream.stall_timeout_s,
                          ack_endpoint=_config.endpoint("frames_archive_ack"),
                          spool_bytes=_config.stream.archive_spool_bytes)
_documents = _DocumentPublisher(_config.endpoint("docs"), _config.endpoint("display_acquisition"),
                               stall_timeout_s=_config.stream.stall_timeout_s)
_sink = _PublisherSink(_publisher)
RE.subscribe(_documents)
RE.subscribe(_sink)
_beamline = _SimulatedBeamline(_BeamlineConfig(setup=_experiment.setup(), acceleration=_experiment.acceleration,
                                             seed=_experiment.seed), sink=_sink)

potentiostat, stage, diffractometer, detector = _beamline.devices


def operando_maps(thresholds_v: list[float] | None = None, period_s: float | None = None, plateau: bool = False,
                  max_maps: int | None = None, c_rate: float = 1.0 / 15.0, cutoff_v: float = 4.9,
                  order: str = "point-outer") -> _Any:
    """Charge the simulated cell galvanostatically and map the crystal when a trigger fires.

    thresholds_v: voltages (V) that start a map; period_s: also map every period (simulated s);
    plateau: also map when a plateau begins; max_maps: end after this many maps; c_rate and
    cutoff_v: the charge (C-rate, cut-off voltage); order: "point-outer" or "eta-outer".
    """
    rule = _make_rule(thresholds_v if thresholds_v is not None else [4.5, 4.7, 4.75, 4.8], period_s, plateau)
    charge = _CellCommand(_CellMode.GALVANOSTATIC, _beamline.c_rate(float(c_rate)), cutoff=float(cutoff_v))
    return (yield from _operando_series(potentiostat, stage, diffractometer, detector, **_beamline.map_args(),
                                       triggers=rule, charge=charge, order=order, max_maps=max_maps,
                                       md={"sample": "LiNi0.5Mn1.5O4 single crystal (simulated)",
                                           "opmon_queue": True}))
