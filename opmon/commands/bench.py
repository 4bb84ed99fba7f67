"""`opmon bench STAGE`: speed of a data-path stage beside a baseline measured in the same run."""
from __future__ import annotations

import argparse
import importlib
from types import ModuleType

#: stage -> module of `opmon.benchmarks` whose `main(argv) -> int` measures it
STAGES = {
    "acquisition": "bench_acquisition",
    "archive": "bench_archive",
    "dask": "bench_dask",
    "dectris": "bench_dectris",
    "dashboard": "bench_dashboard",
    "process": "bench_process",
    "peak-fit": "bench_peak_fit",
    "reliability": "reliability",
    "render": "bench_render",
    "sources": "bench_sources",
    "stream": "bench_stream",
    "truth": "bench_truth",
}


def load(stage: str) -> ModuleType:
    """The benchmark module of `stage`, imported only when asked for (benchmarks pull in numba,
    h5py and bluesky, which `opmon --help` must not pay for)."""
    return importlib.import_module(f"opmon.benchmarks.{STAGES[stage]}")


def run(args: argparse.Namespace) -> int:
    return int(load(args.stage).main(args.rest) or 0)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmark a data-path stage (prints figures and ratios)", description=__doc__)
    p.add_argument("stage", choices=sorted(STAGES), help="which stage to measure")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that stage's benchmark (see --help after STAGE)")
    p.set_defaults(func=run)
