"""Live processing: one engine (run tracking, ROI decision, map outputs) and two executors
(inline in one process, fan-out over worker processes) of the same accumulator."""
# TEMPORARY while issue 12's "live" refactor moves processors/live.py into this package: this
# package shadows that module, so load it under a private name and re-export its public names.
import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

_NAME = "opmon.processors._live_module"
if _NAME not in _sys.modules:
    _spec = _util.spec_from_file_location(_NAME, _Path(__file__).resolve().parent.parent / "live.py")
    assert _spec is not None and _spec.loader is not None
    _module = _util.module_from_spec(_spec)
    _sys.modules[_NAME] = _module
    _spec.loader.exec_module(_module)
from opmon.processors._live_module import *  # noqa: E402,F403
from opmon.processors._live_module import LiveProcessor, open_live_processor  # noqa: E402,F401
