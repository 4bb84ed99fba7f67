"""`opmon bench STAGE`: speed of a data-path stage beside a baseline measured in the same run."""
from __future__ import annotations

import argparse
import importlib

STAGES = {
    "acquisition": "opmon.acquisition.benchmark",
    "process": "opmon.processors.benchmark",
    "stream": "opmon.processors.live_benchmark",
    "dashboard": "opmon.dashboard.benchmark",
}


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(STAGES[args.stage])
    return int(module.main(args.rest) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark a data-path stage (prints figures and ratios)", description=__doc__)
    p.add_argument("stage", choices=sorted(STAGES), help="which stage to measure")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that stage's benchmark (see --help after STAGE)")
    p.set_defaults(func=run)
