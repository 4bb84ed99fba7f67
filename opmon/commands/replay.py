"""`opmon replay ARCHIVE`: stream an archived run (or a raw, ID01 BLISS or XSOCS file) through the live chain again.

By default the replay feeds a live processor started here and prints the final d-spacing of
every map (and writes the maps with -o). With --external it only sends, to the configured
`frames_live` (and with --archive also `frames_archive`) endpoints, for services already running.
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opmon import interrupt
from opmon.config import load_config
from opmon.errors import OpmonError, StreamStalledError
from opmon.streaming.archive.safe_writes import atomic_path, check_outputs
from opmon.processing_options import EXIT_SKIPPED, parse_background, parse_roi
from opmon.source_options import add_source_arguments, source_options
from opmon.waiting import until

if TYPE_CHECKING:     # the modules themselves are imported when the replay runs, not for `opmon --help`
    from opmon.streaming.publisher import ZmqFrameSink
    from opmon.streaming.replay import ReplayReport, ReplaySource


def _main(args: argparse.Namespace) -> int:
    with interrupt.exit_promptly("replay"):
        return _replay(args)


def _replay(args: argparse.Namespace) -> int:
    if not args.verbose:  # the summary table says what happened; the processor's per-map log is noise here
        logging.getLogger("opmon.processors").setLevel(logging.WARNING)
    config = load_config(args.config)
    if args.rate is not None and not args.rate > 0:
        raise OpmonError(f"--rate must be > 0 frames per second, got {args.rate}")
    if args.workers is not None and args.workers < 1:
        raise OpmonError(f"--workers must be >= 1, got {args.workers}")
    from opmon.streaming.replay import open_source
    roi = parse_roi(args.roi)
    output = Path(args.output) if args.output else None
    if output is not None and args.external:
        raise OpmonError("-o/--output: an --external replay makes no maps here; drop one of them")
    with interrupt.interruptible():
        source = open_source(args.archive_path, roi if isinstance(roi, tuple) else None, args.source,
                             source_options(args))  # all checked before sending
        try:
            check_outputs([output], source.inputs, force=args.force)
            if args.external:
                return _external(args, config, source)
            return _internal(args, config, source, roi, output)
        finally:
            source.close()


def _external(args: argparse.Namespace, config: Any, source: ReplaySource) -> int:
    from opmon.streaming.publisher import ZmqFrameSink
    from opmon.streaming.replay import replay
    endpoints = [config.endpoint("frames_live")] + ([config.endpoint("frames_archive")] if args.archive else [])
    sink = ZmqFrameSink(endpoints, sndhwm=config.stream.sndhwm, stall_timeout_s=config.stream.stall_timeout_s)
    try:
        report = replay(source, sink, rate_fps=args.rate, skip_bad_frames=args.skip_bad_frames)
    finally:
        _close(sink)
    print(f"replayed {report.frames} frames in {report.maps} maps as run {report.run} ({report.seconds:.1f} s)")
    return _report_skipped(report, None)


def _internal(args: argparse.Namespace, config: Any, source: ReplaySource, roi: Any, output: Path | None) -> int:
    import h5py
    import numpy as np

    from opmon.processors.live import open_live_processor
    from opmon.processors.peak_fit import fit_arrays
    from opmon.streaming.archive.maps_file import write_fit, write_maps
    from opmon.streaming.publisher import ZmqFrameSink
    from opmon.streaming.replay import replay
    sink = ZmqFrameSink(["tcp://127.0.0.1:*"], sndhwm=config.stream.sndhwm, stall_timeout_s=config.stream.stall_timeout_s)
    display = config.endpoint("display_live") if args.display else None
    processor = open_live_processor(sink.endpoints[0], display, None, workers=args.workers or config.live.workers,
                                    publish_interval_s=config.live.publish_interval_s, roi=roi,
                                    threshold=config.live.threshold, background=parse_background(config.live.background),
                                    register=config.live.register, peak_fit=config.live.peak_fit,
                                    powder_spots=args.powder_spots or config.live.powder_spots)
    done = threading.Event()
    processor.outputs.keep_results = None     # a replay is bounded and writes every map at the end
    thread = threading.Thread(target=processor.serve, kwargs={"stop_when": done.is_set}, daemon=True)
    thread.start()
    try:
        report = replay(source, sink, rate_fps=args.rate, skip_bad_frames=args.skip_bad_frames)
        def maps_made() -> int:
            return len([s for s in processor.summaries if s["run"] == report.run])

        def over() -> bool:
            interrupt.check()
            return maps_made() >= report.maps or not thread.is_alive()

        if not until(over, 600) or maps_made() < report.maps:
            raise OpmonError(f"live processor made {len(processor.summaries)} of {report.maps} maps")
    finally:
        done.set()
        thread.join(0.1 if interrupt.requested() else 5)
        _close(sink)
    lost = processor.counters.lost
    print(f"replayed {report.frames} frames in {report.maps} maps ({report.seconds:.1f} s, "
          f"{report.frames / max(report.seconds, 1e-9):.0f} frames/s), frames lost {lost}")
    print(f"{'map':>4} {'frames':>7} {'lost':>5} {'mean d (Å)':>12}")
    for s in processor.summaries:
        print(f"{s['map']:>4} {s['frames']:>7} {s['frames_lost']:>5} {s['d_mean']:>12.5f}")
    if output is not None:
        entry_of = {m.map_number if m.map_number is not None else i: m.name for i, m in enumerate(source.maps)}
        roi_of = {(s["run"], s["map"]): s.get("roi") for s in processor.summaries}   # each map's own (it follows the peak)
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as f:
            for (run, number), result in sorted(processor.results.items(), key=lambda kv: kv[0][1]):
                entry = f.create_group(f"entry{number}")
                entry.attrs["NX_class"] = "NXentry"
                summary_roi = roi_of.get((run, number))
                maps = write_maps(entry, result.maps_arrays(), attrs={"run_uid": run, "replay_of": report.source_run or str(args.archive_path),
                                                        **({"roi": summary_roi} if summary_roi else {})})
                bad = report.bad_frames.get(entry_of.get(number, ""), [])
                maps.attrs["bad_frames_count"] = len(bad)
                maps.create_dataset("bad_frames", data=np.asarray(bad, dtype=np.int64))
                if result.fit is not None:
                    write_fit(maps, fit_arrays(result.fit, config.live.peak_fit))
        print(f"maps written to {output}")
    if lost:
        return 1
    return _report_skipped(report, output)


def _close(sink: ZmqFrameSink) -> None:
    """Close the sink; after Ctrl-C without waiting for receivers (queued frames are dropped, not awaited)."""
    import zmq
    if not interrupt.requested():
        sink.close()
        return
    for sock in sink.sockets:
        sock.setsockopt(zmq.SNDTIMEO, 0)
        sock.setsockopt(zmq.LINGER, 0)
    try:
        sink.close()
    except (StreamStalledError, zmq.ZMQError):
        pass


def _report_skipped(report: ReplayReport, output: Path | None) -> int:
    if not report.bad_frames:
        return 0
    listed = "; ".join(f"{name}: frames {', '.join(map(str, bad[:20]))}{' ...' if len(bad) > 20 else ''}"
                       for name, bad in report.bad_frames.items())
    where = f"; listed in {output} as <entry>/maps/bad_frames" if output else ""
    count = sum(map(len, report.bad_frames.values()))
    print(f"opmon replay: warning: skipped {count} unreadable (corrupt or unwritten) frame(s) ({listed}){where}",
          file=sys.stderr)
    return EXIT_SKIPPED


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("replay", help="stream an archived run through the live chain", description=__doc__)
    p.add_argument("archive_path", metavar="ARCHIVE", help="run directory, its run.h5, a raw SXDM, ID01 BLISS or XSOCS file")
    p.add_argument("--config", help="TOML configuration")
    p.add_argument("-o", "--output", help="write the replayed maps here (entryN/maps)")
    p.add_argument("--rate", type=float, help="frames per second (default: as fast as the chain takes them)")
    p.add_argument("--workers", type=int, help="live processor worker processes")
    p.add_argument("--roi", nargs="+", metavar="R", help="'auto', 'full' or r0 r1 c0 c1")
    p.add_argument("--powder-spots", choices=("auto", "off"),
                   help="replace each map's powder-arc spots, as `opmon process --powder-spots` (default: [live] powder_spots)")
    p.add_argument("--display", action="store_true", help="publish maps on the configured display_live port")
    p.add_argument("--external", action="store_true", help="only send, to already running services")
    p.add_argument("--archive", action="store_true", help="with --external: also send to the archiver")
    p.add_argument("--force", action="store_true", help="overwrite an existing -o file (never an input)")
    p.add_argument("--skip-bad-frames", action="store_true",
                   help="do not send corrupt frames; list them on stderr and in -o (exit status 3)")
    add_source_arguments(p)
    p.set_defaults(func=_main)
