"""Truth harness: how far today's `opmon process` is from the truth on realistic maps.

Simulates one map per case (the compact simulator as the baseline, every effect of
`opmon.simulators.effects` alone, then all of them together), runs `opmon process` on it
with its defaults, and prints per case, over the pixels both masks keep:

* median |d − d_true| and its 99th percentile (Å), the share within 2.5e-4 Å;
* median |tilt altitude − truth| (deg);
* mask agreement: |processed ∩ true| / |processed ∪ true| of the two valid-pixel masks.

The issue's targets (issue 13): median ≤ 5e-5 Å, 99 % within 2.5e-4 Å, tilt ≤ 0.005°,
mask ≥ 95 %. A measurement, not a test: it asserts nothing.

    opmon bench truth [--size 24] [--x-mean 0.8] [--cases none,all,drift] [--keep DIR]
                      [--compare "--background flat --despeckle --no-monitor"]

``--compare ARGS`` processes every case a second time with those `opmon process` options
(e.g. the rules before the background image) and prints both rows, measured in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from opmon.simulators.effects import NAMES

ROI = (96, 416, 160, 352)  # the rendered detector window of the accuracy tests
TARGETS = {"median": 5e-5, "within": 0.99, "tilt": 0.005, "mask": 0.95}


def score(raw: Path, maps: Path) -> dict[str, float]:
    """Errors of the maps file against the raw file's truth (see the module docstring)."""
    with h5py.File(raw, "r") as f, h5py.File(maps, "r") as g:
        t = {k: f["entry/truth"][k][()] for k in ("d_spacing", "tilt_altitude", "mask")}
        m = {k: g["entry/maps"][k][()] for k in ("d_spacing", "tilt_altitude", "mask")}
    true_mask, proc_mask = t["mask"] > 0, m["mask"] > 0
    both = true_mask & proc_mask
    union = (true_mask | proc_mask).sum()
    d_err = np.abs(m["d_spacing"] - t["d_spacing"])[both]
    alt_err = np.abs(m["tilt_altitude"] - t["tilt_altitude"])[both]
    ok = d_err.size > 0
    return {"median": float(np.median(d_err)) if ok else float("nan"),
            "p99": float(np.percentile(d_err, 99)) if ok else float("nan"),
            "within": float(np.mean(d_err <= 2.5e-4)) if ok else 0.0,
            "tilt": float(np.median(alt_err)) if ok else float("nan"),
            "mask": float(both.sum() / union) if union else 1.0,
            "pixels": int(both.sum())}


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Silence a logger's warnings (the simulator's truncation warning is part of the case)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def run_case(workdir: Path, name: str, effects: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Simulate one map with ``effects`` and process it with `opmon process` (in this process)."""
    from opmon.cli import main as opmon

    raw, maps = workdir / f"{name}.h5", workdir / f"{name}_maps.h5"
    t0 = time.perf_counter()
    argv = ["simulate", "-o", str(raw), "--ny", str(args.size), "--nx", str(args.size), "--roi", *map(str, ROI),
            "--x-mean", str(args.x_mean), "--seed", str(args.seed), "--mode", args.mode, "--effects", effects,
            "-q", "--force"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet("opmon"):
        if opmon(argv) != 0:
            raise SystemExit(f"opmon bench truth: simulating {name} failed")
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet("opmon"):
        rc = opmon(["process", str(raw), "-o", str(maps), "-q", "--force"])
    if rc not in (0, 3):
        raise SystemExit(f"opmon bench truth: opmon process failed on {name} (exit {rc})")
    row = {"case": name, **score(raw, maps), "sim_s": t_sim, "process_s": time.perf_counter() - t0}
    if not args.compare:
        return [row]
    other = workdir / f"{name}_compare_maps.h5"
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), quiet("opmon"):
        rc = opmon(["process", str(raw), "-o", str(other), "-q", "--force", *args.compare.split()])
    if rc not in (0, 3):
        raise SystemExit(f"opmon bench truth: opmon process {args.compare} failed on {name} (exit {rc})")
    return [row, {"case": "  (compare)", **score(raw, other), "sim_s": 0.0, "process_s": time.perf_counter() - t0}]


def fmt(row: dict[str, Any]) -> str:
    flag = lambda ok: " " if ok else "*"  # noqa: E731
    return (f"{row['case']:<14} {row['median']:>9.2e}{flag(row['median'] <= TARGETS['median'])} "
            f"{row['p99']:>9.2e} {100 * row['within']:>6.1f}%{flag(row['within'] >= TARGETS['within'])} "
            f"{row['tilt']:>8.4f}{flag(row['tilt'] <= TARGETS['tilt'])} "
            f"{100 * row['mask']:>6.1f}%{flag(row['mask'] >= TARGETS['mask'])} {row['pixels']:>6d} "
            f"{row['sim_s']:>6.1f} {row['process_s']:>6.1f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="opmon bench truth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=24, help="map side in pixels (default 24)")
    ap.add_argument("--x-mean", type=float, default=0.8, help="state of charge (default 0.8: first plateau)")
    ap.add_argument("--mode", default="paper", help="crystal mode (default paper)")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--cases", default="", help="comma list among none, all and the effect names (default: every one)")
    ap.add_argument("--keep", default=None, help="write the maps here and keep them (default: a temporary folder)")
    ap.add_argument("--compare", default="", metavar="ARGS",
                    help="also process each case with these `opmon process` options, e.g. \"--background flat --despeckle\"")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c] or ["none", *NAMES, "all"]
    unknown = sorted(set(cases) - {"none", "all", *NAMES})
    if unknown:
        print(f"opmon bench truth: unknown case(s) {', '.join(unknown)}; use none, all, {', '.join(NAMES)}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="opmon-truth-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"maps {args.size}x{args.size}, mode {args.mode}, x = {args.x_mean}, seed {args.seed}, ROI {ROI}; "
              f"* = misses the issue-13 target")
        print(f"{'case':<14} {'med|dd| A':>10} {'p99 A':>9} {'<=2.5e-4':>8} {'tilt deg':>9} {'mask':>7} "
              f"{'pixels':>6} {'sim s':>6} {'proc s':>6}")
        for case in cases:
            for row in run_case(workdir, "compact" if case == "none" else case, case, args):
                print(fmt(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
