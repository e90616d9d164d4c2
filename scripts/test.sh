#!/usr/bin/env bash
# The one command for a fresh Debian/Ubuntu machine: system packages, dependencies, type check, build, tests.
# Needs Node >= 20.18.1 with npm on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the integration tests run for real, installed only when missing; none is left running:
# - zookeeper (+ a JRE): ZooKeeper 3.8, started per test from its jars;
# - prometheus: the server (started per test on a loopback port) and promtool; without its Recommends,
#   which would bring prometheus-node-exporter, a service nothing here needs;
# - chromium: the headless browser that opens the status page (driven by playwright-core).
PACKAGES=()
if [ ! -f /usr/share/java/zookeeper.jar ] || ! command -v java >/dev/null 2>&1; then
  PACKAGES+=(zookeeper default-jre-headless)
fi
NO_RECOMMENDS=()
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  NO_RECOMMENDS+=(prometheus)
fi
if [ ! -x /usr/bin/chromium ]; then
  PACKAGES+=(chromium)
fi
if [ ${#PACKAGES[@]} -gt 0 ] || [ ${#NO_RECOMMENDS[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    echo "scripts/test.sh: missing ${PACKAGES[*]} ${NO_RECOMMENDS[*]}, and this is not root and there is no sudo;" >&2
    echo "  run as root: apt-get update && apt-get install -y ${PACKAGES[*]} && apt-get install -y --no-install-recommends ${NO_RECOMMENDS[*]}" >&2
    exit 1
  fi
  echo "==> installing ${PACKAGES[*]} ${NO_RECOMMENDS[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update
  if [ ${#PACKAGES[@]} -gt 0 ]; then "${SUDO[@]}" apt-get install -y "${PACKAGES[@]}"; fi
  if [ ${#NO_RECOMMENDS[@]} -gt 0 ]; then
    "${SUDO[@]}" apt-get install -y --no-install-recommends "${NO_RECOMMENDS[@]}"
    # On a systemd machine the package starts its service: the tests start their own servers.
    if [ -d /run/systemd/system ] && systemctl is-active --quiet prometheus 2>/dev/null; then
      "${SUDO[@]}" systemctl disable --now prometheus
    fi
  fi
fi

echo "==> npm ci"
npm ci
echo "==> npm run typecheck"
npm run typecheck
echo "==> npm run build"
npm run build
echo "==> npm test"
npm test
