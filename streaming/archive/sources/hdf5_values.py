"""Small readers of beamline metadata: text, numbers and per-point arrays, tolerant of how BLISS stores them."""
from __future__ import annotations

import re
from typing import Any

import h5py
import numpy as np
import numpy.typing as npt

SCAN_NAME = re.compile(r"^(\d+)\.(\d+)$")


def scan_key(name: str) -> tuple[int, int]:
    """Sort key of a scan group name "N.M" (numeric, so 10.1 follows 9.1)."""
    m = SCAN_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else (1 << 30, 0)


def scan_names(f: h5py.File) -> list[str]:
    """Top-level groups named like scans (N.M), in scan order."""
    return sorted((n for n in f if SCAN_NAME.match(n)), key=scan_key)


def text(group: h5py.Group, path: str) -> str:
    """A string dataset (bytes, str or a 0-d object array), or "" when absent or unreadable."""
    try:
        value = group.get(path)
        if not isinstance(value, h5py.Dataset):
            return ""
        raw: Any = value[()]
    except (OSError, KeyError):
        return ""
    if isinstance(raw, np.ndarray):
        raw = raw.reshape(-1)[0] if raw.size else ""
    return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def number(group: h5py.Group, path: str) -> float | None:
    """A finite scalar number, or None when absent, not a number or not finite."""
    try:
        value = group.get(path)
        if not isinstance(value, h5py.Dataset) or value.size != 1 or value.dtype.kind not in "iuf":
            return None
        out = float(np.asarray(value[()]).reshape(()))
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return out if np.isfinite(out) else None


def values(group: h5py.Group, path: str) -> npt.NDArray[np.float64] | None:
    """A numeric dataset as float64 (scalar as 0-d), or None when absent or unreadable."""
    try:
        value = group.get(path)
        if not isinstance(value, h5py.Dataset) or value.dtype.kind not in "iuf":
            return None
        return np.asarray(value[()], dtype=np.float64)
    except (OSError, KeyError, ValueError, TypeError):
        return None


def describe(arr: npt.NDArray[np.float64] | None) -> str:
    """"12.5" for a scalar, "array (51) 15.24..19.24" for one value per point, "missing"."""
    if arr is None:
        return "missing"
    if arr.ndim == 0 or arr.size == 1:
        return f"{float(arr.reshape(-1)[0]):.6g}"
    return f"array ({arr.size}) {np.nanmin(arr):.6g}..{np.nanmax(arr):.6g}"
