// Building blocks for the agent's end-to-end tests: the real `fleetgate agent` process, backends whose
// /health can be turned off, reading the agent's znode, and the demo backend as a wrapped command.

import { fileURLToPath } from 'node:url'
import type { Client, Stat } from 'node-zookeeper-client'
import type { Test } from 'tap'
import { request } from 'undici'
import type { AgentStatus } from '../../src/agent/agent.ts'
import { overriding, runFleetgate, startBackend, zk, type Backend, type FleetgateProcess } from './fleet.ts'
import { fourLetterWord } from './zookeeper.ts'

export const DEMO_BACKEND = fileURLToPath(new URL('../../dist/demo/backend.js', import.meta.url))

export interface AgentProcess extends FleetgateProcess {
  readonly adminUrl: string
  status(): Promise<AgentStatus>
  metrics(): Promise<string>
  /** PUT (true) or DELETE (false) /maintenance; resolves with the HTTP status. */
  maintenance(draining: boolean): Promise<number>
  /** Sends `signal` (SIGTERM) and resolves with the exit code and how long the agent took to exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null, ms: number }>
}

export interface AgentOptions {
  readonly zookeeper: string
  readonly service: string
  /** The instance's port on 127.0.0.1: --advertise and --target. */
  readonly port: number
  /** More flags; these win over the fast test defaults below. */
  readonly args?: readonly string[]
  /** Wrapper mode: the command after `--`. */
  readonly command?: readonly string[]
}

/**
 * Fast defaults for tests: checks every 100 ms (rise 2, fall 3), 1.5 s drain. The session timeout stays
 * at its 10 s default: a busy machine must not expire sessions in tests that are not about expiry.
 */
export const FAST = ['--health-interval-ms', '100', '--health-timeout-ms', '1000', '--drain-ms', '1500', '--log-level', 'debug']

/** Starts `fleetgate agent` with its admin on a free port; resolves once it listens. Killed at teardown. */
export async function startAgent (t: Test, options: AgentOptions): Promise<AgentProcess> {
  const args = [
    'agent', ...overriding([
      '--zookeeper', options.zookeeper, '--service', options.service,
      '--advertise', `127.0.0.1:${options.port}`, '--target', `http://127.0.0.1:${options.port}`,
      '--admin-listen', '127.0.0.1:0', ...FAST,
    ], options.args ?? []),
    ...(options.command ? ['--', ...options.command] : []),
  ]
  const proc = runFleetgate(t, args)
  // Generous: on a loaded machine a Node process can take seconds to start.
  const line = await proc.waitForOutput(/"admin":"(http:\/\/127\.0\.0\.1:\d+)"/, 30_000)
  const adminUrl = line[1]!
  // A failed test shows what the agent logged (health check lines left out).
  t.teardown(() => {
    if (t.passing()) return
    const lines = proc.output().split('\n').filter(l => l !== '' && !l.includes('"health check failed"'))
    t.comment(`agent ${adminUrl} log (last 40 lines):\n${lines.slice(-40).join('\n')}`)
  })
  return {
    ...proc,
    adminUrl,
    status: async () => (await request(`${adminUrl}/status`)).body.json() as Promise<AgentStatus>,
    metrics: async () => (await request(`${adminUrl}/metrics`)).body.text(),
    maintenance: async draining => {
      const res = await request(`${adminUrl}/maintenance`, { method: draining ? 'PUT' : 'DELETE' })
      await res.body.dump()
      return res.statusCode
    },
    stop: async (signal = 'SIGTERM') => {
      const startedAt = performance.now()
      proc.kill(signal)
      const { code } = await proc.exited
      return { code, ms: Math.round(performance.now() - startedAt) }
    },
  }
}

export interface Arrival {
  /** When the load generator sent it (its `x-sent-at` header), epoch ms; NaN without the header. */
  readonly sentAt: number
  readonly arrivedAt: number
}

export interface HealthBackend extends Backend {
  /** Whether GET /health answers 200 (true) or 503 (false). */
  healthy: boolean
  /** Every non-health request, in arrival order. */
  arrivals: Arrival[]
}

/** A backend whose /health can be switched off; other requests answer as startBackend's do, after `delayMs()`. */
export async function startHealthBackend (t: Test, name: string, delayMs: () => number = () => 0): Promise<HealthBackend> {
  const backend = await startBackend(t, name) as HealthBackend
  backend.healthy = true
  backend.arrivals = []
  backend.handle((req, res) => {
    if (req.url === '/health') {
      backend.hits--
      res.statusCode = backend.healthy ? 200 : 503
      res.end(backend.healthy ? 'OK' : 'down')
      return
    }
    backend.arrivals.push({ sentAt: Number(req.headers['x-sent-at']), arrivedAt: Date.now() })
    req.resume()
    const answer = (): void => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ instance: name }))
    }
    const delay = delayMs()
    if (delay > 0) setTimeout(answer, delay)
    else answer()
  })
  return backend
}

/** The znode's data and stat, or undefined when it does not exist. */
export async function readNode (client: Client, path: string): Promise<{ data: Buffer, stat: Stat } | undefined> {
  try {
    return await new Promise((resolve, reject) => {
      client.getData(path, (err, data, stat) => (err ? reject(err) : resolve({ data, stat })))
    })
  } catch (err) {
    if ((err as { getCode?: () => number }).getCode?.() === -101) return undefined
    throw err
  }
}

export async function children (client: Client, path: string): Promise<string[]> {
  try {
    return await zk<string[]>(cb => client.getChildren(path, cb))
  } catch (err) {
    if ((err as { getCode?: () => number }).getCode?.() === -101) return []
    throw err
  }
}

/** A znode's creation time (ZooKeeper's clock, which is this machine's), epoch ms. */
export function createdAtMs (stat: Stat): number {
  return Number(stat.ctime.readBigInt64BE())
}

/** ZooKeeper's count of sessions it has expired (`mntr` zk_stale_sessions_expired). */
export async function expiredSessions (port: number): Promise<number> {
  const answer = await fourLetterWord(port, 'mntr')
  const match = answer.match(/^zk_stale_sessions_expired\s+(\d+)/m)
  if (!match) throw new Error(`no zk_stale_sessions_expired in mntr: ${answer.slice(0, 200)}`)
  return Number(match[1])
}

export interface SteadyLoadResult {
  sent: number
  ok: number
  failed: number
  /** Successful responses per `x-served-by`. */
  byInstance: Record<string, number>
  /** First few failures, for messages. */
  errors: string[]
}

/**
 * An open loop: GETs at `ratePerSecond` whatever the latency (unlike a closed loop, a slow instance does
 * not slow the offered load), each stamped with `x-sent-at`. Bounded by maxRequests and maxMs, and by
 * `maxInFlight` so a stuck proxy cannot pile up sockets. A request fails on a network error or a non-2xx.
 */
export function steadyLoad (url: string, options: { ratePerSecond: number, maxMs: number, maxRequests: number, maxInFlight?: number }): {
  result: SteadyLoadResult
  /** When the oldest request still running was sent; Infinity when none is running. */
  oldestRunningSentAt(): number
  stop(): Promise<SteadyLoadResult>
} {
  const result: SteadyLoadResult = { sent: 0, ok: 0, failed: 0, byInstance: {}, errors: [] }
  const startedAt = Date.now()
  const inFlight = new Map<Promise<void>, number>()
  const fail = (why: string): void => {
    result.failed++
    if (result.errors.length < 5) result.errors.push(why)
  }
  const send = async (sentAt: number): Promise<void> => {
    try {
      const res = await request(`${url}/load/${result.sent}`, { headers: { 'x-sent-at': String(sentAt) } })
      if (res.statusCode >= 200 && res.statusCode < 300) {
        await res.body.dump()
        result.ok++
        const by = String(res.headers['x-served-by'])
        result.byInstance[by] = (result.byInstance[by] ?? 0) + 1
      } else {
        fail(`status ${res.statusCode} ${(await res.body.text()).slice(0, 200)}`)
      }
    } catch (err) {
      fail(String(err))
    }
  }
  const timer = setInterval(() => {
    const elapsedMs = Date.now() - startedAt
    if (elapsedMs > options.maxMs || result.sent >= options.maxRequests) {
      clearInterval(timer)
      return
    }
    const due = Math.min(options.maxRequests, Math.floor((elapsedMs * options.ratePerSecond) / 1000))
    while (result.sent < due && inFlight.size < (options.maxInFlight ?? 1000)) {
      result.sent++
      const sentAt = Date.now()
      const p = send(sentAt).finally(() => inFlight.delete(p))
      inFlight.set(p, sentAt)
    }
  }, 5)
  return {
    result,
    oldestRunningSentAt: () => Math.min(Infinity, ...inFlight.values()),
    stop: async () => {
      clearInterval(timer)
      while (inFlight.size > 0) await Promise.all([...inFlight.keys()])
      return result
    },
  }
}
