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
sh "$(dirname "$0")/apt-install.sh" redis-server
/usr/bin/redis-server --version
