"""Fixtures shared by several test folders."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def dask_client() -> Iterator[Any]:
    """A client of a real local Dask cluster, as `--dask local:2` starts it: two worker processes
    (LocalCluster, processes=True), one thread each, on 127.0.0.1. One per test module: a cluster
    takes a few seconds to start."""
    from distributed import Client

    from opmon.processors.distributed import local_cluster

    with local_cluster(2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        yield client
