"""opmon.processors: see README for this folder's single job."""
