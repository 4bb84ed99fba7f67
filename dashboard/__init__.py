"""opmon.dashboard: see README for this folder's single job."""
