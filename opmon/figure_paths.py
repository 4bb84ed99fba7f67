"""Where the summary figures of a maps file go, named the same way by `opmon process --png` and
`opmon plot` (not in `opmon/commands/`: every module there is a subcommand)."""
from __future__ import annotations

from pathlib import Path

from opmon.errors import OutputError


def figure_paths(base: Path, names: list[str], needs: str = "the figure needs") -> dict[str, Path]:
    """One PNG per entry: `base` for a single entry, `base_<entry>.png` for several.

    Raises OutputError (naming the path; `needs` says who asked) unless every name ends in .png.
    """
    paths = {names[0]: base} if len(names) == 1 else {name: base.with_name(f"{base.stem}_{name}{base.suffix}")
                                                      for name in names}
    for png in paths.values():
        if png.suffix.lower() != ".png":
            raise OutputError(f"{png}: {needs} a file name ending in .png")
    return paths
