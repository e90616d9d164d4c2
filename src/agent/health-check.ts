// Health of the local instance: one probe (HTTP GET or TCP connect) under a timeout, the rise/fall
// thresholds that turn a stream of probe results into transitions, and the loop that runs them.

import { request as httpRequest, type ClientRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { connect } from 'node:net'

/** unknown until the first threshold is met; after that only a full rise or fall changes it. */
export type Health = 'unknown' | 'healthy' | 'unhealthy'

export interface ProbeResult {
  readonly ok: boolean
  /** `HTTP 200`, `ECONNREFUSED`, `timeout after 1000 ms`: what an operator reads in the log. */
  readonly detail: string
  readonly durationMs: number
}

/** One health check of the local instance. Never rejects: a failure is a result. */
export type Probe = () => Promise<ProbeResult>

/**
 * GET `url`; any 2xx or 3xx is healthy. One fresh connection per check (like HAProxy's httpchk), so a
 * stale keep-alive socket can never make a dead instance look alive or a live one look dead.
 */
export function httpProbe (url: URL, timeoutMs: number): Probe {
  const request = url.protocol === 'https:' ? httpsRequest : httpRequest
  return () => timed(timeoutMs, settle => {
    const req: ClientRequest = request(url, {
      method: 'GET',
      agent: false,
      headers: { connection: 'close', 'user-agent': 'fleetgate-agent' },
      // The target is the instance beside us; whether its certificate is valid is not its health.
      rejectUnauthorized: false,
    }, res => {
      const status = res.statusCode ?? 0
      res.resume()
      res.on('error', () => {})
      settle(status >= 200 && status < 400, `HTTP ${status}`)
      req.destroy()
    })
    req.on('error', err => settle(false, errorDetail(err)))
    req.end()
    return () => req.destroy()
  })
}

/** Connects to host:port and closes again; healthy if the connection is accepted. */
export function tcpProbe (host: string, port: number, timeoutMs: number): Probe {
  return () => timed(timeoutMs, settle => {
    const socket = connect({ host, port })
    socket.once('connect', () => {
      settle(true, 'connected')
      socket.destroy()
    })
    socket.once('error', err => settle(false, errorDetail(err)))
    return () => socket.destroy()
  })
}

function timed (timeoutMs: number, run: (settle: (ok: boolean, detail: string) => void) => () => void): Promise<ProbeResult> {
  const startedAt = performance.now()
  return new Promise(resolve => {
    let done = false
    let abort: (() => void) | undefined
    const settle = (ok: boolean, detail: string): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      resolve({ ok, detail, durationMs: Math.round(performance.now() - startedAt) })
    }
    const timer = setTimeout(() => {
      settle(false, `timeout after ${timeoutMs} ms`)
      abort?.()
    }, timeoutMs)
    try {
      abort = run(settle)
    } catch (err) {
      settle(false, errorDetail(err))
    }
  })
}

function errorDetail (err: unknown): string {
  const e = err as NodeJS.ErrnoException
  return e?.code ?? e?.message ?? String(err)
}

export interface RiseFallOptions {
  /** Passing checks in a row that make the instance healthy. */
  readonly rise: number
  /** Failing checks in a row that make it unhealthy. */
  readonly fall: number
}

/**
 * Turns probe results into health, like Nerve and HAProxy: `rise` passes in a row make the instance
 * healthy, `fall` failures in a row unhealthy. record() returns the new health on a transition only.
 */
export class RiseFall {
  readonly #rise: number
  readonly #fall: number
  #health: Health = 'unknown'
  #passes = 0
  #failures = 0

  constructor (options: RiseFallOptions) {
    if (!(options.rise >= 1 && options.fall >= 1)) throw new RangeError('rise and fall must be at least 1')
    this.#rise = options.rise
    this.#fall = options.fall
  }

  get health (): Health {
    return this.#health
  }

  /** Passes (or failures) in a row so far; the other count is 0. */
  get streak (): { passes: number, failures: number } {
    return { passes: this.#passes, failures: this.#failures }
  }

  record (ok: boolean): Health | undefined {
    if (ok) {
      this.#passes++
      this.#failures = 0
      if (this.#health !== 'healthy' && this.#passes >= this.#rise) return this.#become('healthy')
    } else {
      this.#failures++
      this.#passes = 0
      if (this.#health !== 'unhealthy' && this.#failures >= this.#fall) return this.#become('unhealthy')
    }
    return undefined
  }

  #become (health: Health): Health {
    this.#health = health
    return health
  }
}

export interface HealthCheckerOptions {
  readonly probe: Probe
  readonly intervalMs: number
  readonly riseFall: RiseFall
  /** Called after every probe, with the new health when the probe caused a transition. */
  readonly onResult: (result: ProbeResult, transition: Health | undefined) => void
}

/** Runs the probe every intervalMs (measured from the start of one probe to the next; never two at once). */
export class HealthChecker {
  readonly #options: HealthCheckerOptions
  #timer: NodeJS.Timeout | undefined
  #running = false
  #stopped = true

  constructor (options: HealthCheckerOptions) {
    this.#options = options
  }

  get health (): Health {
    return this.#options.riseFall.health
  }

  /** The first probe runs at once, so a healthy instance registers after (rise - 1) intervals. */
  start (): void {
    if (!this.#stopped) return
    this.#stopped = false
    void this.#tick()
  }

  stop (): void {
    this.#stopped = true
    clearTimeout(this.#timer)
  }

  async #tick (): Promise<void> {
    if (this.#stopped || this.#running) return
    this.#running = true
    const startedAt = performance.now()
    try {
      const result = await this.#options.probe()
      if (this.#stopped) return
      const transition = this.#options.riseFall.record(result.ok)
      this.#options.onResult(result, transition)
    } finally {
      this.#running = false
      if (!this.#stopped) {
        const delayMs = Math.max(0, this.#options.intervalMs - (performance.now() - startedAt))
        this.#timer = setTimeout(() => { void this.#tick() }, delayMs)
      }
    }
  }
}
