// Per-request instrumentation. A request only bumps plain numbers on its instance's series; the
// Prometheus metrics read them at scrape time (see `Traffic` in metrics.ts). prom-client hashes the
// label values on every inc() and observe(), which was the largest cost fleetgate itself added to a
// request. An instance's series are removed when it leaves and goes idle, so churning instances leave
// no trail of dead series.

import type { EjectionReason, Endpoint } from '../balancer/pool.ts'
import { DURATION_BUCKETS_SECONDS, type InstanceTraffic, type RequestCount, type RetryReason, type Traffic } from '../metrics.ts'

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT', 'OTHER'] as const
const METHOD_INDEX = new Map<string, number>(METHODS.map((method, i) => [method, i]))
const OTHER = METHODS.length - 1
/** A request is counted under one number, method index × CODES + status code: no string per request. */
const CODES = 1000

/** Recent latencies kept for the status page's p50/p99. */
const RECENT = 256

/** Counts by request key, read as (method, code, count). */
class RequestCounts extends Map<number, number> {
  add (method: string, statusCode: number): void {
    const key = (METHOD_INDEX.get(method) ?? OTHER) * CODES + statusCode
    this.set(key, (this.get(key) ?? 0) + 1)
  }

  * counts (): IterableIterator<RequestCount> {
    for (const [key, count] of this) yield { method: METHODS[Math.floor(key / CODES)]!, code: String(key % CODES), count }
  }
}

/**
 * The series of one `instance` label value (an address). Endpoints are keyed by id AND address, so an
 * instance re-registered under a new id at the same address (a ServerSet member after a session
 * expiry, an agent restarted with another --id) is a second endpoint with the same label values: both
 * share these series, which go only when neither uses them any more.
 */
class Series implements InstanceTraffic {
  /** Endpoints holding these series, not released yet: their requests in flight make the gauge. */
  readonly holders = new Set<Endpoint>()
  readonly requestCounts = new RequestCounts()
  readonly duration = { buckets: new Float64Array(DURATION_BUCKETS_SECONDS.length + 1), sum: 0, count: 0 }
  connectFailures = 0
  ejections = 0
  ejectionsAfterErrors = 0
  cutOffs = 0
  /** A ring buffer of the last latencies, newest overwriting oldest; made at the first request (a 10,000-instance fleet mostly idle would hold 20 MB of them). */
  recent: Float64Array | undefined
  recentCount = 0
  /** 5xx answers, failed connects, failures before an answer and responses cut off, for the status page. */
  errors = 0

  constructor (readonly instance: string) {}

  get inFlight (): number {
    let sum = 0
    for (const endpoint of this.holders) sum += endpoint.inflight
    return sum
  }

  requests (): IterableIterator<RequestCount> {
    return this.requestCounts.counts()
  }

  observe (seconds: number): void {
    const { buckets } = this.duration
    let bucket = 0
    while (bucket < DURATION_BUCKETS_SECONDS.length && seconds > DURATION_BUCKETS_SECONDS[bucket]!) bucket++
    buckets[bucket]!++
    this.duration.sum += seconds
    this.duration.count++
    this.recent ??= new Float64Array(RECENT)
    this.recent[this.recentCount++ % RECENT] = seconds
  }
}

/** One endpoint's hold on its series. */
interface Use {
  readonly series: Series | undefined
  /** Left the membership; the hold is released when its last request ends. */
  removed: boolean
  /** Released; late calls are ignored rather than re-creating series. */
  released: boolean
}

export class InstanceMetrics implements Traffic {
  readonly #uses = new WeakMap<Endpoint, Use>()
  readonly #series = new Map<string, Series>()
  /** Requests no instance answered (none was live). */
  readonly #unanswered = new RequestCounts()
  readonly #retries = { connect_failure: 0, reset_before_response: 0 }
  #noLiveInstance = 0

  /** The endpoint joined the membership: its series exist from 0. */
  added (endpoint: Endpoint): void {
    this.#use(endpoint)
  }

  /** One attempt on the endpoint ended, answered or not (`endpoint.inflight` already counts it out). */
  ended (endpoint: Endpoint): void {
    if (endpoint.inflight > 0) return
    const use = this.#uses.get(endpoint)
    // After this tick, so the request's own outcome is still counted before the series go.
    if (use !== undefined && use.removed && !use.released) setImmediate(() => this.#release(endpoint, use))
  }

  /**
   * A request answered: by `endpoint`, or for it, when the proxy answers the failure of the last instance
   * tried (a `503` after its refused connect, a `502` after a reset, which `errorCounted` says was counted
   * as its error already).
   */
  finished (endpoint: Endpoint | undefined, method: string, statusCode: number, seconds: number, errorCounted = false): void {
    if (!endpoint) return this.#unanswered.add(method, statusCode)
    const series = this.#live(endpoint)
    if (!series) return
    series.requestCounts.add(method, statusCode)
    series.observe(seconds)
    if (statusCode >= 500 && !errorCounted) series.errors++
  }

  connectFailure (endpoint: Endpoint): void {
    const series = this.#live(endpoint)
    if (!series) return
    series.connectFailures++
    // The request went elsewhere (or failed), but for this instance the attempt was an error.
    series.errors++
  }

  /**
   * The instance failed a request before any answer (a reset, a timeout, a broken answer): its error
   * whether the request goes on to another instance or is answered 502 or 504 for it.
   */
  failedBeforeAnswer (endpoint: Endpoint): void {
    const series = this.#live(endpoint)
    if (series) series.errors++
  }

  /**
   * The instance broke off a response after its headers: counted with the status it began with (by
   * finished()), and as this. An error of the instance either way, once.
   */
  cutOff (endpoint: Endpoint, statusCode: number): void {
    const series = this.#live(endpoint)
    if (!series) return
    series.cutOffs++
    if (statusCode < 500) series.errors++
  }

  ejected (endpoint: Endpoint, reason: EjectionReason): void {
    const series = this.#live(endpoint)
    if (!series) return
    series.ejections++
    if (reason === 'server-errors') series.ejectionsAfterErrors++
  }

  retry (reason: RetryReason): void {
    this.#retries[reason]++
  }

  noLiveInstance (): void {
    this.#noLiveInstance++
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
    if (endpoint.inflight === 0) this.#release(endpoint, use)
  }

  /** p50 and p99 of the last requests, in seconds, and the errors (5xx answers, failed connects and requests, cut-offs); for the status page. */
  summary (endpoint: Endpoint): { p50: number | null, p99: number | null, errors: number } {
    const series = this.#uses.get(endpoint)?.series
    if (!series?.recent || series.recentCount === 0) return { p50: null, p99: null, errors: series?.errors ?? 0 }
    const sorted = Array.from(series.recent.subarray(0, Math.min(RECENT, series.recentCount))).sort((a, b) => a - b)
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
    return { p50: at(0.5), p99: at(0.99), errors: series.errors }
  }

  // Traffic, read by the metrics at scrape time.

  instances (): IterableIterator<InstanceTraffic> {
    return this.#series.values()
  }

  unanswered (): IterableIterator<RequestCount> {
    return this.#unanswered.counts()
  }

  get retries (): Readonly<Record<RetryReason, number>> {
    return this.#retries
  }

  get noLiveInstances (): number {
    return this.#noLiveInstance
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
      series = new Series(instance)
      this.#series.set(instance, series)
    }
    series.holders.add(endpoint)
    use = { series, removed: false, released: false }
    this.#uses.set(endpoint, use)
    return use
  }

  #release (endpoint: Endpoint, use: Use): void {
    if (use.released || !use.series) return
    use.released = true
    const series = use.series
    series.holders.delete(endpoint)
    if (series.holders.size === 0) this.#series.delete(series.instance)
  }
}
