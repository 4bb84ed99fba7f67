"""The detector's own HDF5 file, as a StreamResource names it, read while the detector writes it.

ophyd-async detectors (the sim `SimBlobDetector`, areaDetector HDF writers, Eiger/Odin writers)
write frames into an HDF5 file they hold open in SWMR mode and tell the RunEngine which file
(`StreamResource`: `uri`, `parameters.dataset`, `mimetype` application/x-hdf5) and which
frames exist (`StreamDatum`: `indices`). This reader opens the file read-only with
``swmr=True``, and before reading frames a datum announced refreshes the dataset and waits
(bounded) until they are visible: the writer's flush can trail the document. Compressed
bitshuffle/LZ4 frames go through the project's bounds-checked decoder (`FrameReader`).

Kept small and self-contained: given a file, a dataset and frame numbers it returns frames,
so an offline "source" (frames + map index + angles) can wrap it as it is.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import h5py
import hdf5plugin  # noqa: F401  (registers the compression filters detectors use)
import numpy as np
import numpy.typing as npt

from opmon.errors import DetectorFileError
from opmon.streaming.archive.frames import FrameReader

HDF5_MIMETYPES = ("application/x-hdf5",)
LOCAL_HOSTS = ("", "localhost", "127.0.0.1")
POLL_S = 0.01


def resource_path(stream_resource: dict[str, Any]) -> Path:
    """The local path of a StreamResource's `uri` (file://localhost/...); refuses other schemes and hosts.

    Raises
    ------
    DetectorFileError
        naming the uri when it is not a local file or the mimetype is not HDF5.
    """
    uri = str(stream_resource.get("uri", ""))
    mimetype = stream_resource.get("mimetype")
    if mimetype not in HDF5_MIMETYPES:
        raise DetectorFileError(f"StreamResource {stream_resource.get('uid', '?')} ({stream_resource.get('data_key')}): "
                                f"mimetype {mimetype!r:.60} is not supported (opmon reads {', '.join(HDF5_MIMETYPES)})")
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in LOCAL_HOSTS:
        raise DetectorFileError(f"StreamResource {stream_resource.get('uid', '?')}: uri {uri!r:.200} is not a local file "
                                f"(file://localhost/PATH); opmon must see the detector's file system")
    return Path(unquote(parsed.path))


class DetectorFile:
    """Frames of one dataset of a detector's HDF5 file, waiting (bounded) for frames not yet visible.

    Parameters
    ----------
    path
        the file (`resource_path` of a StreamResource).
    dataset
        path of the frames inside it, (N, rows, cols) or (N, ...) with N frames.
    wait_s
        how long to wait for the file to open and for announced frames to appear.
    """

    def __init__(self, path: str | Path, dataset: str, *, wait_s: float = 30.0) -> None:
        self.path = Path(path)
        self.dataset_name = dataset
        self.wait_s = wait_s
        self.file = self._open()
        try:
            data = self.file[dataset]
        except KeyError:
            self.file.close()
            raise DetectorFileError(f"{self.path}: no dataset {dataset!r} (named by the StreamResource)") from None
        if not isinstance(data, h5py.Dataset) or data.ndim < 2:
            self.file.close()
            raise DetectorFileError(f"{self.path}:{dataset} is not a stack of frames ({getattr(data, 'shape', 'a group')})")
        self.data = data
        self.reader = FrameReader(data, f"{self.path}:{dataset}")

    def _open(self) -> h5py.File:
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                return h5py.File(self.path, "r", swmr=True)
            except (OSError, FileNotFoundError) as exc:   # not there yet, or not yet switched to SWMR by its writer
                if time.monotonic() >= deadline:
                    raise DetectorFileError(f"{self.path}: cannot open the detector's file for SWMR reading after "
                                            f"{self.wait_s:.0f} s ({str(exc).split('(')[0].strip()})") from exc
                time.sleep(POLL_S * 5)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def visible(self) -> int:
        """Frames the writer has flushed so far (refreshes the SWMR view)."""
        self.data.refresh()
        return int(self.data.shape[0])

    def read(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Frames start..stop (a new array), waiting up to `wait_s` for the writer to flush them.

        Raises
        ------
        DetectorFileError
            when the frames do not appear in time, or a stored frame cannot be decoded.
        """
        deadline = time.monotonic() + self.wait_s
        while (seen := self.visible()) < stop:
            if time.monotonic() >= deadline:
                raise DetectorFileError(f"{self.path}:{self.dataset_name} holds {seen} frames after {self.wait_s:.0f} s; "
                                        f"the StreamDatum says frames up to {stop} exist")
            time.sleep(POLL_S)
        out = np.empty((stop - start,) + self.frame_shape, dtype=self.dtype)
        bad = self.reader.read(out, start)
        if bad:
            raise DetectorFileError(str(self.reader.error(bad)).split(" (use --skip")[0])
        return out

    def close(self) -> None:
        self.file.close()
