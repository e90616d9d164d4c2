// Upstreams: one undici connection pool per endpoint, kept alive across requests. A pool whose endpoint
// left the membership is closed gracefully: requests already running on it finish, nothing is cut.

import { Pool as UndiciPool } from 'undici'
import type { Endpoint } from '../balancer/pool.ts'

export interface UpstreamOptions {
  readonly connectTimeoutMs: number
  /** Below the instances' own keep-alive (gunicorn's default is 2 s), so an idle socket is never reused as it closes. */
  readonly keepAliveTimeoutMs: number
  readonly maxHeaderBytes: number
  /** Connections per instance at most (0: no limit); the pool never lets more requests start. */
  readonly maxConnections: number
}

export class Upstreams {
  readonly #options: UpstreamOptions
  readonly #pools = new Map<Endpoint, UndiciPool>()

  constructor (options: UpstreamOptions) {
    this.#options = options
  }

  get (endpoint: Endpoint): UndiciPool {
    let pool = this.#pools.get(endpoint)
    if (!pool) {
      pool = new UndiciPool(`http://${endpoint.address}`, {
        connect: { timeout: this.#options.connectTimeoutMs },
        // The proxy times headers and body itself (deadlines.ts), without a timer object per request.
        headersTimeout: 0,
        bodyTimeout: 0,
        keepAliveTimeout: this.#options.keepAliveTimeoutMs,
        keepAliveMaxTimeout: this.#options.keepAliveTimeoutMs,
        maxHeaderSize: this.#options.maxHeaderBytes,
        pipelining: 1,
        connections: this.#options.maxConnections || null,
      })
      this.#pools.set(endpoint, pool)
    }
    return pool
  }

  /** The endpoint left: stop taking requests for it, let the running ones finish, then free its sockets. */
  release (endpoint: Endpoint): Promise<void> {
    const pool = this.#pools.get(endpoint)
    if (!pool) return Promise.resolve()
    this.#pools.delete(endpoint)
    return pool.close().catch(() => undefined)
  }

  async close (): Promise<void> {
    const pools = [...this.#pools.values()]
    this.#pools.clear()
    await Promise.all(pools.map(pool => pool.close().catch(() => undefined)))
  }

  /** Cuts everything at once: for a shutdown whose deadline passed. */
  async destroy (): Promise<void> {
    const pools = [...this.#pools.values()]
    this.#pools.clear()
    await Promise.all(pools.map(pool => pool.destroy().catch(() => undefined)))
  }
}
