// ConsulSource: follows one service through blocking queries on Consul's health endpoint, and reads each
// entry's checks itself so that maintenance mode drains an instance instead of dropping it.

import type { ConsulClient, ConsulResponse } from '../consul/client.ts'
import { answerError, goDuration, requestError } from '../consul/client.ts'
import { FleetgateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import { validateInstance, type Instance, type InvalidReason } from './instance.ts'
import { BaseSource } from './source.ts'

export interface ConsulSourceOptions {
  readonly client: ConsulClient
  readonly service: string
  /** `dc=`: another datacenter than the agent's own. */
  readonly datacenter?: string | undefined
  /** `tag=`: only instances carrying this tag. */
  readonly tag?: string | undefined
  /** How long Consul may hold a blocking query (Consul adds up to 1/16 of it as jitter, and caps it at 10 min). */
  readonly waitMs: number
  /** Least time between the starts of two queries, so a flapping service cannot make the loop spin. */
  readonly minIntervalMs?: number
  /** First pause after a failed query; doubles with each failure in a row, up to backoffMaxMs, jittered. */
  readonly backoffBaseMs?: number
  readonly backoffMaxMs?: number
  readonly logger: Logger
}

const DEFAULT_MIN_INTERVAL_MS = 100
const WHOLE_NUMBER = /^\d+$/
const DEFAULT_BACKOFF_BASE_MS = 250
const DEFAULT_BACKOFF_MAX_MS = 5_000
/** A non-blocking query answers at once; one that takes this long is stuck (a hung agent). */
const NON_BLOCKING_TIMEOUT_MS = 10_000
/** Above wait + its jitter before the client gives up on a blocking query's headers. */
const BLOCKING_MARGIN_MS = 10_000
/** While Consul keeps failing the same way, say so at most this often. */
const REPEAT_LOG_MS = 30_000

const NODE_MAINTENANCE = '_node_maintenance'
const SERVICE_MAINTENANCE = '_service_maintenance:'

/** What fleetgate's agent writes into Service.Meta; the proxy does not show these as labels. */
export const META_STATE = 'fleetgate_state'
const OWN_META = /^fleetgate_/

export class ConsulSource extends BaseSource {
  readonly kind = 'consul'
  readonly #options: ConsulSourceOptions
  readonly #log: Logger
  readonly #path: string
  readonly #stop = new AbortController()
  /** The X-Consul-Index to block on; 0 means the next query is non-blocking and sends no index. */
  #index = 0
  #loop: Promise<void> | undefined
  #lastStartMs = 0
  #everSucceeded = false
  #failures = 0
  #failingSinceMs = 0
  #lastFailureLog: { text: string, atMs: number } | undefined
  #missingIndexLogged = false
  #badIndexLogged = false
  /** Invalid entries already reported, by reason: reported once, not at every answer. */
  readonly #reported = new Map<string, InvalidReason>()
  #excluded = -1
  #queries = 0
  #indexResets = 0

  constructor (options: ConsulSourceOptions) {
    super(options.service)
    this.#options = options
    this.#path = `/v1/health/service/${encodeURIComponent(options.service)}`
    this.#log = options.logger.child({ source: 'consul', consul: options.client.address.origin, service: options.service })
  }

  /** Queries sent so far; lets tests check the loop neither spins nor stalls. */
  get queries (): number {
    return this.#queries
  }

  /** How often the index went backwards and was dropped. */
  get indexResets (): number {
    return this.#indexResets
  }

  async start (): Promise<void> {
    this.#loop ??= this.#run()
    return this.firstMembership()
  }

  async close (): Promise<void> {
    if (this.#stop.signal.aborted) return
    this.#stop.abort()
    this.releaseStart()
    await this.#loop
    await this.#options.client.close()
  }

  async #run (): Promise<void> {
    const minIntervalMs = this.#options.minIntervalMs ?? DEFAULT_MIN_INTERVAL_MS
    while (!this.#stop.signal.aborted) {
      await this.#pause(this.#lastStartMs + minIntervalMs - performance.now())
      if (this.#stop.signal.aborted) break
      this.#lastStartMs = performance.now()
      const blockOn = this.#index > 0 ? this.#index : undefined
      try {
        const res = await this.#query(blockOn)
        this.#succeeded(res, blockOn)
      } catch (err) {
        if (this.#stop.signal.aborted) break
        await this.#failed(err)
      }
    }
  }

  async #query (blockOn: number | undefined): Promise<ConsulResponse> {
    const { client, datacenter, tag, waitMs } = this.#options
    this.#queries++
    // Not `?passing`: that would drop instances in maintenance mode, which should drain instead. The
    // checks are read below, with the same rule for everything else.
    const query: Array<readonly [string, string]> = []
    if (datacenter !== undefined) query.push(['dc', datacenter])
    if (tag !== undefined) query.push(['tag', tag])
    if (blockOn !== undefined) query.push(['index', String(blockOn)], ['wait', goDuration(waitMs)])
    let res: ConsulResponse
    try {
      res = await client.request({
        method: 'GET',
        path: this.#path,
        query,
        headersTimeoutMs: blockOn === undefined ? NON_BLOCKING_TIMEOUT_MS : waitMs + waitMs / 16 + BLOCKING_MARGIN_MS,
        signal: this.#stop.signal,
      })
    } catch (err) {
      throw requestError('GET', this.#path, err)
    }
    if (res.status !== 200) throw answerError('GET', this.#path, res)
    // Consul answers what the token may not read by leaving it out, not with 403: published, such an
    // answer would drop every instance the token cannot see.
    if (res.headers['x-consul-results-filtered-by-acls'] === 'true') {
      throw new FleetgateError('FLEETGATE_ERR_CONSUL_REQUEST', `GET ${this.#path}: Consul left out entries this token may not read (X-Consul-Results-Filtered-By-ACLs); it needs service:read on the service and node:read on its nodes`)
    }
    return res
  }

  #succeeded (res: ConsulResponse, blockOn: number | undefined): void {
    let entries: unknown
    try {
      entries = JSON.parse(res.body)
    } catch (err) {
      throw requestError('GET', this.#path, err)
    }
    if (!Array.isArray(entries)) throw answerError('GET', this.#path, { ...res, body: `not a JSON array: ${res.body.slice(0, 100)}` })
    const { instances, excluded, invalid } = readHealthEntries(entries)
    this.#report(invalid)
    // Entries none of which reads as one would empty the pool (an empty list is `[]`): like a malformed
    // znode, they are skipped, and the last membership is kept.
    if (invalid.length > 0 && invalid.length === entries.length) throw answerError('GET', this.#path, { ...res, body: `not a list of health entries: ${res.body.slice(0, 100)}` })

    this.#takeIndex(res.headers['x-consul-index'], blockOn)
    if (this.#failures > 0) {
      this.#log.info({ failures: this.#failures, downMs: Math.round(performance.now() - this.#failingSinceMs) }, 'consul answers again; resynced')
    }
    this.#failures = 0
    this.#lastFailureLog = undefined
    this.#everSucceeded = true

    if (excluded !== this.#excluded) {
      this.#excluded = excluded
      if (excluded > 0) this.#log.debug({ excluded }, 'instances with a failing check are left out')
    }
    if (this.publish(instances)) {
      this.#log.info({ revision: this.current()?.revision, instances: instances.length, index: this.#index }, 'membership changed')
    }
    this.setStatus('connected', false)
  }

  /**
   * Consul's rules for X-Consul-Index: a missing or 0 index is read as 1 (so a blocking query cannot
   * return at once forever), and one that went backwards (a restarted agent, a restored snapshot) is
   * dropped, so the next query is non-blocking and picks up the new one. One that is not a whole
   * number (something between fleetgate and Consul rewrote it) is read as 1 too, and said once.
   */
  #takeIndex (header: string | string[] | undefined, blockOn: number | undefined): void {
    const value = Array.isArray(header) ? header[0] : header
    const raw = value !== undefined && WHOLE_NUMBER.test(value) ? Number(value) : NaN
    const readable = Number.isSafeInteger(raw)
    const index = readable && raw >= 1 ? raw : 1
    if (value === undefined) {
      if (!this.#missingIndexLogged) {
        this.#missingIndexLogged = true
        this.#log.warn('consul answered without X-Consul-Index; blocking queries will return at once (rate-limited)')
      }
    } else if (!readable && !this.#badIndexLogged) {
      this.#badIndexLogged = true
      this.#log.warn({ index: value.slice(0, 40) }, 'consul answered an X-Consul-Index that is not a whole number below 2^53; read as 1, so blocking queries will return at once (rate-limited)')
    }
    // An index that cannot be read did not go backwards: it is not a reset.
    if (blockOn !== undefined && index < blockOn && (readable || value === undefined)) {
      this.#indexResets++
      this.#log.info({ sent: blockOn, received: index }, 'consul index went backwards; reading again without an index')
      this.#index = 0
      return
    }
    this.#index = index
  }

  async #failed (err: unknown): Promise<void> {
    // A restarted agent may have a lower index than ours and would hold a query with our index for the
    // whole wait: after any failure, read once without an index (FIELD-NOTES §5).
    this.#index = 0
    if (this.#failures === 0) this.#failingSinceMs = performance.now()
    this.#failures++
    this.setStatus(this.#everSucceeded ? 'disconnected' : 'connecting', true)
    const text = err instanceof Error ? err.message : String(err)
    const now = performance.now()
    if (this.#lastFailureLog?.text !== text || now - this.#lastFailureLog.atMs >= REPEAT_LOG_MS) {
      this.#lastFailureLog = { text, atMs: now }
      this.#log.warn({ err, failures: this.#failures, kept: this.current()?.instances.length ?? 0 }, 'consul query failed; keeping the last membership (stale) and retrying')
    } else {
      this.#log.debug({ failures: this.#failures, error: text }, 'consul query failed again')
    }
    const base = this.#options.backoffBaseMs ?? DEFAULT_BACKOFF_BASE_MS
    const max = this.#options.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS
    const capped = Math.min(max, base * 2 ** Math.min(this.#failures - 1, 20))
    await this.#pause(capped / 2 + Math.random() * capped / 2)
  }

  #report (invalid: readonly InvalidEntry[]): void {
    const seen = new Set<string>()
    for (const entry of invalid) {
      seen.add(entry.id)
      if (this.#reported.get(entry.id) === entry.reason) continue
      this.#reported.set(entry.id, entry.reason)
      this.#log.warn({ instance: entry.id, reason: entry.reason, detail: entry.detail }, 'skipping invalid registration')
      this.emit({ type: 'invalid', id: entry.id, reason: entry.reason, detail: entry.detail })
    }
    for (const id of this.#reported.keys()) if (!seen.has(id)) this.#reported.delete(id)
  }

  /** Resolves after ms, or at once when the source is closed. */
  #pause (ms: number): Promise<void> {
    if (ms <= 0 || this.#stop.signal.aborted) return Promise.resolve()
    return new Promise(resolve => {
      const done = (): void => {
        clearTimeout(timer)
        this.#stop.signal.removeEventListener('abort', done)
        resolve()
      }
      const timer = setTimeout(done, ms)
      this.#stop.signal.addEventListener('abort', done)
    })
  }
}

export interface InvalidEntry {
  readonly id: string
  readonly reason: InvalidReason
  readonly detail: string
}

export interface HealthEntries {
  readonly instances: Instance[]
  /** Entries left out because a check other than maintenance is not passing. */
  readonly excluded: number
  readonly invalid: InvalidEntry[]
}

/**
 * Reads the answer of `GET /v1/health/service/<name>` (without `passing`):
 * - any check that is not passing, node checks included, leaves the instance out, as `?passing` would;
 * - except the maintenance checks (`_node_maintenance`, `_service_maintenance:<id>`): they drain it;
 * - `Service.Meta.fleetgate_state = draining` drains it too (what fleetgate's agent writes);
 * - an empty `Service.Address` means `Node.Address`; the weight is `Service.Weights.Passing`;
 * - labels are the Meta keys (without fleetgate's own) plus `tags`, the tags joined by commas;
 * - the id is the service ID, prefixed with `<node>/` when several nodes register the same ID.
 */
export function readHealthEntries (entries: readonly unknown[]): HealthEntries {
  const instances: Instance[] = []
  const invalid: InvalidEntry[] = []
  let excluded = 0
  const idCounts = new Map<string, number>()
  for (const entry of entries) {
    const id = serviceOf(entry)?.ID
    if (typeof id === 'string') idCounts.set(id, (idCounts.get(id) ?? 0) + 1)
  }
  for (const entry of entries) {
    const service = serviceOf(entry)
    const node = isObject(entry) && isObject(entry.Node) ? entry.Node : {}
    const nodeName = typeof node.Node === 'string' ? node.Node : ''
    if (!service || typeof service.ID !== 'string' || service.ID === '') {
      invalid.push({ id: `${nodeName}/?`, reason: 'unknown_format', detail: 'health entry without Service.ID' })
      continue
    }
    const id = (idCounts.get(service.ID) ?? 0) > 1 ? `${nodeName}/${service.ID}` : service.ID

    let maintenance = false
    let failing = false
    const checks = isObject(entry) && Array.isArray(entry.Checks) ? entry.Checks : []
    for (const check of checks) {
      if (!isObject(check) || check.Status === 'passing') continue
      if (check.CheckID === NODE_MAINTENANCE || check.CheckID === `${SERVICE_MAINTENANCE}${service.ID}`) maintenance = true
      else failing = true
    }
    if (failing) {
      excluded++
      continue
    }

    const meta = isObject(service.Meta) ? service.Meta : {}
    const labels: Record<string, string> = {}
    for (const [key, value] of Object.entries(meta)) {
      if (!OWN_META.test(key) && typeof value === 'string') labels[key] = value
    }
    const tags = Array.isArray(service.Tags) ? service.Tags.filter((tag): tag is string => typeof tag === 'string') : []
    if (tags.length > 0) labels.tags = tags.join(',')
    const weights = isObject(service.Weights) ? service.Weights : {}
    const weight = typeof weights.Passing === 'number' && weights.Passing >= 1 ? weights.Passing : 1
    const address = typeof service.Address === 'string' && service.Address !== '' ? service.Address : node.Address
    const draining = maintenance || meta[META_STATE] === 'draining'

    const result = validateInstance(id, 'consul', address, service.Port, draining, weight, labels)
    if (result.ok) instances.push(result.instance)
    else invalid.push({ id, reason: result.reason, detail: result.detail })
  }
  return { instances, excluded, invalid }
}

function serviceOf (entry: unknown): Record<string, unknown> | undefined {
  return isObject(entry) && isObject(entry.Service) ? entry.Service : undefined
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}
