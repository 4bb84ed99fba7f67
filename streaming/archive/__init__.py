"""The archive: everything opmon knows about its files on disk, in one place.

The archiver consumes the stream and writes runs; processors, the demo, replay and `opmon process`
read them back through this package. It imports nothing downstream (processors, dashboard).
"""
