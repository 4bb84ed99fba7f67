"""Every name opmon gives to things on disk: file names, HDF5 paths and attributes, in one place.

FORMATS.md (raw maps, maps files) and docs/protocol.md ("Archive layout") are public
interfaces: other programs read these files. Writers and readers all take their names from
here, so the layout cannot drift between the simulator, the archiver, `opmon process`, the
live processor's recovery and the demo's summary.
"""
from __future__ import annotations

import re

# -- raw map entry (FORMATS.md), paths relative to the entry group ------------------------------
ENTRY = "entry"                   # the one entry of a raw map file or a maps file
DATA = "instrument/detector/data"
DISTANCE = "instrument/detector/distance"
X_PIXEL = "instrument/detector/x_pixel_size"
Y_PIXEL = "instrument/detector/y_pixel_size"
BEAM_X = "instrument/detector/beam_center_x"
BEAM_Y = "instrument/detector/beam_center_y"
DET_MASK = "instrument/detector/mask"
ENERGY = "instrument/beam/incident_energy"
POSITIONERS = "sample/positioners"
ANGLES = ("eta", "phi", "nu", "delta")
MAP_SHAPE = "scan/map_shape"
MAP_INDEX = "scan/map_index"
SCAN_X = "scan/x"
SCAN_Y = "scan/y"
ENTRY_GROUPS = ("instrument", "sample", "scan")   # what run.h5 links of each map file

# -- what an archived map file adds to the raw layout (docs/protocol.md) -------------------------
SEQUENCE = "scan/sequence"              # stream sequence number of every frame
TIMESTAMP = "scan/timestamp"            # send time of every frame, s
COMPLETE = "scan/complete"              # 1 once every frame its map_end counted is in the file
N_FRAMES_SENT = "scan/n_frames_sent"    # what the map's map_end said was sent (-1 before it came)
LAST_SEQ_SENT = "scan/last_seq_sent"
MAP_COMPLETE = "entry/scan/complete"    # COMPLETE seen from the file's root
ATTR_RUN_UID = "run_uid"
ATTR_MAP_NUMBER = "map_number"
ATTR_FRAMES_EXPECTED = "n_frames_expected"
ATTR_TRIGGER = "trigger"

# -- final maps (FORMATS.md maps layout, `<entry>/maps`) ----------------------------------------
MAPS = "maps"
MAPS_REQUIRED = ("d_spacing", "tilt_altitude", "tilt_azimuth", "intensity", "peak_width", "q", "mask", "mean_q")
MAPS_UNITS = {"d_spacing": "angstrom", "tilt_altitude": "deg", "tilt_azimuth": "deg", "intensity": "counts",
              "peak_width": "1/angstrom", "q": "1/angstrom", "mean_q": "1/angstrom",
              "eta_shifts": "map pixel", "eta_scans": "deg"}
MAPS_FRAMES = "frames"                  # frames per pixel (optional)
#: optional, when the eta scans of the map were registered: each scan's eta (n,) and the (dy, dx)
#: drift (n, 2) it was moved back by before the scans were added (attribute `register`: the method)
MAPS_ETA_SCANS, MAPS_ETA_SHIFTS = "eta_scans", "eta_shifts"
MAPS_FLAGS = "flags"                    # per-pixel uint8 bit field (optional; bits: opmon.processors.maps.FLAG_*)
MAPS_BAD_FRAMES = "bad_frames"          # corrupt frames skipped by `opmon process --skip-bad-frames`
MAPS_FOUND_BAD_PIXELS = "found_bad_pixels"  # (n, 2) detector pixels found hot/dead from the data (masked)
#: optional `<entry>/maps/fit`: the per-pixel peak fit (`opmon process --peak-fit`, `[live] peak_fit`), an NXdata
#: of these (ny, nx) maps and `q` (ny, nx, 3), beside the centre-of-mass maps; attributes `model`, `description`
MAPS_FIT = "fit"
FIT_UNITS = {"d_spacing": "angstrom", "tilt_altitude": "deg", "tilt_azimuth": "deg", "peak_width": "1/angstrom",
             "rocking_centre": "deg", "rocking_width": "deg", "reduced_chi2": "", "q": "1/angstrom", "peaks": "",
             "d_spacing_peak1": "angstrom", "d_spacing_peak2": "angstrom", "second_fraction": "",
             "edge_shift": "pixel"}
FIT_AUXILIARY = ("tilt_altitude", "tilt_azimuth", "peak_width", "reduced_chi2")
ATTR_BACKGROUND = "background_rate"
DOSE = "dose"                           # <entry>/dose: NXdata of the run's dose so far (photons, x/y in µm)
DOSE_SIGNAL = "photons"
ATTR_ROI = "roi"

# -- a run directory `<archive>/<run uid>/` -----------------------------------------------------
MASTER = "run.h5"                 # links entryN to each map file; replaced whole, never half-written
POTENTIOSTAT = "potentiostat.h5"  # NXlog of the readings
POTENTIOSTAT_GROUP = "entry/potentiostat"   # the NXlog, inside an NXentry so NeXus validators accept the file
POTENTIOSTAT_LINK = "potentiostat"   # run.h5's link to the NXlog; also where archives before 2026-11-29 kept it
POTENTIOSTAT_PLOT = "voltage"                 # NXdata beside the NXlog: voltage against time, the default plot
LOG_TIME = "time"                 # NXlog time axis, s since the run start
DOCUMENTS = "documents.jsonl"     # bluesky documents, one JSON line each
MASTER_ENTRY = "entry{number}"
ATTR_START = "start"              # master attributes: the stream's start header (JSON)
ATTR_STOP = "stop"
ATTR_STATE = "state"              # "running" until the run's stop, then "done"
STATE_DONE = "done"
STATE_RUNNING = "running"
ATTR_DOCUMENT = "document_"       # prefix: document_start, document_stop (bluesky documents, JSON)
ATTR_FRAMES = "frames"            # master entry attributes
ATTR_COMPLETE = "complete"
#: potentiostat NXlog columns: (dataset, reading message key, units)
READING_COLUMNS = (("value", "voltage_v", "V"), ("current", "current_a", "A"), ("charge", "charge_mah", "mA*h"),
                   ("x_li", "x_li", ""), ("timestamp", "t", "s"))

_MAP_FILE = re.compile(r"map_(\d{4})\.h5")


def map_file_name(number: int) -> str:
    """Raw frames of map `number`: a standalone FORMATS.md file (`opmon process` reads it)."""
    return f"map_{number:04d}.h5"


def maps_file_name(number: int) -> str:
    """Final maps of map `number` (FORMATS.md maps layout under /entry/maps)."""
    return f"map_{number:04d}_maps.h5"


def map_number_of(name: str) -> int | None:
    """The map number of a raw map file's name (`map_0003.h5` -> 3), None for any other file."""
    found = _MAP_FILE.fullmatch(name)
    return int(found.group(1)) if found else None


def sink_file_name(run_uid: str, number: int) -> str:
    """Raw frames of map `number` of a run, as the detector's file sink (`map_sink`) names them."""
    return f"{run_uid}_map{number:04d}.h5"


def crashed_name(path_stem: str, stamp: str, suffix: str) -> str:
    """Name of a file set aside after a crash (it can never be reopened for writing)."""
    return f"{path_stem}.crashed-{stamp}{suffix}"
