"""A simulated 5-D SXDM written three ways: opmon's raw layout, an ID01 BLISS dataset, an XSOCS master.

The frames come from opmon's simulator (`opmon simulate`: 31 etas of a 20 x 28 map, frames
cut to 64 x 64 around the Bragg peak); the same frames are then written as BLISS writes them
(one sxdm scan per eta, int32 frames in Lima files behind virtual datasets, plus an ascan that
is not a map) and as XSOCS holds them (entries linking to those scans, chan_per_deg, an
image ROI offset). Processing any of the three must give the same maps.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from opmon.commands.simulate import simulate
from opmon.simulators.id01_files import Id01Scan, Id01Setup, write_bliss, write_xsocs
from opmon.streaming.archive.layout import DATA
from opmon.streaming.archive.raw import read_raw_meta

MAP = (20, 28)
ANGLES = 31
ROI = (326, 390, 211, 275)  # 64 x 64 around the simulated (400) peak of x = 1 (row 358, column 243)


@dataclass
class Id01Files:
    raw: Path
    bliss: Path
    bliss_uncalibrated: Path
    xsocs: Path
    geometry: Path
    setup: Id01Setup


def setup_of(raw: Path) -> Id01Setup:
    with h5py.File(raw, "r") as f:
        meta = read_raw_meta(f["entry"])
    return Id01Setup(energy_ev=meta.energy_ev, distance_m=meta.distance_m, pixel_size_m=meta.pixel_size_m,
                     beam_center=meta.beam_center, phi=float(meta.phi[0]), nu=float(meta.nu[0]),
                     delta=float(meta.delta[0]), map_shape=meta.map_shape, mask=meta.detector_mask,
                     frame_offset=(ROI[0], ROI[2]))


def snake(map_shape: tuple[int, int]) -> np.ndarray:
    """Frame order of a snake scan (every other line backwards): map pixels no longer in frame order."""
    order = np.arange(map_shape[0] * map_shape[1]).reshape(map_shape)
    order[1::2] = order[1::2, ::-1]
    return order.reshape(-1)


def scans_of(raw: Path) -> list[Id01Scan]:
    """The raw file's frames cut into one scan per eta (the simulator takes one eta at a time), each
    taken in snake order, so only the recorded positions say which map pixel a frame belongs to."""
    with h5py.File(raw, "r") as f:
        meta = read_raw_meta(f["entry"])
        data = f["entry"][DATA]
        n = meta.map_shape[0] * meta.map_shape[1]
        order = snake(meta.map_shape)
        scans = []
        for k in range(meta.n_frames // n):
            frames, index = data[k * n:(k + 1) * n], meta.map_index[k * n:(k + 1) * n]
            scans.append(Id01Scan(float(meta.eta[k * n]), frames[order], index[order]))
        return scans


def make_id01_files(root: Path, map_shape: tuple[int, int] = MAP, angles: int = ANGLES) -> Id01Files:
    root.mkdir(parents=True, exist_ok=True)
    raw = root / "raw.h5"
    simulate(raw, ny=map_shape[0], nx=map_shape[1], angles=angles, roi=ROI, dtype="uint16", block=2048,
             progress=False)
    setup = setup_of(raw)
    scans = scans_of(raw)
    (root / "bliss").mkdir()
    bliss = write_bliss(root / "bliss" / "sample_0001.h5", setup, scans)
    (root / "bare").mkdir()
    bare = write_bliss(root / "bare" / "sample_0001.h5", setup, scans, with_calibration=False)
    xsocs = write_xsocs(root / "bliss" / "sample_0001_master.h5", bliss, setup, len(scans))
    geometry = root / "geometry.toml"
    geometry.write_text(f"distance = {setup.distance_m!r}\nbeam_center_x = {setup.beam_center[1]!r}\n"
                        f"beam_center_y = {setup.beam_center[0]!r}\n")
    return Id01Files(raw, bliss, bare, xsocs, geometry, setup)
