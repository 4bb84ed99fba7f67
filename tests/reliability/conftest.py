"""Fixtures of the reliability tests: the harnesses of `opmon.benchmarks` (fuzzers, disk full),
so the tests and `opmon bench reliability` run the same code."""
from __future__ import annotations

from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def fuzz() -> ModuleType:
    from opmon.benchmarks import reliability_fuzz
    return reliability_fuzz


@pytest.fixture(scope="session")
def disk() -> ModuleType:
    from opmon.benchmarks import reliability_disk
    return reliability_disk
