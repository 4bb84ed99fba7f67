"""Simulated ID01 recordings: frames written as BLISS and XSOCS write them, for tests and benchmarks.

ID01 records a 5-D SXDM as one ``sxdm(...)`` map scan per eta in a BLISS dataset file; Lima
writes each scan's frames to its own file (``scanNNNN/<det>_0000.h5``, int32 for a Maxipix)
and BLISS exposes them as a virtual dataset ``N.1/instrument/<det>/image`` (and
``measurement/<det>``). XSOCS users get a master file whose entries link to those frames and
carry ``chan_per_deg`` instead of a distance. The names and shapes follow the real files in
``../shared/data/id01`` (FORMATS.md "ID01 BLISS", "XSOCS"); nothing here imports opmon.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import numpy.typing as npt


@dataclass
class Id01Scan:
    """One map scan: its eta and its frames in acquisition order with the map pixel of each."""

    eta: float
    frames: npt.NDArray[np.integer]
    map_index: npt.NDArray[np.int64]


@dataclass
class Id01Setup:
    """What the beamline knows about the experiment (units of the raw layout)."""

    energy_ev: float
    distance_m: float
    pixel_size_m: tuple[float, float]  # (row, column)
    beam_center: tuple[float, float]  # (row, column) of the frames, at nu = delta = 0
    phi: float
    nu: float
    delta: float
    map_shape: tuple[int, int]  # (slow points, fast points)
    step_um: float = 0.1
    jitter: float = 0.3  # measured positions scatter up to this fraction of a step
    mask: npt.NDArray[np.uint8] | None = None
    detector: str = "mpx1x4"
    frame_offset: tuple[int, int] = (0, 0)  # XSOCS image_roi_offset: where the frames sit on the full detector
    extra: dict[str, float] = field(default_factory=dict)

    def title(self) -> str:
        ny, nx = self.map_shape
        return (f"sxdm( pix, 0.0, {(nx - 1) * self.step_um:g}, {nx}, piy, 0.0, {(ny - 1) * self.step_um:g}, {ny}, 0.01 )")

    def positions(self, map_index: npt.NDArray[np.int64], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Measured (pix, piy) in µm of each frame: the grid point plus jitter."""
        rng = np.random.default_rng(seed)
        iy, ix = np.divmod(np.asarray(map_index, dtype=np.int64), self.map_shape[1])
        j = self.jitter * self.step_um
        return (ix * self.step_um + rng.uniform(-j, j, ix.shape), iy * self.step_um + rng.uniform(-j, j, iy.shape))


def _lima_file(path: Path, det: str, frames: npt.NDArray[np.integer], dtype: npt.DTypeLike) -> str:
    """Frames as Lima writes them: one file per scan, bitshuffle/LZ4, one frame per chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = f"/entry_0000/instrument/{det}/data"
    with h5py.File(path, "w") as f:
        f.create_dataset(inner, data=frames.astype(dtype), chunks=(1,) + frames.shape[1:],
                         **hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    return inner


def write_bliss(path: Path, setup: Id01Setup, scans: Iterable[Id01Scan], *, dtype: npt.DTypeLike = np.int32,
                with_calibration: bool = True, extra_scan: bool = True) -> Path:
    """A BLISS dataset file at `path` with one SXDM scan per eta (frames as VDS onto Lima files beside it).

    Scan ``N.1`` holds ``title``, ``technique/dim0, dim1``, the detector's metadata (without
    distance and beam centre when ``with_calibration`` is False), the monochromator energy,
    ``instrument/positioners`` and ``measurement/{<det>, pix_position, piy_position, mon1}``.
    ``extra_scan`` adds a last ``ascan eta`` with the same detector, which is not a map.
    """
    det = setup.detector
    ny, nx = setup.map_shape
    with h5py.File(path, "w") as f:
        f.attrs["creator"] = "Bliss"
        f.attrs["NX_class"] = "NXroot"
        number, shape = 0, (8, 8)
        for number, scan in enumerate(scans, start=1):
            shape = scan.frames.shape[1:]
            pix, piy = setup.positions(scan.map_index, seed=number)
            _scan(f, path, number, setup.title(), setup, scan.frames, scan.eta, dtype, with_calibration,
                  {"pix_position": pix, "piy_position": piy})
            f[f"{number}.1/technique/dim0"] = nx
            f[f"{number}.1/technique/dim1"] = ny
        if extra_scan:
            frames = np.zeros((5,) + tuple(shape), dtype=np.uint16)
            _scan(f, path, number + 1, "ascan eta 18.0 19.0 4 0.1", setup, frames, np.linspace(18.0, 19.0, 5), dtype,
                  with_calibration, {})
    return path


def _scan(f: h5py.File, path: Path, number: int, title: str, setup: Id01Setup, frames: npt.NDArray[np.integer],
          eta: float | np.ndarray, dtype: npt.DTypeLike, with_calibration: bool, positions: dict[str, np.ndarray]) -> None:
    det, n = setup.detector, frames.shape[0]
    g = f.create_group(f"{number}.1")
    g.attrs["NX_class"] = "NXentry"
    g["title"] = title
    lima = path.parent / f"scan{number:04d}" / f"{det}_0000.h5"
    inner = _lima_file(lima, det, frames, dtype)
    layout = h5py.VirtualLayout(shape=frames.shape, dtype=np.dtype(dtype))
    layout[:] = h5py.VirtualSource(str(lima.relative_to(path.parent)), inner, shape=frames.shape)
    d = g.create_group(f"instrument/{det}")
    d.attrs["NX_class"] = "NXdetector"
    d.create_virtual_dataset("image", layout, fillvalue=0)
    d["x_pixel_size"], d["y_pixel_size"] = setup.pixel_size_m[1], setup.pixel_size_m[0]
    if with_calibration:
        d["beam_center_x"], d["beam_center_y"] = setup.beam_center[1], setup.beam_center[0]
        d["distance"] = setup.distance_m
    if setup.mask is not None:
        d["pixel_mask"] = setup.mask
    d["saturation_value"] = 401540
    g["instrument/monochromator/Energy"] = setup.energy_ev
    g["instrument/monochromator/WaveLength"] = 12398.419843320026e-10 / setup.energy_ev
    pos = g.create_group("instrument/positioners")
    pos["eta"] = eta
    pos["phi"], pos["nu"], pos["delta"] = setup.phi, setup.nu, setup.delta
    meas = g.create_group("measurement")
    meas[det] = h5py.SoftLink(f"/{number}.1/instrument/{det}/image")
    for name, values in positions.items():
        meas[name] = values
    meas["mon1"] = np.full(n, 1.0e5)
    meas["epoch"] = 1.7e9 + np.arange(n) * 0.01


def write_xsocs(path: Path, bliss: Path, setup: Id01Setup, scans: int) -> Path:
    """An XSOCS master at `path` whose entries link to the BLISS file's scans 1.1..`scans`.1.

    Detector calibration as XSOCS holds it: ``center_chan_dim0/1`` in full-detector pixels with
    ``image_roi_offset``, and ``chan_per_deg_dim0/1`` = 2·tan(0.5°)·distance / pixel (what
    xrayutilities' init_area inverts).
    """
    two_tan = 2.0 * math.tan(math.radians(0.5))
    ny, nx = setup.map_shape
    with h5py.File(bliss, "r") as src, h5py.File(path, "w") as f:
        for number in range(1, scans + 1):
            name = f"{number}.1"
            g = f.create_group(name)
            g.attrs["NX_class"] = "NXentry"
            g["title"] = setup.title()
            det = g.create_group("instrument/detector")
            det["beam_energy"] = setup.energy_ev
            det["center_chan_dim0"] = setup.beam_center[0] + setup.frame_offset[0]
            det["center_chan_dim1"] = setup.beam_center[1] + setup.frame_offset[1]
            det["chan_per_deg_dim0"] = two_tan * setup.distance_m / setup.pixel_size_m[0]
            det["chan_per_deg_dim1"] = two_tan * setup.distance_m / setup.pixel_size_m[1]
            det["image_roi_offset"] = np.asarray(setup.frame_offset, dtype=np.int64)
            g["measurement/image/data"] = h5py.ExternalLink(bliss.name, f"{name}/measurement/{setup.detector}")
            det["data"] = h5py.SoftLink(f"/{name}/measurement/image/data")
            pos = g.create_group("instrument/positioners")
            pos["eta"] = float(src[f"{name}/instrument/positioners/eta"][()])
            pos["phi"], pos["nu"], pos["del"] = setup.phi, setup.nu, setup.delta
            pix, piy = src[f"{name}/measurement/pix_position"][()], src[f"{name}/measurement/piy_position"][()]
            pos["pix_position"], pos["piy_position"] = pix, piy
            g["measurement/adcX"], g["measurement/adcY"] = piy, pix  # id01-sxdm-utils' bliss_to_xsocs mapping
            g["measurement/imgnr"] = np.arange(pix.shape[0])
            for i, (motor, points) in enumerate((("pix", nx), ("piy", ny))):
                g[f"scan/motor_{i}"] = motor
                g[f"scan/motor_{i}_start"] = 0.0
                g[f"scan/motor_{i}_end"] = (points - 1) * setup.step_um
                g[f"scan/motor_{i}_steps"] = points
            g["scan/delay"] = 0.01
    return path
