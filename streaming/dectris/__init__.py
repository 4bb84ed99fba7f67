"""DECTRIS SIMPLON stream V2 as an opmon frame source: codec, series geometry, bridge, sender."""
