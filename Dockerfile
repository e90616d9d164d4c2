# fleetgate: one image for `fleetgate proxy` (the default command) and `fleetgate agent`.
#
#   docker build -t fleetgate .
#   docker run --init -p 8080:8080 fleetgate proxy --zookeeper zk:2181 --admin-listen 0.0.0.0:9901
#   docker run --init fleetgate agent --zookeeper zk:2181 --advertise 10.0.0.7:8088 --target http://10.0.0.7:8088
#
# Run it with an init (`docker run --init`, compose `init: true`): fleetgate itself drains on SIGTERM,
# and the init also reaps the processes that the agent's wrapped command leaves behind.
ARG NODE_IMAGE=node:20-bookworm-slim

# Production dependencies only, exactly as locked. A stage of its own rather than `npm prune` after the
# build: it is faster, and the runtime image never holds a layer with the dev dependencies.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --cache /tmp/npm-cache && rm -rf /tmp/npm-cache

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --cache /tmp/npm-cache && rm -rf /tmp/npm-cache
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build

FROM ${NODE_IMAGE}
ENV NODE_ENV=production
WORKDIR /app
# Owned by root and read-only for the user the process runs as.
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY deploy/docker/healthcheck.mjs ./
# The `node` user (uid 1000) of the official Node.js images.
USER node
EXPOSE 8080 9901 9902
# Probes the admin listener's /healthz: FLEETGATE_ADMIN_LISTEN's port when set, else 9901 (proxy) or
# 9902 (agent). The slim image has no curl, hence Node's fetch.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["node", "/app/healthcheck.mjs"]
# The proxy's node flags (README: Memory). The agent runs under them too, at no cost worth a second
# entrypoint: its heap is small.
ENTRYPOINT ["node", "--no-memory-reducer", "--no-allocation-site-pretenuring", "/app/dist/cli.js"]
CMD ["proxy"]
