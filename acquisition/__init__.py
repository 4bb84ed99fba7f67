"""opmon.acquisition: see README for this folder's single job."""
