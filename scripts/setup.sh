#!/usr/bin/env bash
# Create .venv and install opmon into it. `scripts/setup.sh test` also installs the test
# extra, Debian's chromium + chromium-driver for the browser tests and Debian's redis-server for
# the queue-server test (apt, when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ "${1:-}" = "test" ]; then
    .venv/bin/pip install --disable-pip-version-check -q -e '.[test]'
    if [ -f scripts/install-browser.sh ]; then bash scripts/install-browser.sh; fi
    if [ -f scripts/install-redis.sh ]; then bash scripts/install-redis.sh; fi
else
    .venv/bin/pip install --disable-pip-version-check -q -e .
fi
# Compile the live processor's numba kernels into numba's on-disk cache now: compiled on a first
# `opmon live`, they would hold its first frames for 20-60 s on two cores.
.venv/bin/python -c "from opmon.processors.accumulate import warm_up_kernels; warm_up_kernels()"
