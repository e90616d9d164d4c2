// Upstreams: one undici connection pool per endpoint, kept alive across requests. A pool whose endpoint
// left the membership is closed gracefully: requests already running on it finish, nothing is cut.

import type { Socket } from 'node:net'
import { buildConnector, Pool as UndiciPool } from 'undici'
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

  readonly #connect: buildConnector.connector

  constructor (options: UpstreamOptions) {
    this.#options = options
    const connect = buildConnector({ timeout: options.connectTimeoutMs })
    this.#connect = (target, callback) => connect(target, (...result) => {
      if (result[1]) readsOnWhenWritesFail(result[1])
      callback(...result)
    })
  }

  get (endpoint: Endpoint): UndiciPool {
    let pool = this.#pools.get(endpoint)
    if (!pool) {
      pool = new UndiciPool(`http://${endpoint.address}`, {
        connect: this.#connect,
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

/** What a write gets once the instance has closed its end: it may have answered before it closed. */
const PEER_GONE = new Set(['EPIPE', 'ECONNRESET'])

/**
 * An instance may answer an upload before reading all of it (a 413, a 401) and close the connection.
 * Node takes the next write's EPIPE for the end of the socket and drops that answer unread; HAProxy
 * and Envoy read it. Here a write to an instance that has gone is dropped instead, and the reading
 * side tells how the exchange ended: the answer, or the reset (and then undici's error is the same).
 */
function readsOnWhenWritesFail (socket: Socket): void {
  const writable = socket as Socket & {
    _write(chunk: unknown, encoding: BufferEncoding, callback: (err?: Error | null) => void): void
    _writev(chunks: unknown[], callback: (err?: Error | null) => void): void
  }
  const write = writable._write
  const writev = writable._writev
  // Node passes every write the stream's one completion callback: one wrapper serves them all.
  let callback: ((err?: Error | null) => void) | undefined
  let wrapped: (err?: Error | null) => void = () => {}
  const tolerant = (original: (err?: Error | null) => void): ((err?: Error | null) => void) => {
    if (original !== callback) {
      callback = original
      wrapped = err => original(err && PEER_GONE.has((err as NodeJS.ErrnoException).code ?? '') ? null : err)
    }
    return wrapped
  }
  writable._write = function (chunk, encoding, done) { write.call(this, chunk, encoding, tolerant(done)) }
  writable._writev = function (chunks, done) { writev.call(this, chunks, tolerant(done)) }
}

