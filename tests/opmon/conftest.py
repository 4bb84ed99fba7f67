"""Fixtures of the bad-input walk: a directory of good and damaged inputs for each test."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# the suite runs with --import-mode=importlib, which leaves sys.path alone: make this folder's
# helper module importable by name
sys.path.insert(0, str(Path(__file__).resolve().parent))

from offline_inputs import corrupt_frames, make_archive, write_raw  # noqa: E402


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only originals, copied into each test's directory by `workdir`."""
    root = tmp_path_factory.mktemp("pristine")
    raw = write_raw(root / "raw.h5")
    corrupt = corrupt_frames(write_raw(root / "corrupt.h5"), [3, 40])
    archive = make_archive(root / "run")
    return {"raw": raw, "corrupt": corrupt, "archive": archive}


@pytest.fixture
def workdir(tmp_path: Path, pristine: dict[str, Path]) -> Path:
    """A fresh directory holding raw.h5, corrupt.h5 and run/ (an archive)."""
    for name, src in pristine.items():
        if src.is_dir():
            shutil.copytree(src, tmp_path / src.name)
        else:
            shutil.copy(src, tmp_path / src.name)
    return tmp_path
