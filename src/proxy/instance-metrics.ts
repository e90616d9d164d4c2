// Per-request instrumentation. Label children are cached per instance (a lookup per request is the
// cost that matters at 20k req/s), and an instance's series are removed when it leaves and goes idle,
// so churning instances leaves no trail of dead series.

import type { Endpoint } from '../balancer/pool.ts'
import type { ProxyMetrics } from '../metrics.ts'

type RequestsChild = ReturnType<ProxyMetrics['requests']['labels']>

/**
 * The series of one `instance` label value (an address). Endpoints are keyed by id AND address, so an
 * instance re-registered under a new id at the same address (a ServerSet member after a session
 * expiry, an agent restarted with another --id) is a second endpoint with the same label values: both
 * share these series, which go only when neither uses them any more.
 */
interface Series {
  readonly instance: string
  readonly inFlight: ReturnType<ProxyMetrics['inFlight']['labels']>
  readonly duration: ReturnType<ProxyMetrics['requestDuration']['labels']>
  readonly connectFailures: ReturnType<ProxyMetrics['connectFailures']['labels']>
  readonly ejections: ReturnType<ProxyMetrics['ejections']['labels']>
  readonly requests: Map<string, RequestsChild>
  /** Recent latencies for the status page's p50/p99 (a ring buffer, newest overwriting oldest). */
  readonly recent: Float64Array
  recentCount: number
  errors: number
  /** Endpoints holding these series that are not released yet. */
  users: number
}

/** One endpoint's hold on its series. */
interface Use {
  readonly series: Series | undefined
  /** Left the membership; the hold is released when its last request ends. */
  removed: boolean
  /** Released; late calls are ignored rather than re-creating series. */
  released: boolean
}

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT'])
const RECENT = 256

export class InstanceMetrics {
  readonly #metrics: ProxyMetrics
  readonly #service: string
  readonly #uses = new WeakMap<Endpoint, Use>()
  readonly #series = new Map<string, Series>()
  readonly #none: Map<string, RequestsChild> = new Map()

  constructor (metrics: ProxyMetrics, service: string) {
    this.#metrics = metrics
    this.#service = service
  }

  /** The endpoint joined the membership: its gauges and failure counters start at 0. */
  added (endpoint: Endpoint): void {
    this.#use(endpoint)
  }

  started (endpoint: Endpoint): void {
    this.#live(endpoint)?.inFlight.inc()
  }

  ended (endpoint: Endpoint): void {
    const use = this.#use(endpoint)
    if (use.released || !use.series) return
    use.series.inFlight.dec()
    // After this tick, so the request's own outcome is still counted before the series go.
    if (use.removed && endpoint.inflight === 0) setImmediate(() => this.#release(use))
  }

  finished (endpoint: Endpoint | undefined, method: string, statusCode: number, seconds: number): void {
    const key = `${KNOWN_METHODS.has(method) ? method : 'OTHER'} ${statusCode}`
    if (!endpoint) {
      let counter = this.#none.get(key)
      if (!counter) {
        counter = this.#metrics.requests.labels(this.#service, 'none', key.split(' ')[0]!, String(statusCode))
        this.#none.set(key, counter)
      }
      counter.inc()
      return
    }
    const series = this.#live(endpoint)
    if (!series) return
    let counter = series.requests.get(key)
    if (!counter) {
      counter = this.#metrics.requests.labels(this.#service, series.instance, key.split(' ')[0]!, String(statusCode))
      series.requests.set(key, counter)
    }
    counter.inc()
    series.duration.observe(seconds)
    series.recent[series.recentCount++ % RECENT] = seconds
    if (statusCode >= 500) series.errors++
  }

  connectFailure (endpoint: Endpoint): void {
    const series = this.#live(endpoint)
    if (!series) return
    series.connectFailures.inc()
    // The request went elsewhere (or failed), but for this instance the attempt was an error.
    series.errors++
  }

  ejected (endpoint: Endpoint): void {
    this.#live(endpoint)?.ejections.inc()
  }

  retry (reason: 'connect_failure' | 'reset_before_response'): void {
    this.#metrics.retries.labels(this.#service, reason).inc()
  }

  noLiveInstance (): void {
    this.#metrics.noLiveInstance.labels(this.#service).inc()
  }

  /** p50 and p99 of the last requests, in seconds, and the errors (5xx answers and failed connects); for the status page. */
  summary (endpoint: Endpoint): { p50: number | null, p99: number | null, errors: number } {
    const series = this.#uses.get(endpoint)?.series
    if (!series || series.recentCount === 0) return { p50: null, p99: null, errors: series?.errors ?? 0 }
    const sorted = Array.from(series.recent.subarray(0, Math.min(RECENT, series.recentCount))).sort((a, b) => a - b)
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
    return { p50: at(0.5), p99: at(0.99), errors: series.errors }
  }

  /** The endpoint left the membership: its series go once its last request ends. */
  removed (endpoint: Endpoint): void {
    const use = this.#uses.get(endpoint)
    if (!use) {
      // Never used: nothing to remove, and nothing may be created for it later.
      this.#uses.set(endpoint, { series: undefined, removed: true, released: true })
      return
    }
    use.removed = true
    if (endpoint.inflight === 0) this.#release(use)
  }

  /** Series currently held, by instance label; for tests. */
  get instances (): string[] {
    return [...this.#series.keys()]
  }

  /** The endpoint's series, unless it has released them. */
  #live (endpoint: Endpoint): Series | undefined {
    const use = this.#use(endpoint)
    return use.released ? undefined : use.series
  }

  #use (endpoint: Endpoint): Use {
    let use = this.#uses.get(endpoint)
    if (use) return use
    const instance = endpoint.address
    let series = this.#series.get(instance)
    if (!series) {
      const labels = [this.#service, instance] as const
      series = {
        instance,
        inFlight: this.#metrics.inFlight.labels(...labels),
        duration: this.#metrics.requestDuration.labels(...labels),
        connectFailures: this.#metrics.connectFailures.labels(...labels),
        ejections: this.#metrics.ejections.labels(...labels),
        requests: new Map(),
        recent: new Float64Array(RECENT),
        recentCount: 0,
        errors: 0,
        users: 0,
      }
      // Counters that exist from 0 let rate() and increase() see their first event; one that appears
      // at 1 looks like it was always 1 (an instance whose very first connect fails is ejected at once).
      series.inFlight.set(0)
      series.connectFailures.inc(0)
      series.ejections.inc(0)
      this.#series.set(instance, series)
    }
    series.users++
    use = { series, removed: false, released: false }
    this.#uses.set(endpoint, use)
    return use
  }

  #release (use: Use): void {
    if (use.released || !use.series) return
    use.released = true
    const series = use.series
    if (--series.users > 0) return
    this.#series.delete(series.instance)
    const labels = { service: this.#service, instance: series.instance }
    this.#metrics.requestDuration.remove(labels)
    this.#metrics.inFlight.remove(labels)
    this.#metrics.connectFailures.remove(labels)
    this.#metrics.ejections.remove(labels)
    for (const key of series.requests.keys()) {
      const [method, code] = key.split(' ') as [string, string]
      this.#metrics.requests.remove(this.#service, series.instance, method, code)
    }
    series.requests.clear()
  }
}
