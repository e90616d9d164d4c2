// Every Prometheus metric fleetgate exports, in one place. Each app gets a fresh Registry, never the
// global one, so tests can run many apps in one process. Names follow Prometheus conventions and borrow
// meanings from Traefik and Envoy; README lists them all.

import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Aggregator, type MetricObjectWithValues, type MetricValue, type MetricValueWithName } from 'prom-client'

/** 1 ms to 120 s: loopback hits and Superset's slowest legitimate queries both land in a real bucket. */
export const DURATION_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]

export function createRegistry (): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  return registry
}

export type ProxyMetrics = ReturnType<typeof createProxyMetrics>

type Labels = Readonly<Record<string, string | number>>
type CollectedValue = MetricValueWithName<string>

/**
 * Hands each series of a metric read at scrape time to `emit`: its labels in two parts, and its value.
 * `labels` should be the same object at every scrape while the series lives (an instance's service and
 * address): prom-client formats it once and keeps the text for as long as the object lives. `own` holds
 * the rest (a bucket's `le`, a request's method and code). A series is emitted once.
 */
export type CollectedRows = (emit: (labels: Labels, own: Labels | undefined, value: number, metricName?: string) => void) => void

/**
 * A metric's values from its rows. For the text format, each series' `labels` go as prom-client's
 * `sharedLabels`: prom-client's types leave that field out, but its text format (and its own histograms)
 * use it. test/unit/metrics.test.ts compares the text and the values with those of prom-client's own.
 */
function collectedValues (rows: CollectedRows, forText: boolean): CollectedValue[] {
  const values: CollectedValue[] = []
  rows(forText
    ? (labels, own, value, metricName) => { values.push({ labels: own ?? NO_LABELS, sharedLabels: labels, value, metricName } as CollectedValue) }
    : (labels, own, value, metricName) => { values.push({ labels: own === undefined ? labels : { ...labels, ...own }, value, metricName }) })
  return values
}

interface CollectedConfiguration { readonly name: string, readonly help: string, readonly aggregator?: Aggregator, readonly rows: CollectedRows }

/** A metric object of `type` from its rows (prom-client's types give `type` as an enum; at run time it is this string). */
function collectedMetric (config: CollectedConfiguration, type: 'counter' | 'gauge' | 'histogram', forText: boolean): MetricObjectWithValues<CollectedValue> {
  const { name, help, aggregator = 'sum', rows } = config
  return { name, help, type, aggregator, values: collectedValues(rows, forText) } as unknown as MetricObjectWithValues<CollectedValue>
}

/**
 * Counters and gauges of many series whose values are kept elsewhere, in plain numbers, and read at
 * scrape time. A prom-client metric filled by inc() or set() in its collect() hashes every series' label
 * values at every scrape, and formats every one of them again: at 10,000 instances, over 200 ms of a
 * scrape, with the event loop held. These give prom-client the series as they are. Registration, the
 * text format and the merging of workers' values are prom-client's.
 */
export class CollectedCounter<T extends string> extends Counter<T> {
  readonly #config: CollectedConfiguration

  constructor (config: ConstructorParameters<typeof Counter<T>>[0] & { rows: CollectedRows }) {
    const { rows: _rows, ...rest } = config
    super(rest)
    this.#config = config
  }

  override async get (): Promise<MetricObjectWithValues<MetricValue<T>>> {
    return collectedMetric(this.#config, 'counter', false)
  }

  async getForPromString (): Promise<MetricObjectWithValues<CollectedValue>> {
    return collectedMetric(this.#config, 'counter', true)
  }
}

/** The same as CollectedCounter, for a gauge. */
export class CollectedGauge<T extends string> extends Gauge<T> {
  readonly #config: CollectedConfiguration

  constructor (config: ConstructorParameters<typeof Gauge<T>>[0] & { rows: CollectedRows }) {
    const { rows: _rows, ...rest } = config
    super(rest)
    this.#config = config
  }

  override async get (): Promise<MetricObjectWithValues<MetricValue<T>>> {
    return collectedMetric(this.#config, 'gauge', false)
  }

  async getForPromString (): Promise<MetricObjectWithValues<CollectedValue>> {
    return collectedMetric(this.#config, 'gauge', true)
  }
}

/**
 * A histogram whose counts are kept elsewhere, in plain numbers, and read at scrape time. prom-client's
 * own observe() hashes the label values on every call; this one is never called per request. Across
 * workers, the primary adds the counts up itself (traffic-report.ts).
 */
export class CollectedHistogram<T extends string> extends Histogram<T> {
  readonly #config: CollectedConfiguration

  constructor (config: ConstructorParameters<typeof Histogram<T>>[0] & {
    buckets: readonly number[]
    series: () => Iterable<readonly [labels: Record<T, string>, counts: HistogramCounts]>
  }) {
    const { series, buckets, ...rest } = config
    super({ ...rest, buckets: [...buckets] })
    const { name } = rest
    const [bucket, sum, count] = [`${name}_bucket`, `${name}_sum`, `${name}_count`]
    // The `le` label of each bucket: one object each, the same at every scrape.
    const le = [...buckets, '+Inf'].map(bound => Object.freeze({ le: bound }))
    this.#config = {
      name,
      help: rest.help,
      rows: emit => {
        for (const [labels, counts] of series()) {
          let cumulative = 0
          for (let i = 0; i < buckets.length; i++) {
            cumulative += counts.buckets[i]!
            emit(labels, le[i], cumulative, bucket)
          }
          emit(labels, le[buckets.length], counts.count, bucket)
          emit(labels, undefined, counts.sum, sum)
          emit(labels, undefined, counts.count, count)
        }
      },
    }
  }

  override async get (): Promise<MetricObjectWithValues<MetricValueWithName<T>>> {
    return collectedMetric(this.#config, 'histogram', false)
  }

  /** The text format: each series' own labels given once, as prom-client's `sharedLabels` (see collectedValues). */
  async getForPromString (): Promise<MetricObjectWithValues<CollectedValue>> {
    return collectedMetric(this.#config, 'histogram', true)
  }
}

const NO_LABELS = Object.freeze({})

const INSTANCE_STATES = ['up', 'draining', 'ejected'] as const
const STATE_LABELS = INSTANCE_STATES.map(state => Object.freeze({ state }))

export type RetryReason = 'connect_failure' | 'reset_before_response'

export interface RequestCount {
  readonly method: string
  readonly code: string
  readonly count: number
}

/** Counts of one histogram series: non-cumulative, one per bucket plus the last for +Inf. */
export interface HistogramCounts {
  readonly buckets: ArrayLike<number>
  readonly sum: number
  readonly count: number
}

/** The plain counts each instance keeps besides its requests (see InstanceTraffic). */
export const INSTANCE_COUNTS = ['connectFailures', 'ejections', 'ejectionsAfterErrors', 'cutOffs'] as const
export type InstanceCount = typeof INSTANCE_COUNTS[number]

/** One instance's traffic, as plain numbers kept by the proxy. */
export interface InstanceTraffic {
  readonly instance: string
  readonly inFlight: number
  requests(): Iterable<RequestCount>
  readonly duration: HistogramCounts
  readonly connectFailures: number
  readonly ejections: number
  /** Of the ejections, those after --eject-after-errors failures in a row. */
  readonly ejectionsAfterErrors: number
  /** Responses the instance broke off after their headers. */
  readonly cutOffs: number
}

/** The proxy's traffic counts; the metrics read them at scrape time, so a request never touches prom-client. */
export interface Traffic {
  instances(): Iterable<InstanceTraffic>
  /** Requests no instance answered (counted under instance "none"). */
  unanswered(): Iterable<RequestCount>
  readonly retries: Readonly<Record<RetryReason, number>>
  readonly noLiveInstances: number
}

/** Read at scrape time, so gauges of state (not events) are never out of date. */
export interface ProxyCollectors {
  readonly service: string
  readonly sourceKind: string
  instanceCounts(): Record<string, number>
  /**
   * Each instance in the membership (its `instance` label) with its state. An instance listed more than
   * once is 1 in each state given: the workers of a multi-process proxy may see it in different ones.
   */
  instanceStates(): Iterable<readonly [instance: string, state: string]>
  discovery(): { connected: boolean, stale: boolean }
  /** Absent where no requests are served (the primary of a multi-process proxy). */
  readonly traffic?: Traffic
  /** Requests waiting for an instance under its connection limit; absent like traffic. */
  readonly queue?: { readonly size: number, readonly timeouts: number }
}

export function createProxyMetrics (registry: Registry, collectors: ProxyCollectors) {
  const registers = [registry]
  const { service } = collectors
  const source = { service, source: collectors.sourceKind }
  const { traffic } = collectors
  /** A collect() that rebuilds a traffic metric from the plain counts at every scrape (nothing without traffic). */
  const fromTraffic = <M extends { reset(): void }>(fill: (metric: M, traffic: Traffic) => void) =>
    function (this: M): void {
      if (!traffic) return
      this.reset()
      fill(this, traffic)
    }
  /** Each instance's labels: the same object at every scrape while its series live (see CollectedRows). */
  const labelsByInstance = new WeakMap<InstanceTraffic, Readonly<Record<'service' | 'instance', string>>>()
  const labelsOf = (series: InstanceTraffic): Readonly<Record<'service' | 'instance', string>> => {
    let labels = labelsByInstance.get(series)
    if (!labels) labelsByInstance.set(series, labels = Object.freeze({ service, instance: series.instance }))
    return labels
  }
  const unansweredLabels = Object.freeze({ service, instance: 'none' })
  /** A counter of one of each instance's plain counts, read at scrape time (nothing without traffic). */
  const instanceCounter = (name: string, help: string, count: InstanceCount): CollectedCounter<'service' | 'instance'> => new CollectedCounter({
    name,
    help,
    labelNames: ['service', 'instance'] as const,
    registers,
    rows: emit => {
      for (const series of traffic?.instances() ?? []) emit(labelsOf(series), undefined, series[count])
    },
  })
  /** fleetgate_instance_state's labels of each instance, kept from one scrape to the next while it is listed. */
  let stateLabels = new Map<string, Readonly<Record<'service' | 'instance', string>>>()
  return {
    registry,
    requests: new CollectedCounter({
      name: 'fleetgate_requests_total',
      help: 'Requests answered, by the instance that answered (or "none") and the status code sent to the client',
      labelNames: ['service', 'instance', 'method', 'code'] as const,
      registers,
      rows: emit => {
        if (!traffic) return
        for (const series of traffic.instances()) {
          for (const { method, code, count } of series.requests()) emit(labelsOf(series), { method, code }, count)
        }
        for (const { method, code, count } of traffic.unanswered()) emit(unansweredLabels, { method, code }, count)
      },
    }),
    requestDuration: new CollectedHistogram({
      name: 'fleetgate_request_duration_seconds',
      help: 'Time from the request arriving to the response ending, by instance',
      labelNames: ['service', 'instance'] as const,
      buckets: DURATION_BUCKETS_SECONDS,
      registers,
      series: function * () {
        for (const series of traffic?.instances() ?? []) yield [labelsOf(series), series.duration] as const
      },
    }),
    inFlight: new CollectedGauge({
      name: 'fleetgate_in_flight_requests',
      help: 'Requests being forwarded right now, by instance',
      labelNames: ['service', 'instance'] as const,
      registers,
      rows: emit => {
        for (const series of traffic?.instances() ?? []) emit(labelsOf(series), undefined, series.inFlight)
      },
    }),
    connectFailures: instanceCounter('fleetgate_upstream_connect_failures_total',
      'Failed connects to an instance (refused, unreachable, timed out)', 'connectFailures'),
    cutOffs: instanceCounter('fleetgate_responses_cut_off_total',
      'Responses an instance broke off after their headers (its connection reset, or silent for the idle timeout); the client connection is cut too', 'cutOffs'),
    retries: new Counter({
      name: 'fleetgate_retries_total',
      help: 'Requests sent again to another instance, by reason (connect_failure, reset_before_response)',
      labelNames: ['service', 'reason'] as const,
      registers,
      collect: fromTraffic<Counter<'service' | 'reason'>>((metric, traffic) => {
        for (const [reason, count] of Object.entries(traffic.retries)) metric.inc({ service, reason }, count)
      }),
    }),
    ejections: instanceCounter('fleetgate_ejections_total',
      'Times an instance was ejected after failed connects or, with --eject-after-errors, server errors in a row (like envoy_cluster_outlier_detection_ejections_total)', 'ejections'),
    ejectionsAfterErrors: instanceCounter('fleetgate_ejections_after_errors_total',
      'Of fleetgate_ejections_total, those after --eject-after-errors failures in a row (like envoy_cluster_outlier_detection_ejections_enforced_consecutive_5xx)', 'ejectionsAfterErrors'),
    noLiveInstance: new Counter({
      name: 'fleetgate_no_live_instance_total',
      help: 'Requests answered 503 because no instance was live',
      labelNames: ['service'] as const,
      registers,
      collect: fromTraffic<Counter<'service'>>((metric, traffic) => metric.inc({ service }, traffic.noLiveInstances)),
    }),
    queued: new Gauge({
      name: 'fleetgate_queued_requests',
      help: 'Requests waiting because every instance they may use is at --max-connections-per-instance (HAProxy\'s qcur)',
      labelNames: ['service'] as const,
      registers,
      collect () {
        if (collectors.queue) this.set({ service }, collectors.queue.size)
      },
    }),
    queueTimeouts: new Counter({
      name: 'fleetgate_queue_timeouts_total',
      help: 'Requests that waited --queue-timeout-ms for an instance under its connection limit in vain (503, or a retry\'s first failure)',
      labelNames: ['service'] as const,
      registers,
      collect () {
        if (!collectors.queue) return
        this.reset()
        this.inc({ service }, collectors.queue.timeouts)
      },
    }),
    instances: new Gauge({
      name: 'fleetgate_instances',
      help: 'Instances in the membership, by state (up, draining, ejected)',
      labelNames: ['service', 'state'] as const,
      registers,
      // Every worker of a multi-process proxy holds the same membership: merge, don't add. MergedTraffic
      // does that; the aggregator states the same rule in prom-client's terms (its test compares the two).
      aggregator: 'max',
      collect () {
        this.reset()
        for (const [state, count] of Object.entries(collectors.instanceCounts())) this.set({ service, state }, count)
      },
    }),
    instanceState: new CollectedGauge({
      name: 'fleetgate_instance_state',
      help: 'Each instance in the membership: 1 for each state it is in (up, draining, ejected; two where workers disagree), 0 for the others (like haproxy_server_status)',
      labelNames: ['service', 'instance', 'state'] as const,
      registers,
      aggregator: 'max',
      rows: emit => {
        // From the pool at every scrape: an instance that left has no series at all. One listed more than
        // once is 1 in each state given (and in none of the three for a state unknown here: a worker
        // newer than its primary).
        const states = new Map<string, number>()
        for (const [instance, state] of collectors.instanceStates()) {
          const bit = INSTANCE_STATES.indexOf(state as typeof INSTANCE_STATES[number])
          states.set(instance, (states.get(instance) ?? 0) | (bit >= 0 ? 1 << bit : 0))
        }
        const kept = new Map<string, Readonly<Record<'service' | 'instance', string>>>()
        for (const [instance, bits] of states) {
          const labels = stateLabels.get(instance) ?? Object.freeze({ service, instance })
          kept.set(instance, labels)
          for (let i = 0; i < INSTANCE_STATES.length; i++) emit(labels, STATE_LABELS[i], (bits >> i) & 1)
        }
        stateLabels = kept
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
      help: 'ZooKeeper sessions lost for good (expired, or given up when no server gave one back in time) and rebuilt',
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
