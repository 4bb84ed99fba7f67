"""opmon.simulators: see README for this folder's single job."""
