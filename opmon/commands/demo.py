"""`opmon demo`: run the simulated operando experiment end to end (acquisition, live maps,
archive, dashboard) on 127.0.0.1 and print a summary read back from the archive.

Ctrl-C pauses the run safely; a second Ctrl-C (or SIGTERM) aborts it, archives the frames in
flight, stops every service and prints the summary (non-zero exit). After the run, the
dashboard stays up until Ctrl-C."""
from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from opmon.demo import configure, plan_from_args, run_demo
    summary = run_demo(configure(args), plan_from_args(args), headless=args.headless, workers=args.workers,
                       dashboard_port=args.dashboard_port, open_browser=not args.no_browser,
                       ports_explicit=args.port_base != "auto" and (bool(args.config) or args.port_base != 0))
    print(summary.text())
    # every map complete AND made into final maps: a live processor that died (e.g. a missing
    # runtime dependency in a kernel) must fail the demo, not print "no maps yet" and exit 0
    ok = (summary.exit_status == "success" and summary.frames_lost == 0 and bool(summary.maps)
          and all(m.complete and m.d_mean is not None for m in summary.maps))
    return 0 if ok else 1


def port_base(text: str) -> int | str:
    """--port-base: a number, or 'auto'."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a port number nor 'auto'") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulated operando experiment, end to end", description=__doc__)
    p.add_argument("--headless", action="store_true", help="no dashboard; exit with a summary when the charge ends")
    p.add_argument("--config", help="TOML configuration (ports, paths); defaults: opmon/default_config.toml")
    p.add_argument("--archive-dir", help="where the run is archived (overrides [archive] dir)")
    p.add_argument("--port-base", type=port_base, default=0,
                   help="shift all ports to start here; 'auto': a free set from opmon's port picker "
                        "(default: the config's ports, moved up if taken)")
    p.add_argument("--maps-at", type=float, nargs="+", metavar="V", help="voltage thresholds that start maps")
    p.add_argument("--period", type=float, default=None, help="also map every PERIOD simulated seconds")
    p.add_argument("--plateau", action="store_true", help="also map when a plateau begins")
    p.add_argument("--map-shape", type=int, nargs=2, default=(12, 12), metavar=("NY", "NX"))
    p.add_argument("--angles", type=int, default=30, help="rocking angles per map")
    p.add_argument("--acceleration", type=float, default=900.0, help="simulated seconds per wall second")
    p.add_argument("--order", choices=("point-outer", "eta-outer"), default=None,
                   help="all angles per map point (maps fill in live) or one eta at a time over the map (ID01); "
                        "default point-outer, eta-outer with --fly")
    p.add_argument("--fly", action="store_true",
                   help="fly scans: each map row flown by the piezo, which triggers the detector (eta-outer order)")
    p.add_argument("--point-time", type=float, default=0.0005, metavar="S",
                   help="fly scan: detector exposure per point in seconds (default 0.0005)")
    p.add_argument("--max-maps", type=int, default=None)
    p.add_argument("--on-onset", default="none", metavar="ACTION",
                   help="when the live processor flags the onset of a transformation: map-now (a map at once), "
                        "shorter-period:S (periodic maps every S simulated s for 3 periods, then the rule before), "
                        "finer-map (next maps at half the step over the particle's bounding box, once per run) "
                        "or none (default); recorded with its reason in the run's steering stream; 30 s cooldown")
    p.add_argument("--phase-tracking", choices=("off", "auto", "propose"), default="off",
                   help="follow the imaged phase: when its reflection fades, survey for the next phase's "
                        "reflection and re-centre eta/delta on it (auto), or propose it for one click in the "
                        "dashboard (propose); every step is in the run's steering stream")
    p.add_argument("--dose-limit", type=float, default=None, metavar="PHOTONS",
                   help="pause the run when one sample position has taken this many photons over all maps "
                        "(each frame: exposure x flux, 1e9 ph/s x 10 ms = 1e7 photons; resume from the dashboard)")
    p.add_argument("--dose-action", choices=("pause", "stop", "move"), default="pause",
                   help="at the dose limit: pause (default), stop (finish the series cleanly after the current map) "
                        "or move (shift the scan region away from the over-dosed positions; pause if the grid "
                        "leaves no room)")
    p.add_argument("--map-step-um", type=float, default=0.1, metavar="UM", help="map grid step in µm (default 0.1)")
    p.add_argument("--stage-drift-um", type=float, default=0.0, metavar="UM",
                   help="simulated sample stage drift: the particle creeps by up to UM µm between maps (default 0)")
    p.add_argument("--recentre", choices=("off", "auto"), default="off",
                   help="auto: after each map, register its intensity map onto the previous one and shift the "
                        "scan region to keep the particle where it was in the first map (recorded with its "
                        "reason in the run's steering stream; a user's shift_region holds until cleared)")
    p.add_argument("--recentre-max-step-um", type=float, default=2.0, metavar="UM",
                   help="largest move of the scan region per map when re-centring (default 2 µm)")
    p.add_argument("--workers", type=int, default=1, help="live processor worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dashboard-port", type=int, default=None,
                   help="HTTP port of the dashboard (default: 5006, or the next free one; 0: any free port)")
    p.add_argument("--no-browser", action="store_true", help="do not open a web browser")
    p.set_defaults(func=run)
