"""Fixtures of the reliability tests: the harnesses of benchmarks/ (fuzzers, disk full) loaded
from the source checkout, so the tests and `opmon bench reliability` run the same code."""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return __import__(name)


@pytest.fixture(scope="session")
def fuzz() -> ModuleType:
    return _load("reliability_fuzz")


@pytest.fixture(scope="session")
def disk() -> ModuleType:
    return _load("reliability_disk")
