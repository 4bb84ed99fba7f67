"""Errors that name the bad value, so a user at 3 a.m. knows what to fix.

Every error the project raises on bad input derives from `OpmonError`; the command line
turns it into one line on stderr and a non-zero exit code.
"""
from __future__ import annotations


class OpmonError(Exception):
    """Base of every error opmon raises on bad input or bad state."""


class RawFileError(OpmonError):
    """A raw SXDM file is missing a dataset or holds inconsistent shapes or values."""


class FrameShapeError(OpmonError):
    """A frame does not have the shape or dtype the receiver expects."""


class MapIndexError(OpmonError):
    """A frame names a map pixel outside the map."""


class EmptyMapError(OpmonError):
    """A map has no intensity at all, so no d-spacing can be derived."""


class ProtocolError(OpmonError):
    """A streamed message does not follow the opmon frame protocol."""


class LimitError(OpmonError):
    """A setpoint lies beyond a hard limit of the instrument; nothing was commanded."""


class ConfigError(OpmonError):
    """The configuration file or an option holds an invalid value."""


class StreamStalledError(OpmonError):
    """A lossless sender waited too long for a receiver (down or too slow); nothing was dropped."""


class ArchiveError(OpmonError):
    """An archive directory or file is missing, unreadable or not an opmon run archive."""


class CorruptFrameError(RawFileError):
    """A stored frame cannot be decoded (corrupt or missing compressed chunk)."""


class OutputError(OpmonError):
    """An output path would overwrite an input or an existing file, or cannot be written."""


class ControlCommandError(OpmonError):
    """A steering command has bad arguments or cannot act in the run's current state."""


class DocumentError(ProtocolError):
    """A bluesky document received from another process is malformed or asks for what opmon cannot follow."""


class DetectorFileError(RawFileError):
    """A detector's HDF5 file named by a StreamResource cannot be opened, or does not hold the frames a
    StreamDatum says exist."""
