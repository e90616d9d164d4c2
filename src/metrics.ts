// Every Prometheus metric fleetgate exports, in one place. Each app gets a fresh Registry, never the
// global one, so tests can run many apps in one process. Names follow Prometheus conventions and borrow
// meanings from Traefik and Envoy; README lists them all.

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'

/** 1 ms to 120 s: loopback hits and Superset's slowest legitimate queries both land in a real bucket. */
export const DURATION_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

export function createRegistry (): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  return registry
}

export type ProxyMetrics = ReturnType<typeof createProxyMetrics>

/** Kept by whoever holds the source; a multi-process proxy takes them from its primary alone. */
export const DISCOVERY_METRICS: ReadonlySet<string> = new Set([
  'fleetgate_membership_changes_total',
  'fleetgate_membership_last_change_timestamp_seconds',
  'fleetgate_discovery_connected',
  'fleetgate_discovery_stale',
  'fleetgate_zookeeper_session_expirations_total',
  'fleetgate_invalid_registrations_total',
])

const INSTANCE_STATES = ['up', 'draining', 'ejected'] as const

/** Read at scrape time, so gauges of state (not events) are never out of date. */
export interface ProxyCollectors {
  readonly service: string
  readonly sourceKind: string
  instanceCounts(): Record<string, number>
  /** Each instance in the membership (its `instance` label) with its state. */
  instanceStates(): Iterable<readonly [instance: string, state: string]>
  discovery(): { connected: boolean, stale: boolean }
}

export function createProxyMetrics (registry: Registry, collectors: ProxyCollectors) {
  const registers = [registry]
  const { service } = collectors
  const source = { service, source: collectors.sourceKind }
  return {
    registry,
    requests: new Counter({
      name: 'fleetgate_requests_total',
      help: 'Requests answered, by the instance that answered (or "none") and the status code sent to the client',
      labelNames: ['service', 'instance', 'method', 'code'] as const,
      registers,
    }),
    requestDuration: new Histogram({
      name: 'fleetgate_request_duration_seconds',
      help: 'Time from the request arriving to the response ending, by instance',
      labelNames: ['service', 'instance'] as const,
      buckets: DURATION_BUCKETS_SECONDS,
      registers,
    }),
    inFlight: new Gauge({
      name: 'fleetgate_in_flight_requests',
      help: 'Requests being forwarded right now, by instance',
      labelNames: ['service', 'instance'] as const,
      registers,
    }),
    connectFailures: new Counter({
      name: 'fleetgate_upstream_connect_failures_total',
      help: 'Failed connects to an instance (refused, unreachable, timed out)',
      labelNames: ['service', 'instance'] as const,
      registers,
    }),
    retries: new Counter({
      name: 'fleetgate_retries_total',
      help: 'Requests sent again to another instance, by reason (connect_failure, reset_before_response)',
      labelNames: ['service', 'reason'] as const,
      registers,
    }),
    ejections: new Counter({
      name: 'fleetgate_ejections_total',
      help: 'Times an instance was ejected after failed connects (like envoy_cluster_outlier_detection_ejections_total)',
      labelNames: ['service', 'instance'] as const,
      registers,
    }),
    noLiveInstance: new Counter({
      name: 'fleetgate_no_live_instance_total',
      help: 'Requests answered 503 because no instance was live',
      labelNames: ['service'] as const,
      registers,
    }),
    instances: new Gauge({
      name: 'fleetgate_instances',
      help: 'Instances in the membership, by state (up, draining, ejected)',
      labelNames: ['service', 'state'] as const,
      registers,
      // Every worker of a multi-process proxy holds the same membership: merge, don't add.
      aggregator: 'max',
      collect () {
        for (const [state, count] of Object.entries(collectors.instanceCounts())) this.set({ service, state }, count)
      },
    }),
    instanceState: new Gauge({
      name: 'fleetgate_instance_state',
      help: 'Each instance in the membership: 1 for its state (up, draining, ejected), 0 for the others (like haproxy_server_status)',
      labelNames: ['service', 'instance', 'state'] as const,
      registers,
      aggregator: 'max',
      collect () {
        // Rebuilt from the pool at every scrape: an instance that left has no series at all.
        this.reset()
        for (const [instance, current] of collectors.instanceStates()) {
          for (const state of INSTANCE_STATES) this.set({ service, instance, state }, state === current ? 1 : 0)
        }
      },
    }),
    membershipChanges: new Counter({
      name: 'fleetgate_membership_changes_total',
      help: 'Membership changes applied',
      labelNames: ['service'] as const,
      registers,
    }),
    membershipLastChange: new Gauge({
      name: 'fleetgate_membership_last_change_timestamp_seconds',
      aggregator: 'max',
      help: 'When the membership last changed (Unix time)',
      labelNames: ['service'] as const,
      registers,
    }),
    discoveryConnected: new Gauge({
      name: 'fleetgate_discovery_connected',
      help: '1 while the discovery source is connected to its registry',
      labelNames: ['service', 'source'] as const,
      registers,
      collect () {
        this.set(source, collectors.discovery().connected ? 1 : 0)
      },
    }),
    discoveryStale: new Gauge({
      name: 'fleetgate_discovery_stale',
      help: '1 while the membership may lag the registry (serving the last known set)',
      labelNames: ['service', 'source'] as const,
      registers,
      collect () {
        this.set(source, collectors.discovery().stale ? 1 : 0)
      },
    }),
    sessionExpirations: new Counter({
      name: 'fleetgate_zookeeper_session_expirations_total',
      help: 'ZooKeeper sessions lost for good (expired, or abandoned by the watchdog) and rebuilt',
      labelNames: ['service'] as const,
      registers,
    }),
    invalidRegistrations: new Counter({
      name: 'fleetgate_invalid_registrations_total',
      help: 'Registrations skipped because they are not a usable instance, by reason',
      labelNames: ['service', 'reason'] as const,
      registers,
    }),
  }
}

export type AgentMetrics = ReturnType<typeof createAgentMetrics>

export function createAgentMetrics (registry: Registry) {
  const registers = [registry]
  return {
    registry,
    registered: new Gauge({
      name: 'fleetgate_agent_registered',
      help: '1 while the agent holds the instance\'s registration',
      labelNames: ['service', 'instance'] as const,
      registers,
    }),
    draining: new Gauge({
      name: 'fleetgate_agent_draining',
      help: '1 while the registration says draining (maintenance or shutdown)',
      labelNames: ['service', 'instance'] as const,
      registers,
    }),
    healthChecks: new Counter({
      name: 'fleetgate_agent_health_checks_total',
      help: 'Health checks of the local instance, by result (pass, fail)',
      labelNames: ['service', 'instance', 'result'] as const,
      registers,
    }),
    transitions: new Counter({
      name: 'fleetgate_agent_transitions_total',
      help: 'Health transitions after rise/fall (to healthy or unhealthy)',
      labelNames: ['service', 'instance', 'to'] as const,
      registers,
    }),
    sessionExpirations: new Counter({
      name: 'fleetgate_zookeeper_session_expirations_total',
      help: 'ZooKeeper sessions lost for good and rebuilt',
      labelNames: ['service'] as const,
      registers,
    }),
    registryConnected: new Gauge({
      name: 'fleetgate_agent_registry_connected',
      help: '1 while the agent is connected to its registry (0 while it waits for ZooKeeper)',
      labelNames: ['service', 'instance'] as const,
      registers,
    }),
  }
}
