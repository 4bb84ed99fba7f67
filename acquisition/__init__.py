"""opmon.acquisition: ophyd-async devices, bluesky plans and map triggers for operando SXDM.

Plans depend only on these device interfaces; `opmon.simulators.beamline` builds the same
devices over simulated transports.
"""
from opmon.acquisition.cell_state import CellMode, CellSample
from opmon.acquisition.detector import DetectorCalibration, FrameSource, SxdmDetector
from opmon.acquisition.mapping import CellMonitor, MapGrid, acquire_map, sxdm_map
from opmon.acquisition.motion import Diffractometer, PiezoStage
from opmon.acquisition.plans import AcquiredMap, SeriesResult, StepRecord, operando_series, potentiostatic_steps, set_cell
from opmon.acquisition.potentiostat import (HIGH_IMPEDANCE, OPEN_CIRCUIT, CellBackend, CellCommand, Potentiostat,
                                            PotentiostatLimits)
from opmon.acquisition.sinks import FrameSink, MapMeta, PublisherSink, SinkTarget, TeeSink
from opmon.acquisition.steering_requests import SteeringRequests
from opmon.acquisition.triggers import (AnyOf, CellReading, PeriodicTrigger, PlateauTrigger, RestTrigger, TriggerRule,
                                        VoltageThresholds, rule_from_values, rule_values)

__all__ = [
    "acquire_map", "AcquiredMap", "AnyOf", "CellBackend", "CellCommand", "CellMode", "CellMonitor", "CellReading",
    "CellSample", "DetectorCalibration", "Diffractometer", "FrameSink", "FrameSource",
    "HIGH_IMPEDANCE", "MapGrid", "MapMeta", "OPEN_CIRCUIT", "operando_series", "PeriodicTrigger",
    "PiezoStage", "PlateauTrigger", "Potentiostat", "potentiostatic_steps", "PotentiostatLimits", "PublisherSink",
    "RestTrigger", "rule_from_values", "rule_values", "SeriesResult", "set_cell", "SinkTarget", "SteeringRequests",
    "StepRecord", "sxdm_map", "SxdmDetector", "TeeSink",
    "TriggerRule", "VoltageThresholds",
]
