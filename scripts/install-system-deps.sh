#!/usr/bin/env bash
# System packages the test suite starts for real. Idempotent: installs only what is missing.
#   redis-server               shared prompt store (tests/app, tests/system/deploy)
#   nginx                      the compose file's reverse proxy, run in front of two replicas (tests/system/deploy);
#                              the tests start their own on a free port (on a systemd host apt also starts
#                              Debian's default site on port 80, which they do not need)
#   chromium, chromium-driver  the headless browser of the viewer test, driven by Playwright (tests/system/viewer);
#                              Playwright's own browser download is never used
# With --containers (scripts/container-check.sh), also what builds and runs the images without Docker:
#   podman, runc               the engine and the OCI runtime (crun fails on a cgroup-v1/hybrid host)
#   netavark, aardvark-dns     container networks with DNS, so that compose services find each other by name
#   iptables                   netavark's port forwarding (podman run -p)
#   debootstrap                the Debian base root file system (no registry is needed)
#   podman-compose 1.6.0       docker-compose.yml on podman, from PyPI into its own venv
#                              (/var/cache/icseg-container/podman-compose): Debian's 1.0.3 cannot read the
#                              compose file (it fails on a service's network aliases and ignores profiles)
# and a containers.conf that makes them work on such a host (see below).
set -euo pipefail
containers=0
[ "${1:-}" = "--containers" ] && containers=1
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# nginx lives in /usr/sbin, which is not on every user's PATH
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ "$containers" = 1 ]; then
  command -v podman >/dev/null 2>&1 || need+=(podman)
  [ -x /usr/sbin/runc ] || need+=(runc)
  [ -x /usr/lib/podman/netavark ] || need+=(netavark)
  [ -x /usr/lib/podman/aardvark-dns ] || need+=(aardvark-dns)
  command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || need+=(iptables)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [ "$containers" = 1 ]; then
  # runc, not crun ("cgroups in hybrid mode not supported"); no default ulimits (setrlimit fails in a
  # sandboxed host). Written only where the file does not say it already; a file with other settings is
  # left alone and the script stops, saying what to add.
  conf=/etc/containers/containers.conf
  if [ ! -e "$conf" ]; then
    $SUDO mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' | $SUDO tee "$conf" >/dev/null
  elif ! grep -q '^default_ulimits = \[\]' "$conf" || ! grep -q '^runtime = "runc"' "$conf"; then
    echo "$conf exists: add 'default_ulimits = []' under [containers] and 'runtime = \"runc\"' under [engine]" >&2
    exit 1
  fi
fi
if [ "$containers" = 1 ]; then
  compose_venv=/var/cache/icseg-container/podman-compose
  if [ ! -x "$compose_venv/bin/podman-compose" ]; then
    $SUDO mkdir -p "$(dirname "$compose_venv")"
    $SUDO python3 -m venv "$compose_venv"
    $SUDO "$compose_venv/bin/pip" install --quiet podman-compose==1.6.0
  fi
fi
