// Building blocks for end-to-end tests: the real `fleetgate proxy` process, a ZooKeeper client that
// registers instances the way fleetgate's agent does, real HTTP backends, and a bounded load loop.

import { spawn, type ChildProcess } from 'node:child_process'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { fileURLToPath } from 'node:url'
import zookeeper from 'node-zookeeper-client'
import type { Client } from 'node-zookeeper-client'
import type { Test } from 'tap'
import { request } from 'undici'
import { encodeCurator } from '../../src/membership/instance.ts'
import type { ProxyStatus } from '../../src/proxy/server.ts'
import { eventually } from './eventually.ts'
import { isRunning, track } from './reaper.ts'

export const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

export interface FleetgateProcess {
  readonly child: ChildProcess
  readonly pid: number
  /** Everything printed so far, stdout and stderr. */
  output(): string
  /** How many log lines so far carry this message (pino's `"msg"`). */
  logLines(msg: string): number
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>
  kill(signal?: NodeJS.Signals): void
  readonly exited: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/** Runs `node [nodeArgs] dist/cli.js <args>`; killed at teardown if still running. */
export function runFleetgate (t: Test, args: string[], env: Record<string, string> = {}, nodeArgs: string[] = []): FleetgateProcess {
  const child = spawn(process.execPath, [...nodeArgs, CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  track(child)
  let output = ''
  child.stdout!.setEncoding('utf8').on('data', (s: string) => { output += s })
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { output += s })
  const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => {
    child.once('exit', (code, signal) => resolve({ code, signal }))
  })
  t.teardown(async () => {
    if (!isRunning(child)) return
    child.kill('SIGCONT')
    child.kill('SIGKILL')
    await exited
  })
  return {
    child,
    pid: child.pid!,
    output: () => output,
    logLines: msg => output.split('\n').filter(line => line.includes(`"msg":${JSON.stringify(msg)}`)).length,
    exited,
    kill: (signal = 'SIGTERM') => { if (isRunning(child)) child.kill(signal) },
    waitForOutput: (pattern, timeoutMs = 10_000) => eventually<RegExpMatchArray>(() => output.match(pattern) as RegExpMatchArray, {
      timeoutMs, message: () => `output matching ${pattern}; got:\n${output.slice(-2000)}`,
    }),
  }
}

export interface ProxyProcess extends FleetgateProcess {
  readonly url: string
  readonly adminUrl: string
  status(): Promise<ProxyStatus>
  metrics(): Promise<string>
  ready(): Promise<boolean>
}

/**
 * `defaults` (flag, value pairs) with those `args` gives again left out, then `args`: fleetgate refuses a
 * flag given twice, and a test's own value wins.
 */
export function overriding (defaults: readonly string[], args: readonly string[]): string[] {
  const kept: string[] = []
  for (let i = 0; i < defaults.length; i += 2) if (!args.includes(defaults[i]!)) kept.push(defaults[i]!, defaults[i + 1]!)
  return [...kept, ...args]
}

/**
 * Starts `fleetgate proxy` on free loopback ports and waits until it listens (not until it is ready).
 * One process unless the test asks for `--workers`: the pid is then the one serving, for signals and RSS.
 */
export async function startProxy (t: Test, args: string[], env: Record<string, string> = {}, nodeArgs: string[] = []): Promise<ProxyProcess> {
  const proc = runFleetgate(t, ['proxy', ...overriding(['--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--workers', '1'], args)], env, nodeArgs)
  const line = await proc.waitForOutput(/"listen":"127\.0\.0\.1:(\d+)","admin":"127\.0\.0\.1:(\d+)"/, 30_000)
  const url = `http://127.0.0.1:${line[1]}`
  const adminUrl = `http://127.0.0.1:${line[2]}`
  return {
    ...proc,
    url,
    adminUrl,
    status: async () => (await request(`${adminUrl}/status`, { headers: { accept: 'application/json' } })).body.json() as Promise<ProxyStatus>,
    metrics: async () => (await request(`${adminUrl}/metrics`)).body.text(),
    ready: async () => {
      const res = await request(`${adminUrl}/readyz`)
      await res.body.dump()
      return res.statusCode === 200
    },
  }
}

/** The value of one Prometheus sample, matching every label given; 0 when absent. */
export function sample (metrics: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0
  for (const line of metrics.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) total += Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return total
}

/** A connected ZooKeeper client, closed at teardown. */
export async function zkClient (t: Test, connectString: string, sessionTimeoutMs = 10_000): Promise<Client> {
  const client = zookeeper.createClient(connectString, { sessionTimeout: sessionTimeoutMs, spinDelay: 100 })
  const connected = new Promise<void>(resolve => client.once('connected', () => resolve()))
  client.connect()
  await connected
  t.teardown(() => client.close())
  return client
}

export function zk<T> (fn: (cb: (err: unknown, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value as T))))
}

export async function ensurePath (client: Client, path: string): Promise<void> {
  await zk<string>(cb => client.mkdirp(path, cb))
}

/** Registers an EPHEMERAL child with raw data; the parent path is created when missing. */
export async function createChild (client: Client, parent: string, name: string, data: Buffer | string, ephemeral = true): Promise<void> {
  await ensurePath(client, parent)
  await zk<string>(cb => client.create(`${parent}/${name}`, Buffer.from(data), ephemeral ? zookeeper.CreateMode.EPHEMERAL : zookeeper.CreateMode.PERSISTENT, cb))
}

/** Registers an instance as fleetgate's agent does: Curator JSON, EPHEMERAL, under /services/<service>. */
export async function registerCurator (client: Client, options: { service?: string, id: string, port: number, host?: string, state?: 'up' | 'draining', weight?: number }): Promise<string> {
  const service = options.service ?? 'superset'
  await createChild(client, `/services/${service}`, options.id, curatorData({ ...options, service }))
  return `/services/${service}/${options.id}`
}

export function curatorData (options: { service?: string, id: string, port: number, host?: string, state?: 'up' | 'draining', weight?: number }): Buffer {
  return encodeCurator({
    service: options.service ?? 'superset', id: options.id, host: options.host ?? '127.0.0.1', port: options.port,
    state: options.state ?? 'up', weight: options.weight ?? 1, labels: {}, registrationTimeUTC: Date.now(),
  })
}

export async function removeNode (client: Client, path: string): Promise<void> {
  await zk<void>(cb => client.remove(path, -1, err => cb(err)))
}

export interface Backend {
  readonly name: string
  readonly port: number
  readonly server: Server
  hits: number
  /** Replaces the request handler (the default answers JSON naming the backend). */
  handle(handler: ((req: IncomingMessage, res: ServerResponse) => void) | undefined): void
  close(): Promise<void>
}

/** A real HTTP backend on 127.0.0.1:0 answering `{ "instance": name, ... }` and `x-served-by: name`. */
export async function startBackend (t: Test, name: string): Promise<Backend> {
  let custom: ((req: IncomingMessage, res: ServerResponse) => void) | undefined
  const backend: Backend = {
    name, port: 0, hits: 0, server: undefined as unknown as Server,
    handle: h => { custom = h },
    close: () => new Promise<void>(resolve => {
      backend.server.closeAllConnections()
      backend.server.close(() => resolve())
    }),
  }
  // Like gunicorn with --limit-request-line 0, as Superset's docs run it: long URLs are fine.
  const server = createServer({ maxHeaderSize: 256 * 1024 }, (req, res) => {
    backend.hits++
    res.setHeader('x-served-by', name)
    if (custom) return custom(req, res)
    req.resume()
    req.on('end', () => {
      res.setHeader('content-type', 'application/json')
      res.end(JSON.stringify({ instance: name, method: req.method, url: req.url, headers: req.headers }))
    })
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  Object.assign(backend, { server, port: (server.address() as AddressInfo).port })
  t.teardown(() => backend.server.listening ? backend.close() : undefined)
  return backend
}

export interface LoadResult {
  ok: number
  failed: number
  /** Successful responses per `x-served-by`. */
  byInstance: Record<string, number>
  /** First few failures, for messages. */
  errors: string[]
}

/**
 * The end of a run through trouble that must not have emptied the pool: lets `load` send 50 more
 * requests (`after`: what they come after), stops it, and checks that the proxy never published a
 * membership without an instance and that no request failed.
 */
export async function expectPoolNeverEmpty (t: Test, proxy: FleetgateProcess, load: ReturnType<typeof loadLoop>, after: string): Promise<void> {
  const sent = load.result.ok + load.result.failed
  await eventually(() => load.result.ok + load.result.failed > sent + 50, { message: `traffic ${after}` })
  const result = await load.stop()
  t.notMatch(proxy.output(), /"instances":0,"msg":"membership changed"/, 'the pool never went empty')
  t.equal(result.failed, 0, `no failed request (${result.errors.join('; ')})`)
}

/**
 * Sends GETs with `concurrency` workers until `stop()` resolves or `maxRequests` have been sent, whichever
 * comes first (always bounded by `maxMs`). A request fails on a network error or a non-2xx status.
 */
export function loadLoop (url: string, options: { concurrency?: number, maxRequests?: number, maxMs?: number, path?: string, pauseMs?: number } = {}): { result: LoadResult, stop(): Promise<LoadResult> } {
  const result: LoadResult = { ok: 0, failed: 0, byInstance: {}, errors: [] }
  const deadline = Date.now() + (options.maxMs ?? 60_000)
  const maxRequests = options.maxRequests ?? 100_000
  let sent = 0
  let stopped = false
  const worker = async (): Promise<void> => {
    while (!stopped && sent < maxRequests && Date.now() < deadline) {
      sent++
      try {
        const res = await request(`${url}${options.path ?? '/load'}`)
        const body = res.statusCode >= 200 && res.statusCode < 300 ? (await res.body.dump(), '') : await res.body.text()
        if (res.statusCode >= 200 && res.statusCode < 300) {
          result.ok++
          const by = String(res.headers['x-served-by'])
          result.byInstance[by] = (result.byInstance[by] ?? 0) + 1
        } else {
          result.failed++
          if (result.errors.length < 5) result.errors.push(`status ${res.statusCode} ${body.slice(0, 200)}`)
        }
      } catch (err) {
        result.failed++
        if (result.errors.length < 5) result.errors.push(String(err))
      }
      // Paced, so a long run does not spend its request bound before the part that matters.
      if (options.pauseMs) await new Promise(resolve => setTimeout(resolve, options.pauseMs))
    }
  }
  const workers = Promise.all(Array.from({ length: options.concurrency ?? 4 }, worker))
  return {
    result,
    stop: async () => {
      stopped = true
      await workers
      return result
    },
  }
}

/** GET through the proxy; returns status, the backend that served it, and the body. */
export async function get (url: string, path = '/', method: 'GET' | 'POST' = 'GET'): Promise<{ status: number, servedBy: string | undefined, body: string, headers: Record<string, unknown> }> {
  const res = await request(`${url}${path}`, { method, body: method === 'POST' ? 'payload' : undefined })
  const body = await res.body.text()
  const servedBy = res.headers['x-served-by']
  return { status: res.statusCode, servedBy: servedBy === undefined ? undefined : String(servedBy), body, headers: res.headers }
}

/**
 * Writes raw bytes to the proxy and returns what it answered before closing, or after 5 s; with `until`,
 * as soon as the answer so far passes it (a keep-alive answer leaves the connection open).
 */
export function raw (url: string, payload: string | Buffer, options: { destroyAfterWrite?: boolean, until?: (answer: string) => boolean } = {}): Promise<string> {
  const { port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1')
    let answer = ''
    const timer = setTimeout(() => { socket.destroy(); resolve(answer) }, 5_000)
    socket.setEncoding('utf8').on('data', (s: string) => {
      answer += s
      if (options.until?.(answer)) socket.destroy()
    })
    socket.on('close', () => { clearTimeout(timer); resolve(answer) })
    socket.on('error', err => { clearTimeout(timer); options.destroyAfterWrite ? resolve(answer) : reject(err) })
    socket.write(payload, () => { if (options.destroyAfterWrite) socket.destroy() })
  })
}
