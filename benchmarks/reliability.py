"""Reliability figures of opmon (issue 11, item 6): kills, fuzzing, tokens, disk full, soak.

    python benchmarks/reliability.py [SCENARIO ...] [options]      (or: opmon bench reliability ...)

Scenarios (all by default except `soak`, which takes as long as asked):
  kill-live, kill-archiver, kill-acquisition
        kill -9 that process `--kills` times at random moments during a `--rate` frames/s stream
        through the deployed `opmon archive` + `opmon live`: frames lost on the archive path,
        maps with final maps, time to recover; for the acquisition, how each run is archived.
  fuzz  `--messages` fuzzed messages on each socket (frames to the archiver and the live
        processor, the archiver's documents and maps channels, display messages to the
        dashboard's subscriber, control requests): the services' own rejection counters, crashes.
  tokens  `--messages` wrong or missing tokens on the control channel; the comparison's time
        for an early and a late difference.
  disk  a small filesystem (tmpfs when root may mount, else a reserve above the free space)
        filled while archiving: the archiver's status, the pause, frames on disk against sent.
  soak  benchmarks/soak_stream.py for `--minutes` (memory at start and end, frames lost).

Prints figures, not pass/fail. Sized for 2 cores: one scenario at a time.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


SCENARIOS = ("kill-live", "kill-archiver", "kill-acquisition", "fuzz", "tokens", "disk", "soak")
DEFAULT = ("kill-live", "kill-archiver", "kill-acquisition", "fuzz", "tokens", "disk")


def _print(title: str, figures: dict[str, Any]) -> None:
    print(f"== {title}", flush=True)
    for key, value in figures.items():
        if isinstance(value, float):
            value = f"{value:.3g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        print(f"   {key}: {value}", flush=True)


def fuzz_all(n: int, seed: int) -> list[dict[str, Any]]:
    from opmon.benchmarks import reliability_fuzz as F
    out = [F.fuzz_frames("archiver", n, seed), F.fuzz_frames("live", n, seed),
           F.fuzz_archiver_channel("docs", n, seed), F.fuzz_archiver_channel("maps", n, seed),
           F.fuzz_display(n, seed), F.fuzz_control(n, seed)]
    for report in out:
        _print(f"fuzz: {report['socket']}", {k: v for k, v in report.items() if k != "socket"})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="opmon bench reliability", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all but soak)")
    parser.add_argument("--kills", type=int, default=20, help="kills per victim (default 20)")
    parser.add_argument("--rate", type=float, default=1000.0, help="frames/s of the stream (default 1000)")
    parser.add_argument("--map-frames", type=int, default=2000, help="frames per map in the kill runs (default 2000)")
    parser.add_argument("--messages", type=int, default=10_000, help="fuzzed messages per socket, wrong tokens (10,000)")
    parser.add_argument("--minutes", type=float, default=60.0, help="soak duration (default 60)")
    parser.add_argument("--port-base", type=int, default=25200, help="ports of the deployed services (default 25200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the kill runs' archives and service logs")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        print(f"opmon bench reliability: unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    logging.getLogger().setLevel(logging.ERROR)     # the services log every rejection; figures and errors only
    results: dict[str, Any] = {}
    for scenario in args.scenarios or DEFAULT:
        if scenario.startswith("kill-"):
            from opmon.benchmarks import reliability_kill as K
            victim = scenario.split("-", 1)[1]
            report = K.run_kills(victim, kills=args.kills, rate=args.rate, map_frames=args.map_frames,
                                 port_base=args.port_base, seed=args.seed, keep=args.keep)
            _print(f"kill -9 {victim} x {args.kills}", {k: v for k, v in report.items() if k != "runs"})
            for run in report["runs"]:
                print(f"   run {run['run']}: {json.dumps({k: v for k, v in run.items() if k != 'run'})}", flush=True)
        elif scenario == "fuzz":
            report = fuzz_all(args.messages, args.seed)
        elif scenario == "tokens":
            from opmon.benchmarks import reliability_fuzz as F
            report = F.wrong_tokens(args.messages, args.seed)
            _print("wrong tokens", report)
        elif scenario == "disk":
            from opmon.benchmarks import reliability_disk as D
            where = Path(tempfile.mkdtemp(prefix="opmon-diskfull-"))
            report = D.run_disk_full(where / "archive", rate_hz=args.rate, max_frames=20_000, seed=args.seed)
            shutil.rmtree(where, ignore_errors=True)
            _print("disk full", report)
        else:
            from opmon.benchmarks import soak_stream
            code = soak_stream.main(["--minutes", str(args.minutes), "--rate", str(args.rate),
                                     "--port-base", str(args.port_base + 100)])
            report = {"exit": code}
        results[scenario] = report
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
