"""Live chain benchmark as a script: same as `opmon bench stream` (see processors/live_benchmark.py)."""
from __future__ import annotations

import sys

from opmon.processors.live_benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
