#!/usr/bin/env bash
# System packages the test suite starts for real. Idempotent: installs only what is missing.
#   redis-server               shared prompt store (tests/app, tests/system/deploy)
#   nginx                      the compose file's reverse proxy, run in front of two replicas (tests/system/deploy);
#                              the tests start their own on a free port (on a systemd host apt also starts
#                              Debian's default site on port 80, which they do not need)
#   chromium, chromium-driver  the headless browser of the viewer test, driven by Playwright (tests/system/viewer);
#                              Playwright's own browser download is never used
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# nginx lives in /usr/sbin, which is not on every user's PATH
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
