#!/bin/sh
# Install Debian's chromium and chromium-driver for the browser tests (issue 6).
# Only the distribution packages: never a downloaded browser build.
# Does nothing when both /usr/bin/chromium and /usr/bin/chromedriver are present.
set -eu

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    echo "install-browser: chromium and chromedriver already present"
    exit 0
fi
sh "$(dirname "$0")/apt-install.sh" chromium chromium-driver fonts-dejavu-core
/usr/bin/chromium --version
/usr/bin/chromedriver --version
