#!/bin/sh
# Install Debian's redis-server for the bluesky-queueserver integration test (issue 16): the
# queue server keeps its queue in Redis. Only the distribution package; the test starts its own
# redis-server on a free 127.0.0.1 port (no service is enabled or needed).
# Does nothing when /usr/bin/redis-server is present.
set -eu

if [ -x /usr/bin/redis-server ]; then
    echo "install-redis: redis-server already present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-redis: need root (or sudo) to apt-get install redis-server" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends redis-server
# the package starts a system service on 6379 where systemd runs; the test does not use it
/usr/bin/redis-server --version
