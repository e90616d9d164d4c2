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
# The Docker tests (test/docker: image builds, minutes) run only in CI or when asked for. They need
# Debian's engine and docker-compose v1 (beside any newer docker CLI in /usr/local/bin, which they do not
# use); the tests start their own engine, so none is left running.
DOCKER_TESTS=0
if [ -n "${CI:-}" ] || [ "${FLEETGATE_DOCKER_TESTS:-}" = 1 ]; then
  DOCKER_TESTS=1
  if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/bin/docker ] || [ ! -x /usr/bin/docker-compose ]; then
    NO_RECOMMENDS+=(docker.io docker-compose)
  fi
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
    if [ -d /run/systemd/system ] && systemctl is-active --quiet docker 2>/dev/null; then
      "${SUDO[@]}" systemctl disable --now docker.socket docker
    fi
  fi
fi

echo "==> npm ci"
npm ci
echo "==> npm run typecheck"
npm run typecheck
echo "==> npm test (builds dist/ first: the end-to-end tests run the built CLI)"
if [ "$DOCKER_TESTS" = 1 ]; then
  # The Docker tests run after the suite, on their own (they are CPU-heavy). The last line adds up both
  # runs, in the runner's own form, whether the Docker tests pass or not.
  LOG=$(mktemp)
  trap 'rm -f "$LOG"' EXIT
  npm test | tee "$LOG"
  echo "==> Docker tests (test/docker)"
  STATUS=0
  node scripts/run-tests.mjs test/docker --timeout=900 | tee -a "$LOG" || STATUS=$?
  awk '/^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped$/ { p += $1; f += $3; s += $5 }
    END { printf "\n==> total: the suite and the Docker tests\n%d passed, %d failed, %d skipped\n", p, f, s }' "$LOG"
  exit "$STATUS"
else
  npm test
fi
