// Consul for tests: the double (consul-double.ts) by default, or a real Consul agent when CONSUL_HTTP_ADDR
// is set (CONSUL_HTTP_TOKEN for its ACL token), plus a small client for what tests write and read.

import { execFileSync } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { request } from 'undici'
import { startConsulDouble, type ConsulDouble, type ConsulDoubleOptions } from './consul-double.ts'

/** Set when the Consul tests run against a real agent instead of the double. */
export const REAL_CONSUL = process.env.CONSUL_HTTP_ADDR || undefined

/** The skip reason for a test that needs the double's fault hooks or knobs; false when it can run. */
export function needsDouble (what: string): string | false {
  return REAL_CONSUL ? `needs the Consul double (${what}); CONSUL_HTTP_ADDR is set, so these tests use a real agent` : false
}

export interface ConsulTarget {
  /** http(s)://host:port */
  readonly address: string
  /** Undefined against a real agent. */
  readonly double: ConsulDouble | undefined
  readonly token: string | undefined
  readonly api: ConsulApi
}

/** The double (closed at teardown) or the real agent. Double options are ignored for a real agent. */
export async function consulTarget (t: Test, options: ConsulDoubleOptions = {}): Promise<ConsulTarget> {
  if (REAL_CONSUL) {
    const address = /^[a-z]+:\/\//i.test(REAL_CONSUL) ? REAL_CONSUL : `http://${REAL_CONSUL}`
    const token = process.env.CONSUL_HTTP_TOKEN || undefined
    return { address, double: undefined, token, api: new ConsulApi(address, token) }
  }
  const double = await startConsulDouble(options)
  t.teardown(() => double.close())
  return { address: double.address, double, token: options.aclToken, api: new ConsulApi(double.address, options.aclToken) }
}

/** The double of a target, for tests declared with `skip: needsDouble(...)`. */
export function doubleOf (target: ConsulTarget): ConsulDouble {
  if (!target.double) throw new Error('this test needs the Consul double')
  return target.double
}

/** A service name no other test (or earlier run against a real agent) uses. */
export function uniqueService (prefix: string): string {
  return `fg-${prefix}-${randomBytes(3).toString('hex')}`
}

export interface HealthAnswer {
  readonly status: number
  readonly index: number
  readonly entries: Array<{ Node: Record<string, unknown>, Service: Record<string, unknown>, Checks: Array<Record<string, unknown>> }>
  readonly text: string
  readonly elapsedMs: number
}

export class ConsulApi {
  constructor (readonly address: string, readonly token: string | undefined) {}

  async call (method: 'GET' | 'PUT', path: string, body?: unknown): Promise<{ status: number, text: string, headers: Record<string, unknown> }> {
    const res = await request(`${this.address}${path}`, {
      method,
      headers: { ...(this.token ? { 'x-consul-token': this.token } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      // A connection per request: a kept-alive one may be a socket the double's restart just destroyed.
      reset: true,
      headersTimeout: 15 * 60_000,
      bodyTimeout: 60_000,
    })
    return { status: res.statusCode, text: await res.body.text(), headers: res.headers }
  }

  async ok (method: 'GET' | 'PUT', path: string, body?: unknown): Promise<string> {
    const res = await this.call(method, path, body)
    if (res.status !== 200) throw new Error(`${method} ${path}: ${res.status} ${res.text}`)
    return res.text
  }

  /** Registers through the agent with a TTL check that starts passing (or as `status` says). */
  async register (def: {
    name: string, id: string, port: number, address?: string, tags?: string[], meta?: Record<string, string>,
    weight?: number, ttl?: string, status?: 'passing' | 'warning' | 'critical', deregisterAfter?: string,
  }): Promise<void> {
    await this.ok('PUT', '/v1/agent/service/register', {
      ID: def.id, Name: def.name, Port: def.port, Tags: def.tags ?? [], Meta: def.meta ?? {},
      ...(def.address === undefined ? {} : { Address: def.address }),
      ...(def.weight === undefined ? {} : { Weights: { Passing: def.weight, Warning: 1 } }),
      Check: {
        TTL: def.ttl ?? '10m', Status: def.status ?? 'passing',
        ...(def.deregisterAfter === undefined ? {} : { DeregisterCriticalServiceAfter: def.deregisterAfter }),
      },
    })
  }

  async deregister (id: string): Promise<number> {
    return (await this.call('PUT', `/v1/agent/service/deregister/${encodeURIComponent(id)}`)).status
  }

  async check (checkId: string, status: 'pass' | 'warn' | 'fail', note = ''): Promise<void> {
    await this.ok('PUT', `/v1/agent/check/${status}/${encodeURIComponent(checkId)}?note=${encodeURIComponent(note)}`)
  }

  async maintenance (serviceId: string, enable: boolean, reason = 'test'): Promise<void> {
    await this.ok('PUT', `/v1/agent/service/maintenance/${encodeURIComponent(serviceId)}?enable=${enable}&reason=${encodeURIComponent(reason)}`)
  }

  /** The agent's view of one service, or undefined (404). */
  async service (id: string): Promise<Record<string, unknown> | undefined> {
    const res = await this.call('GET', `/v1/agent/service/${encodeURIComponent(id)}`)
    if (res.status === 404) return undefined
    if (res.status !== 200) throw new Error(`GET agent service ${id}: ${res.status} ${res.text}`)
    return JSON.parse(res.text) as Record<string, unknown>
  }

  async checks (): Promise<Record<string, Record<string, unknown>>> {
    return JSON.parse(await this.ok('GET', '/v1/agent/checks')) as Record<string, Record<string, unknown>>
  }

  /** GET /v1/health/service/<name> with raw query parameters. */
  async health (name: string, query = ''): Promise<HealthAnswer> {
    const startedAt = Date.now()
    const res = await this.call('GET', `/v1/health/service/${encodeURIComponent(name)}${query ? `?${query}` : ''}`)
    const index = Number(res.headers['x-consul-index'])
    return {
      status: res.status, index, text: res.text, elapsedMs: Date.now() - startedAt,
      entries: res.status === 200 ? JSON.parse(res.text) as HealthAnswer['entries'] : [],
    }
  }
}

export interface TestCertificates {
  /** PEM file of the CA that signed the server certificate. */
  readonly caFile: string
  readonly key: Buffer
  readonly cert: Buffer
}

/** A throwaway CA and a server certificate for 127.0.0.1 (openssl), removed at teardown. */
export async function testCertificates (t: Test): Promise<TestCertificates> {
  const dir = await mkdtemp(join(tmpdir(), 'fleetgate-tls-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const run = (args: string[]): void => { execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' }) }
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']
  run(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=fleetgate test CA'])
  run(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1'])
  await writeFile(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n')
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf'])
  return { caFile: join(dir, 'ca.pem'), key: await readFile(join(dir, 'server.key')), cert: await readFile(join(dir, 'server.pem')) }
}
