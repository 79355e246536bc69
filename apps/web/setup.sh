#!/bin/sh
# Set-up for the web app and its browser test (called by `make test`'s set-up):
#   1. Debian's Chromium at /usr/bin/chromium (apt-get, when missing and we can install packages);
#   2. the pinned npm packages (onnxruntime-web for the app, playwright-core for the test) from package-lock.json.
# Prints what it could not do; the browser test then skips LOUDLY (or fails when EDGE_REQUIRE_BROWSER=1, as in CI).
set -u
here=$(cd "$(dirname "$0")" && pwd)
status=0
if [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "apps/web/setup.sh: installing chromium with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || status=1
    elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || status=1
    else
        echo "apps/web/setup.sh: WARNING: /usr/bin/chromium is missing and apt-get is not usable here;" \
             "the browser test will be skipped (install Debian's chromium package)" >&2
        status=1
    fi
fi
if command -v npm >/dev/null 2>&1; then
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || status=1
else
    echo "apps/web/setup.sh: WARNING: npm is missing; install Node.js 18+ (apt-get install -y nodejs npm);" \
         "the browser test will be skipped" >&2
    status=1
fi
exit $status
