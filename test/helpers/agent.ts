// Building blocks for the agent's end-to-end tests: the real `fleetgate agent` process, backends whose
// /health can be turned off, reading the agent's znode, and the demo backend as a wrapped command.

import { fileURLToPath } from 'node:url'
import type { Client, Stat } from 'node-zookeeper-client'
import type { Test } from 'tap'
import { request } from 'undici'
import type { AgentStatus } from '../../src/agent/agent.ts'
import { runFleetgate, startBackend, zk, type Backend, type FleetgateProcess } from './fleet.ts'

export const DEMO_BACKEND = fileURLToPath(new URL('../../dist/demo/backend.js', import.meta.url))

export interface AgentProcess extends FleetgateProcess {
  readonly adminUrl: string
  status(): Promise<AgentStatus>
  metrics(): Promise<string>
  /** PUT (true) or DELETE (false) /maintenance; resolves with the HTTP status. */
  maintenance(draining: boolean): Promise<number>
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

/** Fast defaults for tests: checks every 100 ms, rise 2, fall 3, 2 s sessions, 1.5 s drain. */
export const FAST = ['--health-interval-ms', '100', '--health-timeout-ms', '500', '--session-timeout-ms', '2000', '--drain-ms', '1500', '--log-level', 'debug']

/** Starts `fleetgate agent` with its admin on a free port; resolves once it listens. Killed at teardown. */
export async function startAgent (t: Test, options: AgentOptions): Promise<AgentProcess> {
  const args = [
    'agent', '--zookeeper', options.zookeeper, '--service', options.service,
    '--advertise', `127.0.0.1:${options.port}`, '--target', `http://127.0.0.1:${options.port}`,
    '--admin-listen', '127.0.0.1:0', ...FAST, ...(options.args ?? []),
    ...(options.command ? ['--', ...options.command] : []),
  ]
  const proc = runFleetgate(t, args)
  const line = await proc.waitForOutput(/"admin":"(http:\/\/127\.0\.0\.1:\d+)"/)
  const adminUrl = line[1]!
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

/** Resolves with Date.now() when `path` is next created (or at once if it exists). */
export function whenCreated (client: Client, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    client.exists(path, () => resolve(Date.now()), (err, stat) => {
      if (err) reject(err)
      else if (stat) resolve(Date.now())
    })
  })
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
export function steadyLoad (url: string, options: { ratePerSecond: number, maxMs: number, maxRequests: number, maxInFlight?: number }): { result: SteadyLoadResult, stop(): Promise<SteadyLoadResult> } {
  const result: SteadyLoadResult = { sent: 0, ok: 0, failed: 0, byInstance: {}, errors: [] }
  const startedAt = Date.now()
  const inFlight = new Set<Promise<void>>()
  const fail = (why: string): void => {
    result.failed++
    if (result.errors.length < 5) result.errors.push(why)
  }
  const send = async (): Promise<void> => {
    try {
      const res = await request(`${url}/load/${result.sent}`, { headers: { 'x-sent-at': String(Date.now()) } })
      await res.body.dump()
      if (res.statusCode >= 200 && res.statusCode < 300) {
        result.ok++
        const by = String(res.headers['x-served-by'])
        result.byInstance[by] = (result.byInstance[by] ?? 0) + 1
      } else {
        fail(`status ${res.statusCode}`)
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
      const p = send().finally(() => inFlight.delete(p))
      inFlight.add(p)
    }
  }, 5)
  return {
    result,
    stop: async () => {
      clearInterval(timer)
      while (inFlight.size > 0) await Promise.all([...inFlight])
      return result
    },
  }
}
