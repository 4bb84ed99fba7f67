"""`opmon bench STAGE`: speed of a data-path stage beside a baseline measured in the same run."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

import opmon
from opmon.errors import ConfigError

STAGES = {
    "acquisition": "opmon.acquisition.benchmark",
    "archive": "opmon.streaming.archive_benchmark",
    "process": "opmon.processors.benchmark",
    "stream": "opmon.processors.live_benchmark",
    # harnesses that span several packages (browser, simulator) live in the repository's benchmarks/
    "dashboard": "benchmarks/bench_dashboard.py",
    "render": "benchmarks/bench_render.py",
    "reliability": "benchmarks/reliability.py",
}


def load(stage: str) -> ModuleType:
    target = STAGES[stage]
    if not target.endswith(".py"):
        return importlib.import_module(target)
    path = Path(opmon.__file__).resolve().parents[1] / target
    if not path.exists():
        raise ConfigError(f"opmon bench {stage}: {path} not found (this benchmark runs from a source checkout)")
    spec = importlib.util.spec_from_file_location(f"opmon_bench_{stage}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> int:
    return int(load(args.stage).main(args.rest) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark a data-path stage (prints figures and ratios)", description=__doc__)
    p.add_argument("stage", choices=sorted(STAGES), help="which stage to measure")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that stage's benchmark (see --help after STAGE)")
    p.set_defaults(func=run)
