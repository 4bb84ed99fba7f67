#!/bin/sh
# apt-get install the Debian packages named, as root or through sudo (only distribution
# packages: never a downloaded build). Used by install-browser.sh and install-redis.sh.
set -eu
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "apt-install: need root (or sudo) to apt-get install $*" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "$@"
