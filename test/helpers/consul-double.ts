// A stateful Consul HTTP double on 127.0.0.1, for tests on a machine without a Consul binary (FIELD-NOTES
// §5). It keeps a catalog of nodes, services and checks with Raft-like indexes, and serves the parts of
// the API fleetgate uses with Consul's semantics: blocking queries (index, wait, jitter), `passing`, `tag`,
// `dc`, the Node.Address fallback, agent register/deregister, TTL checks that pass and expire,
// DeregisterCriticalServiceAfter reaping, maintenance mode, 400 for bad parameters, and ACLs (403 for an
// unknown token or a write it may not make; health reads filtered to what the token may see, as Consul
// filters them, with X-Consul-Results-Filtered-By-ACLs for a token but not for a request without one).
// Fault hooks: canned error answers, dropped long polls, the listener down and up, a lower index.
//
// Where it is knowingly simpler than Consul: only TTL checks (HTTP/TCP checks are refused with 400, not
// run); one datacenter; no anti-entropy delay (a change is visible at once); ACLs know a token that may
// do everything, optionally one that may read nothing, and the anonymous token, which may read nothing.

import { randomUUID } from 'node:crypto'
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo, Socket } from 'node:net'

export type CheckStatus = 'passing' | 'warning' | 'critical'

export interface ConsulDoubleOptions {
  /** Default dc1. */
  readonly datacenter?: string
  /** The node the agent endpoints act on. Default node-1 at 127.0.0.1. */
  readonly nodeName?: string
  readonly nodeAddress?: string
  /** The Raft index the double starts at. Default 10. */
  readonly startIndex?: number
  /** Turns ACLs on: requests need this token (X-Consul-Token, Authorization: Bearer, or ?token=). */
  readonly aclToken?: string
  /** With ACLs on, a known token that may read nothing and write nothing. */
  readonly restrictedToken?: string
  /** Consul's floor for DeregisterCriticalServiceAfter is one minute; tests may lower it. */
  readonly deregisterMinimumMs?: number
  /** How often the reaper looks for services critical for too long. Consul: 30 s. */
  readonly reapIntervalMs?: number
  /** Add up to wait/16 to a blocking query's hold, as Consul does. Default true. */
  readonly jitter?: boolean
  /** Serve https with this key and certificate (PEM). */
  readonly tls?: { readonly key: string | Buffer, readonly cert: string | Buffer }
}

export interface HealthQueryRecord {
  readonly atMs: number
  readonly service: string
  /** The `index` parameter as sent; undefined when absent. */
  readonly index: string | undefined
  readonly wait: string | undefined
  readonly status: number
  readonly heldMs: number
}

export type DoubleChange =
  | { readonly type: 'service', readonly atMs: number, readonly node: string, readonly id: string, readonly registered: boolean }
  | { readonly type: 'check', readonly atMs: number, readonly node: string, readonly checkId: string, readonly serviceId: string, readonly status: CheckStatus | 'removed' }

/** A canned answer for requests whose path matches. */
export interface Fault {
  /** Default: health queries only. */
  readonly match?: RegExp
  /** Answer with this status and text... */
  readonly status?: number
  readonly body?: string
  /** ...or destroy the socket without answering. */
  readonly drop?: boolean
  /** The X-Consul-Index of the canned answer (a string as it is, to send one that is not a number); default the current index. */
  readonly index?: number | string
  /** Only this many times; default until cleared. */
  readonly times?: number
}

export interface RestartOptions {
  /** The index after the restart; lower than before to test a watcher's reset. Default: unchanged. */
  readonly index?: number
  /** false: the agent comes back without the services and checks registered through it (a dev agent). Default true. */
  readonly keepState?: boolean
}

export interface ConsulDouble {
  /** http://127.0.0.1:<port> (https with the tls option). */
  readonly address: string
  readonly port: number
  readonly datacenter: string
  readonly nodeName: string
  /** The current Raft index. */
  readonly index: number
  readonly listening: boolean
  /** Every health query answered (or dropped), in order. */
  readonly healthQueries: readonly HealthQueryRecord[]
  /** Every change of a service or check, in order, with the time it happened. */
  readonly changes: readonly DoubleChange[]
  /** How many blocking queries are being held right now. */
  readonly held: number
  /** The status of a check on the agent's node (or another), undefined when it does not exist. */
  checkStatus(checkId: string, node?: string): CheckStatus | undefined
  /** A service registered on a node (the agent's by default), as Consul stores it. */
  service(id: string, node?: string): Record<string, unknown> | undefined
  /** A check's definition as registered (TTL and DeregisterCriticalServiceAfter in ms). */
  checkDefinition(checkId: string, node?: string): { ttlMs?: number, deregisterAfterMs?: number, status: CheckStatus } | undefined
  /** Sets (or clears, with undefined) a fault on later requests. */
  fault(fault: Fault | undefined): void
  /** Destroys the sockets of the blocking queries being held now; returns how many. */
  dropHeldQueries(): number
  /** Moves the index (e.g. down, as a restored snapshot would) without touching the listener. */
  setIndex(index: number): void
  /** Takes the listener down: connections are destroyed, new ones refused. State is kept, TTL timers pause. */
  stop(): Promise<void>
  /** Listens again on the same port; TTL timers start afresh. */
  start(): Promise<void>
  restart(options?: RestartOptions): Promise<void>
  close(): Promise<void>
}

interface NodeRecord {
  ID: string
  Node: string
  Address: string
  Datacenter: string
  TaggedAddresses: Record<string, string>
  Meta: Record<string, string>
  CreateIndex: number
  ModifyIndex: number
}

interface ServiceRecord {
  node: string
  /** Registered through /v1/agent (lost when the agent restarts without state). */
  viaAgent: boolean
  ID: string
  Service: string
  Tags: string[]
  Address: string
  Port: number
  Meta: Record<string, string>
  Weights: { Passing: number, Warning: number }
  EnableTagOverride: boolean
  CreateIndex: number
  ModifyIndex: number
}

interface CheckRecord {
  Node: string
  CheckID: string
  Name: string
  Status: CheckStatus
  Notes: string
  Output: string
  ServiceID: string
  ServiceName: string
  ServiceTags: string[]
  Type: string
  CreateIndex: number
  ModifyIndex: number
  viaAgent: boolean
  ttlMs: number | undefined
  deregisterAfterMs: number | undefined
  criticalSinceMs: number | undefined
  timer: NodeJS.Timeout | undefined
}

class HttpError extends Error {
  constructor (readonly status: number, message: string) {
    super(message)
  }
}

const MAX_WAIT_MS = 10 * 60_000
const DEFAULT_WAIT_MS = 5 * 60_000
const META_KEY = /^[A-Za-z0-9_-]{1,128}$/
const STATUSES: readonly CheckStatus[] = ['passing', 'warning', 'critical']

/** Parses a Go duration (`10s`, `1m30s`, `250ms`, `1.5h`) into ms; undefined when it is not one. */
export function parseGoDuration (text: string): number | undefined {
  if (text === '0') return 0
  const units: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 }
  const part = /(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/y
  let total = 0
  let at = 0
  if (text.length === 0) return undefined
  while (at < text.length) {
    part.lastIndex = at
    const m = part.exec(text)
    if (!m) return undefined
    total += Number(m[1]) * units[m[2]!]!
    at = part.lastIndex
  }
  return total
}

export async function startConsulDouble (options: ConsulDoubleOptions = {}): Promise<ConsulDouble> {
  const datacenter = options.datacenter ?? 'dc1'
  const nodeName = options.nodeName ?? 'node-1'
  const deregisterMinimumMs = options.deregisterMinimumMs ?? 60_000
  const reapIntervalMs = options.reapIntervalMs ?? 30_000
  const jitter = options.jitter ?? true

  let index = options.startIndex ?? 10
  /** The index of the last change that touched each service name (kept after the service is gone). */
  const serviceIndex = new Map<string, number>()
  /** The index of the last registration or removal of any service: what an unknown service answers. */
  let servicesTableIndex = index
  const nodes = new Map<string, NodeRecord>()
  const services = new Map<string, ServiceRecord>()
  const checks = new Map<string, CheckRecord>()
  const key = (node: string, id: string): string => `${node}\u0000${id}`
  const wakers = new Set<() => void>()
  const heldSockets = new Set<Socket>()
  const sockets = new Set<Socket>()
  const healthQueries: HealthQueryRecord[] = []
  const changes: DoubleChange[] = []
  let fault: (Fault & { left: number }) | undefined
  let listening = false
  let reaper: NodeJS.Timeout | undefined

  const addNode = (name: string, address: string): NodeRecord => {
    const existing = nodes.get(name)
    if (existing) {
      if (existing.Address !== address) {
        existing.Address = address
        existing.TaggedAddresses = { lan: address, wan: address }
        existing.ModifyIndex = bump(servicesOn(name))
      }
      return existing
    }
    const created = ++index
    const node: NodeRecord = {
      ID: randomUUID(), Node: name, Address: address, Datacenter: datacenter,
      TaggedAddresses: { lan: address, wan: address }, Meta: {}, CreateIndex: created, ModifyIndex: created,
    }
    nodes.set(name, node)
    checks.set(key(name, 'serfHealth'), {
      Node: name, CheckID: 'serfHealth', Name: 'Serf Health Status', Status: 'passing', Notes: '', Output: 'Agent alive and reachable',
      ServiceID: '', ServiceName: '', ServiceTags: [], Type: '', CreateIndex: created, ModifyIndex: created,
      viaAgent: false, ttlMs: undefined, deregisterAfterMs: undefined, criticalSinceMs: undefined, timer: undefined,
    })
    return node
  }

  function servicesOn (node: string): string[] {
    return [...services.values()].filter(s => s.node === node).map(s => s.Service)
  }

  /** A change: the index moves on, the touched services take it, and every held query looks again. */
  function bump (touched: Iterable<string>, table = false): number {
    index++
    for (const name of touched) serviceIndex.set(name, index)
    if (table) servicesTableIndex = index
    for (const wake of [...wakers]) wake()
    return index
  }

  const indexOf = (service: string): number => Math.max(1, serviceIndex.get(service) ?? servicesTableIndex)

  addNode(nodeName, options.nodeAddress ?? '127.0.0.1')

  // --- checks ------------------------------------------------------------------------------------------

  const setCheckStatus = (check: CheckRecord, status: CheckStatus, output: string): void => {
    if (check.Status === status && check.Output === output) return
    if (status === 'critical' && check.Status !== 'critical') check.criticalSinceMs = Date.now()
    if (status !== 'critical') check.criticalSinceMs = undefined
    const statusChanged = check.Status !== status
    check.Status = status
    check.Output = output
    check.ModifyIndex = bump(check.ServiceName ? [check.ServiceName] : servicesOn(check.Node))
    if (statusChanged) changes.push({ type: 'check', atMs: Date.now(), node: check.Node, checkId: check.CheckID, serviceId: check.ServiceID, status })
  }

  const armTtl = (check: CheckRecord): void => {
    clearTimeout(check.timer)
    check.timer = undefined
    if (check.ttlMs === undefined || !listening) return
    check.timer = setTimeout(() => {
      check.timer = undefined
      setCheckStatus(check, 'critical', `TTL expired (last output before timeout follows): ${check.Output}`)
    }, check.ttlMs)
    check.timer.unref()
  }

  const removeCheck = (check: CheckRecord): void => {
    clearTimeout(check.timer)
    checks.delete(key(check.Node, check.CheckID))
    changes.push({ type: 'check', atMs: Date.now(), node: check.Node, checkId: check.CheckID, serviceId: check.ServiceID, status: 'removed' })
  }

  interface CheckDefinition {
    CheckID?: unknown
    ID?: unknown
    Name?: unknown
    Notes?: unknown
    Status?: unknown
    TTL?: unknown
    DeregisterCriticalServiceAfter?: unknown
    HTTP?: unknown
    TCP?: unknown
    Args?: unknown
    GRPC?: unknown
  }

  const buildCheck = (node: string, service: ServiceRecord | undefined, def: CheckDefinition, defaultId: string, viaAgent: boolean, previous: CheckRecord | undefined): CheckRecord => {
    if (def.HTTP !== undefined || def.TCP !== undefined || def.Args !== undefined || def.GRPC !== undefined) {
      throw new HttpError(400, 'Invalid check: the Consul double runs TTL checks only')
    }
    const checkId = typeof def.CheckID === 'string' && def.CheckID ? def.CheckID : typeof def.ID === 'string' && def.ID ? def.ID : defaultId
    let ttlMs: number | undefined
    if (def.TTL !== undefined) {
      ttlMs = typeof def.TTL === 'string' ? parseGoDuration(def.TTL) : undefined
      if (ttlMs === undefined || ttlMs <= 0) throw new HttpError(400, `Invalid check: TTL must be > 0 for TTL checks (${JSON.stringify(def.TTL)})`)
    } else if (viaAgent) {
      throw new HttpError(400, 'Invalid check: TTL must be > 0 for TTL checks')
    }
    let deregisterAfterMs: number | undefined
    if (def.DeregisterCriticalServiceAfter !== undefined) {
      deregisterAfterMs = typeof def.DeregisterCriticalServiceAfter === 'string' ? parseGoDuration(def.DeregisterCriticalServiceAfter) : undefined
      if (deregisterAfterMs === undefined) throw new HttpError(400, `Invalid check: bad DeregisterCriticalServiceAfter ${JSON.stringify(def.DeregisterCriticalServiceAfter)}`)
      deregisterAfterMs = Math.max(deregisterAfterMs, deregisterMinimumMs)
    }
    let status: CheckStatus = 'critical'
    if (def.Status !== undefined && def.Status !== '') {
      if (!STATUSES.includes(def.Status as CheckStatus)) throw new HttpError(400, `Invalid check status: ${JSON.stringify(def.Status)}`)
      status = def.Status as CheckStatus
    }
    // Consul carries the status and output of a check that already existed over a re-registration.
    const created = previous?.CreateIndex ?? index + 1
    return {
      Node: node, CheckID: checkId,
      Name: typeof def.Name === 'string' && def.Name ? def.Name : service ? `Service '${service.Service}' check` : checkId,
      Status: previous?.Status ?? status, Notes: typeof def.Notes === 'string' ? def.Notes : '', Output: previous?.Output ?? '',
      ServiceID: service?.ID ?? '', ServiceName: service?.Service ?? '', ServiceTags: service?.Tags ?? [],
      Type: ttlMs !== undefined ? 'ttl' : '', CreateIndex: created, ModifyIndex: previous?.ModifyIndex ?? created,
      viaAgent, ttlMs, deregisterAfterMs,
      criticalSinceMs: (previous?.Status ?? status) === 'critical' ? (previous?.criticalSinceMs ?? Date.now()) : undefined,
      timer: undefined,
    }
  }

  // --- services ----------------------------------------------------------------------------------------

  interface ServiceDefinition {
    ID?: unknown
    Name?: unknown
    Service?: unknown
    Tags?: unknown
    Address?: unknown
    Port?: unknown
    Meta?: unknown
    Weights?: unknown
    EnableTagOverride?: unknown
    Check?: unknown
    Checks?: unknown
  }

  const registerService = (node: string, def: ServiceDefinition, viaAgent: boolean): void => {
    const name = typeof def.Name === 'string' ? def.Name : typeof def.Service === 'string' ? def.Service : ''
    if (!name) throw new HttpError(400, 'Missing service name')
    const id = typeof def.ID === 'string' && def.ID ? def.ID : name
    if (def.Port !== undefined && (!Number.isInteger(def.Port) || (def.Port as number) < 0 || (def.Port as number) > 65535)) {
      throw new HttpError(400, `Request decode failed: invalid Port ${JSON.stringify(def.Port)}`)
    }
    const meta: Record<string, string> = {}
    if (def.Meta !== undefined && def.Meta !== null) {
      if (typeof def.Meta !== 'object') throw new HttpError(400, 'Request decode failed: Meta must be an object')
      for (const [k, v] of Object.entries(def.Meta as Record<string, unknown>)) {
        if (!META_KEY.test(k) || k.startsWith('consul-')) throw new HttpError(400, `Invalid Service Meta: Key ${JSON.stringify(k)} is invalid`)
        if (typeof v !== 'string' || v.length > 512) throw new HttpError(400, `Invalid Service Meta: Value for key ${JSON.stringify(k)} is too long or not a string`)
        meta[k] = v
      }
      if (Object.keys(meta).length > 64) throw new HttpError(400, 'Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs')
    }
    const weights = { Passing: 1, Warning: 1 }
    if (def.Weights !== undefined && def.Weights !== null) {
      const w = def.Weights as { Passing?: unknown, Warning?: unknown }
      if (w.Passing !== undefined) weights.Passing = Number(w.Passing)
      if (w.Warning !== undefined) weights.Warning = Number(w.Warning)
      if (!Number.isInteger(weights.Passing) || weights.Passing < 1) throw new HttpError(400, 'Invalid Weights: Passing must be greater than 0')
    }
    const tags = Array.isArray(def.Tags) ? def.Tags.filter((tag): tag is string => typeof tag === 'string') : []
    const checkDefs: CheckDefinition[] = []
    if (def.Check !== undefined && def.Check !== null) checkDefs.push(def.Check as CheckDefinition)
    if (Array.isArray(def.Checks)) checkDefs.push(...(def.Checks as CheckDefinition[]))

    const k = key(node, id)
    const previous = services.get(k)
    const record: ServiceRecord = {
      node, viaAgent, ID: id, Service: name, Tags: tags,
      Address: typeof def.Address === 'string' ? def.Address : '', Port: (def.Port as number | undefined) ?? 0,
      Meta: meta, Weights: weights, EnableTagOverride: def.EnableTagOverride === true,
      CreateIndex: previous?.CreateIndex ?? index + 1, ModifyIndex: previous?.ModifyIndex ?? index + 1,
    }
    const newChecks = checkDefs.map((c, i) => {
      const defaultId = checkDefs.length === 1 ? `service:${id}` : `service:${id}:${i + 1}`
      const cid = typeof c.CheckID === 'string' && c.CheckID ? c.CheckID : typeof c.ID === 'string' && c.ID ? c.ID : defaultId
      return buildCheck(node, record, c, defaultId, viaAgent, checks.get(key(node, cid)))
    })

    const same = (a: object | undefined, b: object): boolean => JSON.stringify(a) === JSON.stringify(b)
    const comparable = (s: ServiceRecord | undefined): object | undefined => s && { ...s, CreateIndex: 0, ModifyIndex: 0 }
    const serviceChanged = !same(comparable(previous), comparable(record)!)
    const oldChecks = [...checks.values()].filter(c => c.Node === node && c.ServiceID === id && !c.CheckID.startsWith('_service_maintenance:'))
    const gone = oldChecks.filter(c => !newChecks.some(n => n.CheckID === c.CheckID))
    const checksChanged = gone.length > 0 || newChecks.some(n => {
      const old = checks.get(key(node, n.CheckID))
      return !old || old.Name !== n.Name || old.Notes !== n.Notes || old.ttlMs !== n.ttlMs || old.deregisterAfterMs !== n.deregisterAfterMs
    })

    for (const c of gone) removeCheck(c)
    for (const c of newChecks) {
      clearTimeout(checks.get(key(node, c.CheckID))?.timer)
      checks.set(key(node, c.CheckID), c)
    }
    services.set(k, record)
    if (serviceChanged || checksChanged) {
      const names = new Set([name, ...(previous ? [previous.Service] : [])])
      const at = bump(names, !previous || previous.Service !== name)
      if (serviceChanged) record.ModifyIndex = at
      if (!previous) record.CreateIndex = at
      for (const c of newChecks) {
        if (c.CreateIndex > at) c.CreateIndex = at
        if (checksChanged) c.ModifyIndex = at
      }
      if (!previous) changes.push({ type: 'service', atMs: Date.now(), node, id, registered: true })
      for (const c of newChecks) {
        if (!oldChecks.some(o => o.CheckID === c.CheckID)) changes.push({ type: 'check', atMs: Date.now(), node, checkId: c.CheckID, serviceId: id, status: c.Status })
      }
    }
    // Registering (again) starts the TTL afresh.
    for (const c of newChecks) armTtl(c)
  }

  const deregisterService = (node: string, id: string): boolean => {
    const record = services.get(key(node, id))
    if (!record) return false
    services.delete(key(node, id))
    for (const c of [...checks.values()]) if (c.Node === node && c.ServiceID === id) removeCheck(c)
    bump([record.Service], true)
    changes.push({ type: 'service', atMs: Date.now(), node, id, registered: false })
    return true
  }

  const reap = (): void => {
    const now = Date.now()
    for (const c of [...checks.values()]) {
      if (c.deregisterAfterMs === undefined || c.Status !== 'critical' || c.criticalSinceMs === undefined) continue
      if (now - c.criticalSinceMs >= c.deregisterAfterMs) deregisterService(c.Node, c.ServiceID)
    }
  }

  // --- health ------------------------------------------------------------------------------------------

  const healthEntries = (service: string, passing: boolean, tags: string[]): unknown[] => {
    const out: unknown[] = []
    const sorted = [...services.values()].filter(s => s.Service === service).sort((a, b) => (a.node + a.ID).localeCompare(b.node + b.ID))
    for (const s of sorted) {
      if (!tags.every(tag => s.Tags.some(t => t.toLowerCase() === tag.toLowerCase()))) continue
      const node = nodes.get(s.node)!
      const entryChecks = [...checks.values()].filter(c => c.Node === s.node && (c.ServiceID === '' || c.ServiceID === s.ID))
      if (passing && entryChecks.some(c => c.Status !== 'passing')) continue
      const { node: _node, viaAgent: _via, ...service } = s
      out.push({
        Node: { ...node },
        Service: { ...service, Datacenter: datacenter, TaggedAddresses: {}, Proxy: { Mode: '', MeshGateway: {}, Expose: {} }, Connect: {}, PeerName: '' },
        Checks: entryChecks.map(checkJson),
      })
    }
    return out
  }

  const checkJson = (c: CheckRecord): Record<string, unknown> => ({
    Node: c.Node, CheckID: c.CheckID, Name: c.Name, Status: c.Status, Notes: c.Notes, Output: c.Output,
    ServiceID: c.ServiceID, ServiceName: c.ServiceName, ServiceTags: c.ServiceTags, Type: c.Type,
    Interval: '', Timeout: '', ExposedPort: 0, Definition: {}, CreateIndex: c.CreateIndex, ModifyIndex: c.ModifyIndex,
  })

  /**
   * `filter`: the token may read nothing, so the answer leaves everything out; Consul says so with
   * X-Consul-Results-Filtered-By-ACLs, except to a request without a token ('masked').
   */
  const serveHealth = async (req: IncomingMessage, res: ServerResponse, url: URL, service: string, filter: 'none' | 'flagged' | 'masked' = 'none'): Promise<void> => {
    const startedAt = Date.now()
    const indexParam = url.searchParams.get('index') ?? undefined
    const waitParam = url.searchParams.get('wait') ?? undefined
    const record = (status: number): void => {
      healthQueries.push({ atMs: startedAt, service, index: indexParam, wait: waitParam, status, heldMs: Date.now() - startedAt })
    }
    let minIndex = 0
    if (indexParam !== undefined) {
      if (!/^\d+$/.test(indexParam)) {
        record(400)
        return answer(res, 400, 'Invalid index', indexOf(service))
      }
      minIndex = Number(indexParam)
    }
    let waitMs = DEFAULT_WAIT_MS
    if (waitParam !== undefined) {
      const parsed = parseGoDuration(waitParam)
      if (parsed === undefined) {
        record(400)
        return answer(res, 400, 'Invalid wait time', indexOf(service))
      }
      waitMs = Math.min(parsed, MAX_WAIT_MS)
    }
    const dc = url.searchParams.get('dc')
    if (dc !== null && dc !== '' && dc !== datacenter) {
      record(500)
      return answer(res, 500, 'No path to datacenter', indexOf(service))
    }
    const passingParam = url.searchParams.get('passing')
    const passing = passingParam !== null && passingParam !== 'false' && passingParam !== '0'
    const tags = url.searchParams.getAll('tag')

    if (minIndex > 0) {
      // Consul holds the query until the service's index passes the one given, or the wait (plus up to
      // 1/16 of it as jitter) runs out. An index above Consul's own (a restarted agent) waits it all out.
      const holdMs = waitMs + (jitter ? Math.random() * waitMs / 16 : 0)
      const deadline = startedAt + holdMs
      const socket = req.socket
      heldSockets.add(socket)
      try {
        while (indexOf(service) <= minIndex && Date.now() < deadline && !socket.destroyed) {
          await new Promise<void>(resolve => {
            const done = (): void => {
              clearTimeout(timer)
              wakers.delete(done)
              socket.off('close', done)
              resolve()
            }
            const timer = setTimeout(done, Math.max(0, deadline - Date.now()))
            wakers.add(done)
            socket.once('close', done)
          })
        }
      } finally {
        heldSockets.delete(socket)
      }
      if (socket.destroyed) {
        record(0)
        return
      }
    }
    record(200)
    const entries = healthEntries(service, passing, tags)
    if (filter !== 'none' && entries.length > 0) {
      if (filter === 'flagged') res.setHeader('X-Consul-Results-Filtered-By-ACLs', 'true')
      return answer(res, 200, [], indexOf(service))
    }
    answer(res, 200, entries, indexOf(service))
  }

  // --- http --------------------------------------------------------------------------------------------

  const answer = (res: ServerResponse, status: number, body: unknown, consulIndex?: number | string): void => {
    if (res.destroyed || res.headersSent) return
    if (consulIndex !== undefined) {
      res.setHeader('X-Consul-Index', String(consulIndex))
      res.setHeader('X-Consul-KnownLeader', 'true')
      res.setHeader('X-Consul-LastContact', '0')
    }
    res.setHeader('X-Consul-Default-ACL-Policy', options.aclToken === undefined ? 'allow' : 'deny')
    if (typeof body === 'string') {
      res.setHeader('Content-Type', 'text/plain; charset=utf-8')
      res.statusCode = status
      res.end(body)
    } else {
      res.setHeader('Content-Type', 'application/json')
      res.statusCode = status
      res.end(JSON.stringify(body))
    }
  }

  const readBody = async (req: IncomingMessage): Promise<unknown> => {
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const text = Buffer.concat(chunks).toString('utf8').trim()
    if (text === '') return {}
    try {
      return JSON.parse(text)
    } catch (err) {
      throw new HttpError(400, `Request decode failed: ${(err as Error).message}`)
    }
  }

  const tokenOf = (req: IncomingMessage, url: URL): string | undefined => {
    const header = req.headers['x-consul-token']
    if (typeof header === 'string' && header) return header
    const auth = req.headers.authorization
    if (typeof auth === 'string' && auth.startsWith('Bearer ')) return auth.slice(7)
    return url.searchParams.get('token') ?? undefined
  }

  const agentService = (id: string): ServiceRecord | undefined => services.get(key(nodeName, id))

  const route = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://consul')
    const path = url.pathname
    const method = req.method ?? 'GET'

    if (fault && (fault.match ?? /^\/v1\/health\//).test(path)) {
      const f = fault
      if (--f.left <= 0) fault = undefined
      if (f.drop) {
        if (/^\/v1\/health\/service\//.test(path)) {
          healthQueries.push({ atMs: Date.now(), service: decodeURIComponent(path.split('/')[4] ?? ''), index: url.searchParams.get('index') ?? undefined, wait: url.searchParams.get('wait') ?? undefined, status: 0, heldMs: 0 })
        }
        req.socket.destroy()
        return
      }
      if (/^\/v1\/health\/service\//.test(path)) {
        healthQueries.push({ atMs: Date.now(), service: decodeURIComponent(path.split('/')[4] ?? ''), index: url.searchParams.get('index') ?? undefined, wait: url.searchParams.get('wait') ?? undefined, status: f.status ?? 500, heldMs: 0 })
      }
      return answer(res, f.status ?? 500, f.body ?? 'No cluster leader', /^\/v1\/(health|catalog)\//.test(path) ? (f.index ?? index) : undefined)
    }

    if (path === '/v1/status/leader' && method === 'GET') return answer(res, 200, '"127.0.0.1:8300"')

    let filter: 'none' | 'flagged' | 'masked' = 'none'
    if (options.aclToken !== undefined) {
      const token = tokenOf(req, url)
      if (token === undefined) filter = 'masked'
      else if (token === options.restrictedToken) filter = 'flagged'
      else if (token !== options.aclToken) return answer(res, 403, 'ACL not found')
    }

    let m: RegExpMatchArray | null
    if ((m = path.match(/^\/v1\/health\/service\/([^/]+)$/))) {
      if (method !== 'GET') return answer(res, 405, 'method not allowed')
      return serveHealth(req, res, url, decodeURIComponent(m[1]!), filter)
    }
    if (filter !== 'none') return answer(res, 403, 'Permission denied')
    if (method === 'GET' && path === '/v1/agent/self') {
      return answer(res, 200, { Config: { Datacenter: datacenter, NodeName: nodeName, NodeID: nodes.get(nodeName)!.ID, Version: '1.17.0-double' }, Member: { Name: nodeName, Addr: nodes.get(nodeName)!.Address } })
    }
    if (method === 'GET' && path === '/v1/agent/services') {
      const out: Record<string, unknown> = {}
      for (const s of services.values()) if (s.node === nodeName) out[s.ID] = agentServiceJson(s)
      return answer(res, 200, out)
    }
    if (method === 'GET' && (m = path.match(/^\/v1\/agent\/service\/([^/]+)$/)) && m[1] !== 'register') {
      const s = agentService(decodeURIComponent(m[1]!))
      return s ? answer(res, 200, agentServiceJson(s)) : answer(res, 404, `unknown service ID: ${decodeURIComponent(m[1]!)}`)
    }
    if (method === 'GET' && path === '/v1/agent/checks') {
      const out: Record<string, unknown> = {}
      for (const c of checks.values()) if (c.Node === nodeName && c.CheckID !== 'serfHealth') out[c.CheckID] = checkJson(c)
      return answer(res, 200, out)
    }
    if (method !== 'PUT' && method !== 'POST' && /^\/v1\/(agent|catalog)\//.test(path)) return answer(res, 405, 'method not allowed')

    if (path === '/v1/agent/service/register') {
      registerService(nodeName, await readBody(req) as ServiceDefinition, true)
      return answer(res, 200, '')
    }
    if ((m = path.match(/^\/v1\/agent\/service\/deregister\/([^/]+)$/))) {
      const id = decodeURIComponent(m[1]!)
      return deregisterService(nodeName, id) ? answer(res, 200, '') : answer(res, 404, `Unknown service ID "${id}". Ensure that the service ID is passed, not the service name.`)
    }
    if ((m = path.match(/^\/v1\/agent\/service\/maintenance\/([^/]+)$/))) {
      const id = decodeURIComponent(m[1]!)
      const s = agentService(id)
      const enable = url.searchParams.get('enable')
      if (enable === null || enable === '') return answer(res, 400, 'Missing value for enable')
      if (enable !== 'true' && enable !== 'false') return answer(res, 400, `Invalid value for enable: "${enable}"`)
      if (!s) return answer(res, 404, `Unknown service ID "${id}"`)
      const reason = url.searchParams.get('reason') || 'Maintenance mode is enabled for this service, but no reason was provided. This is a default message.'
      setMaintenance(`_service_maintenance:${id}`, enable === 'true', reason, s)
      return answer(res, 200, '')
    }
    if (path === '/v1/agent/maintenance') {
      const enable = url.searchParams.get('enable')
      if (enable !== 'true' && enable !== 'false') return answer(res, 400, 'Missing value for enable')
      const reason = url.searchParams.get('reason') || 'Maintenance mode is enabled for this node, but no reason was provided. This is a default message.'
      setMaintenance('_node_maintenance', enable === 'true', reason, undefined)
      return answer(res, 200, '')
    }
    if ((m = path.match(/^\/v1\/agent\/check\/(pass|warn|fail)\/([^/]+)$/))) {
      const checkId = decodeURIComponent(m[2]!)
      const check = checks.get(key(nodeName, checkId))
      if (!check || check.ttlMs === undefined) return answer(res, 404, `Unknown check ID "${checkId}". Ensure that the check ID is passed, not the check name.`)
      const status: CheckStatus = m[1] === 'pass' ? 'passing' : m[1] === 'warn' ? 'warning' : 'critical'
      setCheckStatus(check, status, url.searchParams.get('note') ?? '')
      armTtl(check)
      return answer(res, 200, '')
    }
    if (path === '/v1/catalog/register') {
      const body = await readBody(req) as { Node?: unknown, Address?: unknown, Service?: ServiceDefinition, Check?: CheckDefinition & { ServiceID?: unknown, Status?: unknown } }
      if (typeof body.Node !== 'string' || !body.Node) return answer(res, 400, 'Must provide node')
      if (typeof body.Address !== 'string' || !body.Address) return answer(res, 400, 'Must provide address')
      addNode(body.Node, body.Address)
      if (body.Service) registerService(body.Node, { ...body.Service, Check: undefined, Checks: undefined }, false)
      if (body.Check) {
        const serviceId = typeof body.Check.ServiceID === 'string' ? body.Check.ServiceID : ''
        const s = serviceId ? services.get(key(body.Node, serviceId)) : undefined
        if (serviceId && !s) return answer(res, 400, `Unknown service ID "${serviceId}" for check`)
        const built = buildCheck(body.Node, s, { ...body.Check, TTL: undefined }, 'check', false, undefined)
        const previous = checks.get(key(body.Node, built.CheckID))
        if (previous) {
          setCheckStatus(previous, built.Status, previous.Output)
        } else {
          checks.set(key(body.Node, built.CheckID), built)
          built.ModifyIndex = built.CreateIndex = bump(s ? [s.Service] : servicesOn(body.Node))
          changes.push({ type: 'check', atMs: Date.now(), node: body.Node, checkId: built.CheckID, serviceId: built.ServiceID, status: built.Status })
        }
      }
      return answer(res, 200, true)
    }
    if (path === '/v1/catalog/deregister') {
      const body = await readBody(req) as { Node?: unknown, ServiceID?: unknown, CheckID?: unknown }
      if (typeof body.Node !== 'string' || !body.Node) return answer(res, 400, 'Must provide node')
      if (typeof body.ServiceID === 'string' && body.ServiceID) deregisterService(body.Node, body.ServiceID)
      else if (typeof body.CheckID === 'string' && body.CheckID) {
        const c = checks.get(key(body.Node, body.CheckID))
        if (c) {
          removeCheck(c)
          bump(c.ServiceName ? [c.ServiceName] : servicesOn(body.Node))
        }
      } else {
        for (const s of [...services.values()]) if (s.node === body.Node) deregisterService(s.node, s.ID)
        nodes.delete(body.Node)
        for (const c of [...checks.values()]) if (c.Node === body.Node) removeCheck(c)
        bump([], true)
      }
      return answer(res, 200, true)
    }
    return answer(res, 404, '404 page not found')
  }

  const setMaintenance = (checkId: string, enable: boolean, reason: string, service: ServiceRecord | undefined): void => {
    const k = key(nodeName, checkId)
    const existing = checks.get(k)
    const touched = service ? [service.Service] : servicesOn(nodeName)
    if (!enable) {
      if (!existing) return
      removeCheck(existing)
      bump(touched)
      return
    }
    if (existing) return
    const at = bump(touched)
    checks.set(k, {
      Node: nodeName, CheckID: checkId, Name: service ? 'Service Maintenance Mode' : 'Node Maintenance Mode', Status: 'critical',
      Notes: reason, Output: '', ServiceID: service?.ID ?? '', ServiceName: service?.Service ?? '', ServiceTags: service?.Tags ?? [],
      Type: 'maintenance', CreateIndex: at, ModifyIndex: at, viaAgent: true, ttlMs: undefined, deregisterAfterMs: undefined,
      criticalSinceMs: Date.now(), timer: undefined,
    })
    changes.push({ type: 'check', atMs: Date.now(), node: nodeName, checkId, serviceId: service?.ID ?? '', status: 'critical' })
  }

  const agentServiceJson = (s: ServiceRecord): Record<string, unknown> => {
    const { node: _node, viaAgent: _via, CreateIndex: _c, ModifyIndex: _m, ...rest } = s
    return { ...rest, Datacenter: datacenter, ContentHash: String(s.ModifyIndex) }
  }

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    route(req, res).catch((err: unknown) => {
      if (err instanceof HttpError) answer(res, err.status, err.message)
      else answer(res, 500, String(err))
    })
  }

  const server: Server = options.tls ? createHttpsServer({ key: options.tls.key, cert: options.tls.cert }, handler) : createHttpServer(handler)
  server.keepAliveTimeout = 30_000
  // A blocking query can be held for up to 10 min + jitter.
  server.requestTimeout = 0
  server.headersTimeout = 60_000
  server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })

  let port = 0
  const listen = async (): Promise<void> => {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject)
        resolve()
      })
    })
    port = (server.address() as AddressInfo).port
    listening = true
    for (const c of checks.values()) armTtl(c)
    reaper = setInterval(reap, reapIntervalMs)
    reaper.unref()
  }

  const stop = async (): Promise<void> => {
    if (!listening) return
    listening = false
    clearInterval(reaper)
    for (const c of checks.values()) {
      clearTimeout(c.timer)
      c.timer = undefined
    }
    const closed = new Promise<void>(resolve => server.close(() => resolve()))
    for (const socket of sockets) socket.destroy()
    await closed
  }

  await listen()
  const scheme = options.tls ? 'https' : 'http'

  return {
    get address () { return `${scheme}://127.0.0.1:${port}` },
    get port () { return port },
    datacenter,
    nodeName,
    get index () { return index },
    get listening () { return listening },
    healthQueries,
    changes,
    get held () { return heldSockets.size },
    checkStatus: (checkId, node = nodeName) => checks.get(key(node, checkId))?.Status,
    service: (id, node = nodeName) => {
      const s = services.get(key(node, id))
      return s ? agentServiceJson(s) : undefined
    },
    checkDefinition: (checkId, node = nodeName) => {
      const c = checks.get(key(node, checkId))
      if (!c) return undefined
      return { status: c.Status, ...(c.ttlMs === undefined ? {} : { ttlMs: c.ttlMs }), ...(c.deregisterAfterMs === undefined ? {} : { deregisterAfterMs: c.deregisterAfterMs }) }
    },
    fault: f => { fault = f ? { ...f, left: f.times ?? Number.POSITIVE_INFINITY } : undefined },
    dropHeldQueries: () => {
      const n = heldSockets.size
      for (const socket of heldSockets) socket.destroy()
      return n
    },
    setIndex: next => {
      index = next
      for (const name of serviceIndex.keys()) serviceIndex.set(name, Math.min(serviceIndex.get(name)!, next))
      servicesTableIndex = Math.min(servicesTableIndex, next)
      for (const wake of [...wakers]) wake()
    },
    stop,
    start: async () => {
      if (!listening) await listen()
    },
    restart: async (restart = {}) => {
      await stop()
      if (restart.keepState === false) {
        for (const s of [...services.values()]) if (s.viaAgent) services.delete(key(s.node, s.ID))
        for (const c of [...checks.values()]) if (c.viaAgent) checks.delete(key(c.Node, c.CheckID))
      }
      if (restart.index !== undefined) {
        index = restart.index
        for (const name of serviceIndex.keys()) serviceIndex.set(name, restart.index)
        servicesTableIndex = restart.index
      }
      await listen()
    },
    close: async () => {
      await stop()
      for (const c of checks.values()) clearTimeout(c.timer)
    },
  }
}
