"""opmon.acquisition: ophyd-async devices, bluesky plans and map triggers for operando SXDM.

Plans depend only on these device interfaces; `opmon.simulators.beamline` builds the same
devices over simulated transports.
"""
from opmon.acquisition.detector import DetectorGeometry, FrameSource, SxdmDetector
from opmon.acquisition.mapping import CellMonitor, MapGrid, map_frames, sxdm_map
from opmon.acquisition.motion import Diffractometer, PiezoStage
from opmon.acquisition.plans import MapRecord, SeriesResult, StepRecord, operando_series, potentiostatic_steps, set_cell
from opmon.acquisition.potentiostat import (HIGH_IMPEDANCE, OPEN_CIRCUIT, CellBackend, CellCommand, Potentiostat,
                                            PotentiostatLimits)
from opmon.acquisition.sinks import FrameSink, Hdf5MapSink, MapMeta, PublisherSink, SinkTarget, TeeSink
from opmon.acquisition.triggers import (AnyOf, CellReading, MapRequests, PeriodicTrigger, PlateauTrigger, RestTrigger,
                                        TriggerRule, VoltageThresholds)

__all__ = [
    "AnyOf", "CellBackend", "CellCommand", "CellMonitor", "CellReading", "DetectorGeometry", "Diffractometer",
    "FrameSink", "FrameSource", "HIGH_IMPEDANCE", "Hdf5MapSink", "MapGrid", "MapMeta", "MapRecord", "MapRequests",
    "OPEN_CIRCUIT", "PeriodicTrigger", "PiezoStage", "PlateauTrigger", "Potentiostat", "PotentiostatLimits",
    "PublisherSink", "RestTrigger", "SeriesResult", "SinkTarget", "StepRecord", "SxdmDetector", "TeeSink",
    "TriggerRule", "VoltageThresholds", "map_frames", "operando_series", "potentiostatic_steps", "set_cell", "sxdm_map",
]
