"""The command-line spellings of the processing options that `opmon process`, `opmon live` and
`opmon replay` share, parsed in one place so the three commands accept the same words.

(Not in `opmon/commands/`: every module there is a subcommand.)
"""
from __future__ import annotations

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


def parse_background(value: str) -> str | float | None:
    """`auto` (from counts outside the ROI), `none`, or a fixed rate in counts/pixel/frame (>= 0)."""
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
