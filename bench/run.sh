#!/usr/bin/env bash
# One command for the benchmark (`npm run bench -- [options]`): installs what is missing (HAProxy, NGINX,
# wrk, ZooKeeper from Debian; the Node peer's @fastify/reply-from from the lockfile), builds fleetgate,
# then runs bench/run.mjs with the same arguments. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# HAProxy and NGINX install into /usr/sbin, which a non-root user's PATH lacks on Debian.
export PATH="$PATH:/usr/sbin:/sbin"

SUDO=
[ "$(id -u)" = 0 ] || SUDO=sudo
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v taskset >/dev/null || need+=(util-linux)
command -v java >/dev/null || need+=(default-jre-headless)
[ -f /usr/share/java/zookeeper.jar ] || need+=(zookeeper)
if [ ${#need[@]} -gt 0 ] || ! command -v nginx >/dev/null; then
  echo "bench: installing ${need[*]} $(command -v nginx >/dev/null || echo nginx)"
  export DEBIAN_FRONTEND=noninteractive
  apt=($SUDO apt-get -o DPkg::Lock::Timeout=300)
  "${apt[@]}" update -qq
  [ ${#need[@]} -eq 0 ] || "${apt[@]}" install -y -qq "${need[@]}"
  # nginx-light is the smallest build with the proxy and upstream keepalive modules; newer Debian has only nginx.
  command -v nginx >/dev/null || "${apt[@]}" install -y -qq nginx-light || "${apt[@]}" install -y -qq nginx
fi

if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund
elif [ ! -d node_modules/@fastify/reply-from ]; then
  npm install --no-audit --no-fund
fi
npm run build --silent

# 1,000 client connections plus as many upstream ones, per proxy.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec node bench/run.mjs "$@"
