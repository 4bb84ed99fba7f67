#!/usr/bin/env bash
# Create .venv and install opmon into it. `scripts/setup.sh test` also installs the test
# extra and Debian's chromium + chromium-driver for the browser tests (apt, when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ "${1:-}" = "test" ]; then
    .venv/bin/pip install --disable-pip-version-check -q -e '.[test]'
    if [ -f scripts/install-browser.sh ]; then bash scripts/install-browser.sh; fi
else
    .venv/bin/pip install --disable-pip-version-check -q -e .
fi
