"""`opmon process RAW -o MAPS`: reduce raw SXDM frames to d-spacing, tilt and width maps."""
from __future__ import annotations

import argparse
from pathlib import Path

import h5py
from tqdm import tqdm

from opmon.errors import OpmonError
from opmon.formats import DATA
from opmon.processors.offline import ProcessOptions, count_frames, find_entries, process_file


def parse_roi(values: list[str] | None) -> tuple[int, int, int, int] | str | None:
    """`auto`, `full` or four integers r0 r1 c0 c1 (half-open, frame pixels)."""
    if not values or values == ["auto"]:
        return "auto"
    if values == ["full"]:
        return None
    if len(values) != 4:
        raise OpmonError(f"--roi takes 'auto', 'full' or four integers r0 r1 c0 c1, got {' '.join(values)!r}")
    try:
        r0, r1, c0, c1 = (int(v) for v in values)
    except ValueError as exc:
        raise OpmonError(f"--roi values must be integers, got {' '.join(values)!r}") from exc
    return (r0, r1, c0, c1)


def parse_background(value: str) -> str | float | None:
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    try:
        rate = float(value)
    except ValueError as exc:
        raise OpmonError(f"--background takes 'auto', 'none' or a rate in counts/pixel/frame, got {value!r}") from exc
    if rate < 0:
        raise OpmonError(f"--background rate must be >= 0, got {rate}")
    return rate


def run(args: argparse.Namespace) -> int:
    options = ProcessOptions(roi=parse_roi(args.roi), threshold=args.threshold, background=parse_background(args.background),
                             despeckle=not args.keep_isolated)
    raw = Path(args.raw)
    total = None
    if raw.exists():
        try:
            with h5py.File(raw, "r", swmr=True) as f:
                total = count_frames(f, find_entries(f, args.entry))
        except (OSError, OpmonError):
            total = None  # process_file reports the problem precisely
    with tqdm(total=total, unit="frame", disable=args.quiet, desc="process") as bar:
        results = process_file(raw, args.output, options, entry=args.entry, progress=bar.update)
    for name, result in results.items():
        d = result.valid_d()
        print(f"{name}: {d.size} valid pixels, mean d = {d.mean():.5f} Å, std {d.std():.2e} Å, "
              f"background {result.background:.2e} counts/pixel/frame")
    print(f"maps written to {args.output}")
    if args.png is not None:
        from opmon.processors.figure import plot_maps
        for name, result in results.items():
            png = Path(args.png or Path(args.output).with_suffix(".png"))
            if len(results) > 1:
                png = png.with_name(f"{png.stem}_{name}{png.suffix}")
            plot_maps(result, png, title=f"{raw.name}:{name}")
            print(f"figure written to {png}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("process", help="reduce a raw SXDM file to maps (FORMATS.md)", description=__doc__)
    p.add_argument("raw", help=f"raw HDF5 file with {DATA} (one map, or an archive of entries)")
    p.add_argument("-o", "--output", required=True, help="maps HDF5 file to write")
    p.add_argument("--entry", default=None, help="entry to process (default: every entry holding frames)")
    p.add_argument("--roi", nargs="+", default=None, metavar="R", help="detector ROI: auto (default), full, or r0 r1 c0 c1")
    p.add_argument("--threshold", type=int, default=0, help="ignore pixel counts below this value (default 0)")
    p.add_argument("--background", default="auto", help="auto (from counts outside the ROI), none, or a rate")
    p.add_argument("--keep-isolated", action="store_true",
                   help="keep lone single counts (default: drop them, they are the diffuse background)")
    p.add_argument("--png", nargs="?", const="", default=None, help="also write the summary figure (default: MAPS with .png)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
