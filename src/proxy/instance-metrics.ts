// Per-request instrumentation. Label children are cached per endpoint (a lookup per request is the
// cost that matters at 20k req/s), and an endpoint's series are removed when it leaves and goes idle,
// so churning instances leaves no trail of dead series.

import type { Endpoint } from '../balancer/pool.ts'
import type { ProxyMetrics } from '../metrics.ts'

interface Children {
  readonly instance: string
  readonly inFlight: ReturnType<ProxyMetrics['inFlight']['labels']>
  readonly duration: ReturnType<ProxyMetrics['requestDuration']['labels']>
  readonly requests: Map<string, ReturnType<ProxyMetrics['requests']['labels']>>
  /** Recent latencies for the status page's p50/p99 (a ring buffer, newest overwriting oldest). */
  readonly recent: Float64Array
  recentCount: number
  errors: number
  /** Left the membership; series go when its last request ends. */
  removed: boolean
  /** Series gone; late calls are ignored rather than re-creating them. */
  dropped: boolean
}

const KNOWN_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'CONNECT'])
const RECENT = 256

export class InstanceMetrics {
  readonly #metrics: ProxyMetrics
  readonly #service: string
  readonly #children = new WeakMap<Endpoint, Children>()
  readonly #none: Map<string, ReturnType<ProxyMetrics['requests']['labels']>> = new Map()

  constructor (metrics: ProxyMetrics, service: string) {
    this.#metrics = metrics
    this.#service = service
  }

  started (endpoint: Endpoint): void {
    const children = this.#for(endpoint)
    if (!children.dropped) children.inFlight.inc()
  }

  ended (endpoint: Endpoint): void {
    const children = this.#for(endpoint)
    if (children.dropped) return
    children.inFlight.dec()
    // After this tick, so the request's own outcome is still counted before the series go.
    if (children.removed && endpoint.inflight === 0) setImmediate(() => this.#drop(children))
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
    const children = this.#for(endpoint)
    if (children.dropped) return
    let counter = children.requests.get(key)
    if (!counter) {
      counter = this.#metrics.requests.labels(this.#service, children.instance, key.split(' ')[0]!, String(statusCode))
      children.requests.set(key, counter)
    }
    counter.inc()
    children.duration.observe(seconds)
    children.recent[children.recentCount++ % RECENT] = seconds
    if (statusCode >= 500) children.errors++
  }

  connectFailure (endpoint: Endpoint): void {
    const children = this.#for(endpoint)
    if (!children.dropped) this.#metrics.connectFailures.labels(this.#service, children.instance).inc()
  }

  ejected (endpoint: Endpoint): void {
    const children = this.#for(endpoint)
    if (!children.dropped) this.#metrics.ejections.labels(this.#service, children.instance).inc()
  }

  retry (reason: 'connect_failure' | 'reset_before_response'): void {
    this.#metrics.retries.labels(this.#service, reason).inc()
  }

  noLiveInstance (): void {
    this.#metrics.noLiveInstance.labels(this.#service).inc()
  }

  /** p50 and p99 of the last requests, in seconds, and the 5xx count; for the status page. */
  summary (endpoint: Endpoint): { p50: number | null, p99: number | null, errors: number } {
    const children = this.#children.get(endpoint)
    if (!children || children.recentCount === 0) return { p50: null, p99: null, errors: children?.errors ?? 0 }
    const sorted = Array.from(children.recent.subarray(0, Math.min(RECENT, children.recentCount))).sort((a, b) => a - b)
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
    return { p50: at(0.5), p99: at(0.99), errors: children.errors }
  }

  /** The endpoint left the membership: its series go once its last request ends. */
  removed (endpoint: Endpoint): void {
    const children = this.#for(endpoint)
    children.removed = true
    if (endpoint.inflight === 0) this.#drop(children)
  }

  #for (endpoint: Endpoint): Children {
    let children = this.#children.get(endpoint)
    if (!children) {
      const instance = endpoint.address
      children = {
        instance,
        inFlight: this.#metrics.inFlight.labels(this.#service, instance),
        duration: this.#metrics.requestDuration.labels(this.#service, instance),
        requests: new Map(),
        recent: new Float64Array(RECENT),
        recentCount: 0,
        errors: 0,
        removed: false,
        dropped: false,
      }
      this.#children.set(endpoint, children)
    }
    return children
  }

  #drop (children: Children): void {
    if (children.dropped) return
    children.dropped = true
    this.#clear(children.instance)
    for (const key of children.requests.keys()) {
      const [method, code] = key.split(' ') as [string, string]
      this.#metrics.requests.remove(this.#service, children.instance, method, code)
    }
    children.requests.clear()
  }

  #clear (instance: string): void {
    const labels = { service: this.#service, instance }
    for (const metric of [this.#metrics.requestDuration, this.#metrics.inFlight, this.#metrics.connectFailures, this.#metrics.ejections]) {
      (metric as { remove(labels: Record<string, string>): void }).remove(labels)
    }
  }
}
