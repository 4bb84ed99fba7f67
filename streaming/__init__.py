"""opmon.streaming: see README for this folder's single job."""
