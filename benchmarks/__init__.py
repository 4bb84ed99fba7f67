"""Benchmarks of every data-path stage (`opmon bench STAGE`): figures beside a baseline measured in the same run."""
