#!/bin/sh
# Starts gunicorn (Superset) under `fleetgate agent` in wrapper mode. The agent registers this container
# in ZooKeeper once /health passes, and on SIGTERM (docker stop, a scale-down) marks it draining for
# FLEETGATE_DRAIN_MS, deregisters it, then stops gunicorn, which finishes its running requests.
#
# The address it advertises is this container's own: the first address of its hostname (the address on
# the compose network), unless FLEETGATE_ADVERTISE_HOST says otherwise. Every FLEETGATE_* variable is
# read by the agent (README: Agent); SUPERSET_* and GUNICORN_* tune gunicorn as Superset's run-server.sh
# does. gunicorn runs directly (not through run-server.sh) so that the agent's SIGTERM reaches it.
set -eu

port="${SUPERSET_PORT:-8088}"
admin_listen=0.0.0.0:9902
if [ "$port" = 0 ]; then
  # Host networking (network_mode: host): the replicas share the host's ports, so each takes a free one
  # and advertises it. The image's HEALTHCHECK cannot know it; the agent's own health check does.
  port="$(node -e "const s = require('net').createServer().listen(0, '${SUPERSET_BIND_ADDRESS:-0.0.0.0}', () => { console.log(s.address().port); s.close() })")"
  # The agent's admin listener too: on a fixed port, the second replica's agent could not listen.
  admin_listen=127.0.0.1:0
fi
host="${FLEETGATE_ADVERTISE_HOST:-$(hostname -i | awk '{ print $1 }')}"
if [ -z "$host" ]; then
  echo "superset-with-agent: cannot tell this container's address; set FLEETGATE_ADVERTISE_HOST" >&2
  exit 1
fi

export FLEETGATE_ADVERTISE="${FLEETGATE_ADVERTISE:-$host:$port}"
export FLEETGATE_TARGET="${FLEETGATE_TARGET:-http://127.0.0.1:$port}"
export FLEETGATE_ADMIN_LISTEN="${FLEETGATE_ADMIN_LISTEN:-$admin_listen}"
# This script's own setting, not the agent's: the agent would warn of a FLEETGATE_* variable it does not know.
unset FLEETGATE_ADVERTISE_HOST

# The documented gunicorn line: long URLs and headers allowed, a timeout above Superset's 60 s.
exec node /opt/fleetgate/dist/cli.js agent -- \
  gunicorn \
    --bind "${SUPERSET_BIND_ADDRESS:-0.0.0.0}:$port" \
    --access-logfile - \
    --error-logfile - \
    --workers "${SERVER_WORKER_AMOUNT:-2}" \
    --worker-class "${SERVER_WORKER_CLASS:-gthread}" \
    --threads "${SERVER_THREADS_AMOUNT:-20}" \
    --timeout "${GUNICORN_TIMEOUT:-120}" \
    --keep-alive "${GUNICORN_KEEPALIVE:-2}" \
    --graceful-timeout "${GUNICORN_GRACEFUL_TIMEOUT:-30}" \
    --limit-request-line 0 \
    --limit-request-field_size 0 \
    "${FLASK_APP:-superset.app:create_app()}"
