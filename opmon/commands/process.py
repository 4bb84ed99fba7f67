"""`opmon process FILE -o MAPS`: reduce SXDM frames to d-spacing, tilt and width maps.

FILE is opmon's raw layout (a map, an archive's run.h5), an ID01 BLISS file (every SXDM scan,
one per eta, makes one map) or an XSOCS master file; the layout is sniffed (--source forces it).
"""
from __future__ import annotations

import argparse
import gc
from contextlib import AbstractContextManager, nullcontext
from typing import Any
import sys
from pathlib import Path
from types import SimpleNamespace

from opmon import interrupt
from opmon.errors import OpmonError
from opmon.streaming.archive.layout import DATA
from opmon.streaming.archive.safe_writes import check_outputs
from opmon.figure_paths import figure_paths
from opmon.processing_options import (EXIT_SKIPPED, add_peak_fit_argument, background_image, looks_like_file,
                                     parse_background, parse_roi)
from opmon.source_options import add_source_arguments, source_options


def png_paths(png: str | None, output: Path, names: list[str]) -> dict[str, Path]:
    """Where each entry's figure goes: `--png PATH`, or the maps file with .png (none without --png)."""
    if png is None:
        return {}
    return figure_paths(Path(png or output.with_suffix(".png")), names, needs="--png needs")


def progress_bar(total: int, quiet: bool) -> AbstractContextManager[Any]:
    """tqdm's bar of frames done, or for --quiet none at all: tqdm's import (with importlib.metadata's,
    for its version) is start-up a quiet run, as in scripts and benchmarks, need not pay."""
    if quiet:
        return nullcontext(SimpleNamespace(update=lambda frames: None))
    from tqdm import tqdm
    return tqdm(total=total, unit="frame", desc="process")


def run(args: argparse.Namespace) -> int:
    whole = getattr(args, "whole_process", False)   # `opmon process` is this process (cli.main): it exits when done
    with interrupt.exit_promptly("process"):
        try:
            return _run(args, freeze=whole)
        finally:
            if whole:
                gc.freeze()   # what numba's cache loads added since start-up: exit skips them too (start_up_imports)


def start_up_imports(freeze: bool = False) -> None:
    """Import numpy, numba, h5py and the processors; with `freeze`, with the cyclic garbage collector
    off, then freeze what they made. Imports make ~75,000 long-lived objects and no garbage, yet the
    collector walks them all (a full collection during numba's import, more at the interpreter's
    exit): ~0.1 s in the run and ~0.25 s at exit, a third of a 17,000-frame map's command. Frozen,
    every collection skips them (`gc.freeze`, made for this); objects made later are collected as
    usual. Only for a process that ends with the command: frozen objects are never collected and
    `gc.get_referrers` no longer sees them, which a caller in the same process may not expect."""
    if freeze:
        gc.disable()
    try:
        import numpy  # noqa: F401  (numba and h5py come in with the processors: when a file is processed, not for `--help`)

        from opmon.numba_start import import_numba_without_blas, load_cached_kernels_without_refresh
        if not load_cached_kernels_without_refresh():  # cached kernels need neither numba's compiler registries nor BLAS
            import_numba_without_blas()  # before any kernel loads: opmon's kernels need no BLAS
        import opmon.processors.offline  # noqa: F401
    finally:
        if freeze:
            gc.freeze()
            gc.enable()


def _run(args: argparse.Namespace, freeze: bool = False) -> int:
    start_up_imports(freeze)
    import numpy as np

    from opmon.processors.eta_scans import parse_registration
    from opmon.processors.offline import ProcessOptions, plan_raw, process_plan
    from opmon.processors.peak_fit import parse_peak_fit
    background = parse_background(args.background)
    options = ProcessOptions(roi=parse_roi(args.roi), threshold=args.threshold,
                             background=background_image(background) if isinstance(background, str) and looks_like_file(background) else background,
                             despeckle=args.despeckle, skip_bad_frames=args.skip_bad_frames,
                             find_bad_pixels=not args.file_mask_only, monitor=not args.no_monitor,
                             low_counts=args.low_counts, background_source=args.background,
                              register=parse_registration(args.register), peak_fit=parse_peak_fit(args.peak_fit),
                              powder_spots=args.powder_spots)
    if args.low_counts < 0:
        raise OpmonError(f"--low-counts must be >= 0, got {args.low_counts}")
    if args.threshold < 0:
        raise OpmonError(f"--threshold must be >= 0, got {args.threshold}")
    if args.task_frames is not None and args.task_frames < 1:
        raise OpmonError(f"--task-frames must be >= 1, got {args.task_frames}")
    files, output = [Path(r) for r in args.raw], Path(args.output)
    raw = files[0] if len(files) == 1 else files  # several files: the parts of one ID01 BLISS dataset
    with interrupt.interruptible():
        plan = plan_raw(raw, options, args.entry, args.source, source_options(args))  # all checked before any frame is read
        try:
            pngs = png_paths(args.png, output, plan.entries)
            check_outputs([output, *pngs.values()], plan.inputs, force=args.force)
            with progress_bar(plan.total_frames, args.quiet) as bar:
                if args.dask is None:
                    done = process_plan(plan, output, options, progress=bar.update)
                else:
                    from opmon.processors.distributed import connect, process_plan_dask
                    with connect(args.dask) as client:
                        done = process_plan_dask(plan, output, options, client, progress=bar.update,
                                                 task_frames=args.task_frames, paths=files,
                                                 source_options=source_options(args))
        finally:
            plan.close()
        for name, entry in done.items():
            d = entry.result.valid_d()
            print(f"{name}: {d.size} valid pixels, mean d = {d.mean():.5f} Å, std {d.std():.2e} Å, "
                  f"background {entry.result.background:.2e} counts/pixel/frame (measured outside the ROI)")
            print(f"{name}: flagged {flag_summary(entry.result.flags, entry.result.mask)} (maps/flags)")
            shifts = entry.result.eta_shifts
            if shifts is not None:
                print(f"{name}: {len(shifts)} eta scans registered ({options.attrs(entry.roi)['register']}), largest drift "
                      f"{float(np.hypot(*shifts.T).max()):.2f} map pixels (listed in {output} as <entry>/maps/eta_shifts)")
            if entry.result.fit is not None:
                print(f"{name}: peak fit ({options.peak_fit}): {fit_summary(entry.result)} (<entry>/maps/fit)")
            if len(entry.found_bad_pixels):
                print(f"{name}: masked {len(entry.found_bad_pixels)} hot/dead detector pixel(s) missing from the file's "
                      f"mask (listed in {output} as <entry>/maps/found_bad_pixels)")
            if entry.powder_spots:
                print(f"{name}: replaced {entry.powder_spots} powder-arc spot piece(s) (per eta scan) by the level "
                      "around them (--powder-spots off keeps them)")
            if entry.powder_spots_note:
                print(f"{name}: no spot replaced, {entry.powder_spots_note} (maps@powder_spots_note)")
        print(f"maps written to {output}")
        if pngs:
            import h5py

            from opmon.processors.figure import plot_maps
            from opmon.processors.figure_context import map_context
            for name, png in pngs.items():
                interrupt.check()
                label = f"{plan.path.name}:{name}"
                with h5py.File(output, "r") as maps_file:
                    if plan.kind == "raw":         # opmon's raw layout: its trigger and frame times for the title
                        with h5py.File(plan.path, "r", swmr=True) as raw_file:
                            context = map_context(maps_file[name], label, raw=raw_file[name])
                    else:
                        context = map_context(maps_file[name], label)
                plot_maps(done[name].result, png, context)
                print(f"figure written to {png}")
    skipped = {name: entry.bad_frames for name, entry in done.items() if entry.bad_frames}
    if skipped:
        listed = "; ".join(f"{name}: frames {', '.join(map(str, bad[:20]))}{' ...' if len(bad) > 20 else ''}"
                           for name, bad in skipped.items())
        count = sum(map(len, skipped.values()))
        print(f"opmon process: warning: skipped {count} unreadable (corrupt or unwritten) frame(s) of {files[0]} "
              f"({listed}); listed in {output} as <entry>/maps/bad_frames", file=sys.stderr)
        return EXIT_SKIPPED
    return 0


def flag_summary(flags: Any, mask: Any) -> str:
    """How many valid pixels carry each caution flag, in words."""
    from opmon.processors.maps import FLAG_EDGE, FLAG_LOW_COUNTS, FLAG_ROCKING
    valid = mask.astype(bool)
    names = ((FLAG_LOW_COUNTS, "low counts"), (FLAG_ROCKING, "peak cut by the rocking range"),
             (FLAG_EDGE, "peak cut by the ROI or detector edge"))
    return ", ".join(f"{int(((flags & bit) > 0)[valid].sum())} valid pixel(s) {what}" for bit, what in names)


def fit_summary(result: Any) -> str:
    """How many valid pixels the peak fit kept, and its mean d beside the centre of mass's, in words."""
    import numpy as np
    valid = result.mask.astype(bool)
    fitted = valid & result.fit.fitted
    if not fitted.any():
        return f"no valid pixel fitted (of {int(valid.sum())})"
    return (f"{int(fitted.sum())} of {int(valid.sum())} valid pixels fitted, mean d = "
            f"{float(np.mean(result.fit.d_spacing[fitted])):.5f} Å (centre of mass on them "
            f"{float(np.mean(result.d_spacing[fitted])):.5f} Å), median reduced chi2 "
            f"{float(np.median(result.fit.reduced_chi2[fitted])):.2f}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("process", help="reduce a raw SXDM file to maps (FORMATS.md)", description=__doc__)
    p.add_argument("raw", metavar="FILE", nargs="+",
                   help="raw HDF5 file (one map, or an archive of entries), XSOCS master, or ID01 BLISS file(s)")
    p.add_argument("-o", "--output", required=True, help="maps HDF5 file to write")
    p.add_argument("--entry", default=None, help="raw layout: entry to process (default: every entry holding frames)")
    add_source_arguments(p)
    p.add_argument("--roi", nargs="+", default=None, metavar="R", help="detector ROI: auto (default), full, or r0 r1 c0 c1")
    p.add_argument("--threshold", type=int, default=0, help="ignore pixel counts below this value (default 0)")
    p.add_argument("--background", default="auto", metavar="RULE",
                   help="auto (default: a plane fitted to the counts outside the ROI, subtracted per pixel), flat "
                        "(one rate from them), none, a rate in counts/pixel/frame, or an image file of counts/pixel/frame "
                        "(a measured dark/flat: FILE.npy, FILE.h5[:/dataset])")
    speckle = p.add_mutually_exclusive_group()
    speckle.add_argument("--despeckle", action="store_true",
                         help="drop lone single counts before summing (default: keep them; it removes a share of broad "
                              "peaks' photons and shifts them, while the background image is subtracted in expectation)")
    speckle.add_argument("--keep-isolated", action="store_true", help="keep lone single counts (the default)")
    p.add_argument("--no-monitor", action="store_true",
                   help="do not divide frames by the source's incident-beam monitor (default: divide when it has one)")
    p.add_argument("--low-counts", type=float, default=100.0, metavar="COUNTS",
                   help="flag map pixels whose Σ I is below this many counts (default 100; maps/flags bit 2)")
    p.add_argument("--powder-spots", choices=("auto", "off"), default="auto",
                   help="auto (default): find compact spots of other grains' powder arcs per map (per eta scan, in sampled "
                        "frames) and replace their pixels in every frame by the level around them (frames of many compact "
                        "Bragg spots and no broad peak are judged not powder and kept, with a note); off: keep them")
    p.add_argument("--file-mask-only", action="store_true",
                   help="use only the file's detector mask (default: also mask hot/dead pixels found in sampled frames)")
    p.add_argument("--register", default="tilt", metavar="tilt|auto|off|FILE.toml",
                   help="sample drift between eta scans: tilt (default; see below), off, auto (found by cross-correlating the scans' "
                        "intensity maps; biased when the part of the particle in Bragg condition moves with eta, "
                        "docs: processors/registration.py), tilt (found from each scan's map of the lattice tilt "
                        "that rocking does not move: for strained or bent particles; declined, with a warning and the scans added as they "
                        "are, when the scans do not fit each other clearly better moved), or a TOML file of shifts = [[dy, dx], ...] in map pixels, "
                        "one per eta scan in increasing eta (as XSOCS lets you edit them); the shifts used go to "
                        "<entry>/maps/eta_shifts")
    add_peak_fit_argument(p)
    p.add_argument("--png", nargs="?", const="", default=None, help="also write the summary figure (default: MAPS with .png)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files (never an input)")
    p.add_argument("--skip-bad-frames", action="store_true",
                   help="process around corrupt frames, list them in the output and on stderr (exit status 3)")
    p.add_argument("--dask", default=None, metavar="CLUSTER",
                   help="reduce on a Dask cluster: local:N (N worker processes here), a scheduler address "
                        "(tcp://host:8786) or a scheduler file; same maps as one process (docs/dask.md)")
    p.add_argument("--task-frames", type=int, default=None, metavar="N",
                   help="with --dask: frames per task, rounded up to whole HDF5 chunks (default 2048)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
