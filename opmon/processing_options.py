"""The command-line spellings of the processing options that `opmon process`, `opmon live` and
`opmon replay` share, parsed in one place so the three commands accept the same words.

(Not in `opmon/commands/`: every module there is a subcommand.)
"""
from __future__ import annotations

import argparse
from typing import Any

from opmon.errors import OpmonError

#: Exit status of `process` and `replay` when maps were written but corrupt frames were skipped:
#: a script must notice.
EXIT_SKIPPED = 3


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


#: datasets a background image file is searched for, in order (or name one: FILE.h5:/path)
BACKGROUND_DATASETS = ("background", "entry/background/data", "data")


def parse_background(value: str) -> str | float | None:
    """`auto` (a plane fitted to the counts outside the ROI), `flat` (one rate from them), `none`,
    a fixed rate in counts/pixel/frame (>= 0), or a background image file (see `background_image`)."""
    if value in ("auto", "flat"):
        return value
    if value == "none":
        return None
    try:
        rate = float(value)
    except ValueError:
        if looks_like_file(value):
            return value
        raise OpmonError(f"--background takes 'auto', 'flat', 'none', a rate in counts/pixel/frame or an image file "
                         f"(.h5/.npy), got {value!r}") from None
    if rate < 0:
        raise OpmonError(f"--background rate must be >= 0, got {rate}")
    return rate


IMAGE_SUFFIXES = (".h5", ".hdf5", ".nxs", ".npy")


def split_dataset(value: str) -> tuple[str, str]:
    """FILE.h5:/path -> (FILE.h5, path); anything else -> (value, "")."""
    head, sep, tail = value.rpartition(":")
    if sep and head.endswith(IMAGE_SUFFIXES[:3]):
        return head, tail.lstrip("/")
    return value, ""


def looks_like_file(value: str) -> bool:
    """True when a --background value names an image file (FILE.h5[:/dataset], FILE.npy)."""
    return split_dataset(value)[0].endswith(IMAGE_SUFFIXES)


def background_image(value: str, frame_shape: tuple[int, int] | None = None) -> Any:
    """The (rows, cols) float64 image of a --background file, counts per pixel per frame (a measured
    dark/flat): a .npy array, or an HDF5 dataset (FILE.h5:/path, else the first of BACKGROUND_DATASETS).

    Raises
    ------
    OpmonError
        one line naming the file and what is wrong (missing, not 2-D, negative, wrong shape).
    """
    import numpy as np
    path, inner = split_dataset(value)
    try:
        if path.endswith(".npy"):
            image = np.load(path, allow_pickle=False)
        else:
            import h5py
            with h5py.File(path, "r") as f:
                names = [inner] if inner else [n for n in BACKGROUND_DATASETS if n in f]
                if not names or names[0] not in f:
                    raise OpmonError(f"--background {value}: no dataset {inner or ' or '.join(BACKGROUND_DATASETS)} in {path}")
                image = f[names[0]][()]
    except OSError as exc:
        raise OpmonError(f"--background {value}: cannot read {path} ({str(exc).split('(')[0].strip()})") from exc
    except ValueError as exc:
        raise OpmonError(f"--background {value}: not an image ({exc})") from exc
    image = np.asarray(image)
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.number):
        raise OpmonError(f"--background {value}: expected a 2-D numeric image, got shape {image.shape} {image.dtype}")
    image = image.astype(np.float64)
    if not np.isfinite(image).all() or (image < 0).any():
        raise OpmonError(f"--background {value}: the image holds negative or non-finite values")
    if frame_shape is not None and image.shape != tuple(frame_shape):
        raise OpmonError(f"--background {value}: image shape {image.shape} differs from the frames' {tuple(frame_shape)}")
    return image


#: the `--peak-fit` words (processors/peak_fit.PEAK_FIT_MODELS; not imported here: it pulls in h5py)
PEAK_FIT_CHOICES = ("off", "gauss")


def add_peak_fit_argument(parser: argparse.ArgumentParser) -> None:
    """`--peak-fit off|gauss`, shared by the commands that make maps."""
    parser.add_argument("--peak-fit", default="off", choices=PEAK_FIT_CHOICES,
                        help="off (default) or gauss: also fit a Gaussian to each pixel's rocking profile (Σ I per eta "
                             "scan) and take q at its centre, for peaks cut by the rocking range; fitted d, tilt, width "
                             "and reduced chi2 go to <entry>/maps/fit beside the centre-of-mass maps (NaN where a fit "
                             "fails)")
