"""Find a dataset behind soft links, external links and virtual datasets, or say which file is missing.

Beamline files rarely hold their frames: BLISS writes a virtual dataset onto Lima's files,
XSOCS links to the BLISS file, which links further. HDF5 reads a virtual dataset whose source
file is gone as zeros, silently; a monitor must instead say "no frames" and name the file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py


@dataclass
class Found:
    """A dataset reached through links, or why it could not be (`missing`)."""

    dataset: h5py.Dataset | None
    path: str  # the path asked for, as the user sees it (e.g. "3.1/measurement/mpx1x4")
    missing: str | None = None  # one clause naming the missing file or object

    @property
    def ok(self) -> bool:
        return self.dataset is not None and self.missing is None


def _base_dir(group: h5py.Group) -> Path:
    return Path(group.file.filename).absolute().parent


def follow(group: h5py.Group, path: str) -> Found:
    """The dataset at `path` under `group`, following links one component at a time."""
    shown = f"{group.name.strip('/')}/{path}".strip("/")
    node: h5py.Group = group
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        link = node.get(part, getlink=True)
        if link is None:
            return Found(None, shown, f"{shown}: no {'/'.join(parts[:i + 1])}")
        target = node.get(part)
        if target is None:
            if isinstance(link, h5py.ExternalLink):
                where = Path(link.filename)
                exists = (where if where.is_absolute() else _base_dir(node) / where).exists()
                what = "which is missing" if not exists else "which does not hold it"
                return Found(None, shown, f"{shown} links to {link.path} in {link.filename}, {what}")
            if isinstance(link, h5py.SoftLink):
                inner = follow(node.file["/"], link.path.lstrip("/"))
                clause = inner.missing or f"{link.path} does not exist"
                return Found(None, shown, f"{shown} links to {clause}")
            return Found(None, shown, f"{shown}: cannot be opened")
        if i < len(parts) - 1:
            if not isinstance(target, h5py.Group):
                return Found(None, shown, f"{shown}: {'/'.join(parts[:i + 1])} is not a group")
            node = target
    if not isinstance(target, h5py.Dataset):
        return Found(None, shown, f"{shown} is a group, not a dataset")
    missing = missing_virtual_sources(target)
    if missing:
        return Found(target, shown, f"{shown} is a virtual dataset onto {', '.join(missing)}, "
                                    f"{'which is' if len(missing) == 1 else 'which are'} missing")
    return Found(target, shown)


def missing_virtual_sources(data: h5py.Dataset) -> list[str]:
    """Source files of a virtual dataset that cannot be found (HDF5 would read their frames as zeros).

    Relative names are looked up as HDF5 does: under $HDF5_VDS_PREFIX, then beside the file
    holding the virtual dataset; "." is that file itself.
    """
    if not data.is_virtual:
        return []
    base = Path(data.file.filename).absolute().parent
    prefixes = [Path(p) for p in os.environ.get("HDF5_VDS_PREFIX", "").split(":") if p] + [base]
    missing: list[str] = []
    for vs in data.virtual_sources():
        name = vs.file_name
        if name == "." or name in missing:
            continue
        p = Path(name)
        if not (p.exists() if p.is_absolute() else any((pre / p).exists() for pre in prefixes)):
            missing.append(name)
    return missing


def source_files(data: h5py.Dataset) -> list[Path]:
    """Files whose bytes a dataset's frames come from (itself, and a virtual dataset's sources)."""
    files = [Path(data.file.filename).absolute()]
    if data.is_virtual:
        base = files[0].parent
        for vs in data.virtual_sources():
            if vs.file_name != ".":
                p = Path(vs.file_name)
                p = p if p.is_absolute() else base / p
                if p.exists() and p.absolute() not in files:
                    files.append(p.absolute())
    return files
