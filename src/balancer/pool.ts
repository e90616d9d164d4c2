// Pool: the proxy's view of one service. It holds the membership's instances as endpoints with their
// health state (ejected after connect failures or, if asked, server errors in a row; draining from the
// registry) and picks the next one.

import { insertionPoint, instanceAddress, positionOf, type Instance } from '../membership/instance.ts'
import type { Membership, MembershipChange } from '../membership/source.ts'
import { RoundRobin } from './round-robin.ts'

export type EndpointState = 'up' | 'draining' | 'ejected'

/** One instance as the pool tracks it. Mutable counters are owned by the pool and the proxy. */
export class Endpoint {
  /** Identity across membership changes: the same id at another address is another endpoint. */
  readonly key: string
  readonly address: string
  instance: Instance
  inflight = 0
  /** Requests it failed that are being retried elsewhere on its own allowance (see forward.ts). */
  retriesInFlight = 0
  requests = 0
  /** The most requests it carried at once in the current window and the one before (see recentPeakInflight). */
  #peak = 0
  #peakBefore = 0
  #peakSinceMs = 0
  /** Consecutive failures to connect; reset by any answer. */
  failures = 0
  /** Failures in a row: server errors, or no answer (see PoolOptions.ejectAfterErrors); reset by any other answer. */
  serverErrors = 0
  /** Ejections in a row; the next ejection lasts twice as long. */
  ejections = 0
  /** By the pool's clock (see monotonicEpochMs). */
  ejectedUntilMs = 0
  /** When the state last changed (joined, draining, ejected, back), by the pool's clock. */
  changedAtMs: number
  /** The pool's last walk of a whole membership that listed it. */
  generation = 0
  /** Until when (by the pool's clock) it is in slow start, taking a share that grows to its full one; 0: not. */
  slowStartUntilMs = 0
  /** Thousandths of a turn it was offered in slow start and has not taken yet: it takes a turn once they add up to one. */
  slowStartCredit = 0

  constructor (instance: Instance, nowMs: number) {
    this.instance = instance
    this.address = instanceAddress(instance)
    this.key = endpointKey(instance)
    this.changedAtMs = nowMs
  }

  get weight (): number {
    return this.instance.weight
  }

  /** A request (or upgrade) starts on it, at `nowMs` by performance.now(): its own clock, for the peak window only. */
  started (nowMs: number): void {
    this.inflight++
    this.requests++
    if (nowMs - this.#peakSinceMs >= PEAK_WINDOW_MS) {
      this.#peakBefore = this.#peak
      this.#peak = 0
      this.#peakSinceMs = nowMs
    }
    if (this.inflight > this.#peak) this.#peak = this.inflight
  }

  /** The most requests it carried at once over the last 10 to 20 s: what it takes down with it if it dies now. */
  get recentPeakInflight (): number {
    return Math.max(this.#peak, this.#peakBefore)
  }

  state (nowMs: number): EndpointState {
    if (this.instance.state === 'draining') return 'draining'
    return this.ejectedUntilMs > nowMs ? 'ejected' : 'up'
  }
}

/**
 * The pool's clock: epoch milliseconds that never step. It reads the wall clock once, at start, and runs
 * on the monotonic clock from there, so an NTP step or a date set by hand neither stretches an ejection
 * (a clock set back an hour would keep an instance out for an hour) nor cuts it short.
 */
export function monotonicEpochMs (): number {
  return performance.timeOrigin + performance.now()
}

/** Window of Endpoint.recentPeakInflight. */
const PEAK_WINDOW_MS = 10_000

export function endpointKey (instance: Instance): string {
  return `${instance.id}@${instanceAddress(instance)}`
}

/** A refused (or timed out) connect, or PoolOptions.ejectAfterErrors server errors in a row. */
export type EjectionReason = 'connect' | 'server-errors'

export type PoolEvent =
  | { readonly type: 'added', readonly endpoint: Endpoint }
  /** Left the membership. Requests already running on it go on; the pool will not pick it again. */
  | { readonly type: 'removed', readonly endpoint: Endpoint }
  | { readonly type: 'ejected', readonly endpoint: Endpoint, readonly durationMs: number, readonly reason: EjectionReason }
  /** An ejected endpoint answered a request sent to it while ejected (panic): its ejection ends early. */
  | { readonly type: 'readmitted', readonly endpoint: Endpoint }
  | { readonly type: 'changed', readonly membership: Membership }

export interface PoolOptions {
  readonly service: string
  /** First ejection after a failed connect; each ejection in a row doubles it, up to ejectMaxMs. */
  readonly ejectBaseMs: number
  readonly ejectMaxMs: number
  /** Below this share of healthy instances, ejected ones take the requests no healthy one can (a retry that tried them all). */
  readonly panicThresholdPercent: number
  /**
   * The most requests an instance carries at once (HAProxy's server `maxconn`); 0 for no limit. An
   * instance at the limit is skipped, and when all are, pick() finds none and atLimit() says why.
   */
  readonly maxInflight?: number
  /**
   * Eject an instance that fails this many requests in a row, as after a refused connect (HAProxy's
   * `observe layer7` with `error-limit` and `on-error mark-down`, Envoy's `consecutive_5xx`); 0 (the
   * default): never. A failure is a server error, a 5xx other than 501 and 505 (which answer the request
   * rather than tell of the server, as HAProxy counts them), or no answer at all (see reportServerError).
   */
  readonly ejectAfterErrors?: number
  /**
   * Slow start (HAProxy's `slowstart`, Envoy's `slow_start_config`): an instance that joins a pool
   * already following a membership takes a share of the requests that grows from 10 % of its own to
   * all of it over this many ms, rather than its full share at once. 0 (the default): none.
   */
  readonly slowStartMs?: number
  /** Default monotonicEpochMs. */
  readonly now?: () => number
}

/** The share of its turns an instance takes as its slow start begins (Envoy's default min_weight_percent). */
export const SLOW_START_MIN_SHARE = 0.1

export class Pool {
  readonly service: string
  readonly #options: PoolOptions
  readonly #now: () => number
  readonly #limit: number
  readonly #errorLimit: number
  readonly #hasRoom = (endpoint: Endpoint): boolean => endpoint.inflight < this.#limit
  readonly #endpoints = new Map<string, Endpoint>()
  /** The endpoints in membership order (by id). */
  #ordered: readonly Endpoint[] = []
  /** Each instance object of the membership, to its endpoint. */
  readonly #byInstance = new WeakMap<Instance, Endpoint>()
  #generation = 0
  readonly #picker = new RoundRobin<Endpoint>()
  readonly #ejected = new Set<Endpoint>()
  /** Endpoints in slow start; empty unless PoolOptions.slowStartMs is set. */
  readonly #slowStarting = new Set<Endpoint>()
  readonly #slowStartMs: number
  /** When the last slow start begun ends: then all have, also those of instances out of the rotation, never offered a turn. */
  #slowStartsEndMs = 0
  /** Joined draining, never up since: each begins its slow start when it first is. */
  readonly #slowStartOnceUp = new Set<Endpoint>()
  /** Up, but a second entry of a server already in the rotation: it takes no new requests. */
  readonly #setAside = new Set<Endpoint>()
  /** Endpoints by address, counted: a rebuild looks for second entries only among the addresses held twice. */
  readonly #addressCounts = new Map<string, number>()
  readonly #sharedAddresses = new Set<string>()
  #upCount = 0
  #membership: Membership | undefined
  readonly #listeners = new Set<(event: PoolEvent) => void>()

  constructor (options: PoolOptions) {
    this.service = options.service
    this.#options = options
    this.#now = options.now ?? monotonicEpochMs
    this.#limit = options.maxInflight ?? 0
    this.#errorLimit = options.ejectAfterErrors ?? 0
    this.#slowStartMs = options.slowStartMs ?? 0
  }

  /** The clock of every time the pool keeps: compare ejectedUntilMs, or ask state(), with this. */
  now (): number {
    return this.#now()
  }

  get membership (): Membership | undefined {
    return this.#membership
  }

  endpoints (): IterableIterator<Endpoint> {
    return this.#ordered.values()
  }

  get size (): number {
    return this.#endpoints.size
  }

  onEvent (listener: (event: PoolEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  /**
   * Applies a membership: new instances join, missing ones leave, known ones keep their health. When
   * the membership says what changed since the one applied last, only that is applied. Otherwise the
   * whole set is walked: a source hands unchanged instances over as the very same objects, so at 10,000
   * instances that is a pass of identity lookups, not a rebuild of every key.
   */
  update (membership: Membership): void {
    const change = membership.change
    if (change !== undefined && this.#applies(membership, change)) {
      this.#applyChange(membership, change)
      return
    }
    const now = this.#now()
    const generation = ++this.#generation
    const ordered: Endpoint[] = []
    const added: Endpoint[] = []
    let reshuffled = false
    for (const instance of membership.instances) {
      let endpoint = this.#byInstance.get(instance)
      if (endpoint === undefined || endpoint.instance !== instance) {
        const key = endpointKey(instance)
        endpoint = this.#endpoints.get(key)
        if (endpoint) reshuffled = renew(endpoint, instance, now) || reshuffled
        else endpoint = this.#join(instance, key, now, added)
        this.#byInstance.set(instance, endpoint)
      }
      if (endpoint.generation === generation) continue // listed twice
      endpoint.generation = generation
      ordered.push(endpoint)
    }
    const removed: Endpoint[] = []
    for (const endpoint of this.#endpoints.values()) if (endpoint.generation !== generation) removed.push(endpoint)
    for (const endpoint of removed) {
      this.#leave(endpoint)
      this.#byInstance.delete(endpoint.instance)
    }
    this.#ordered = ordered
    this.#settle(membership, added, removed, reshuffled)
  }

  /**
   * Whether `change` fits what the pool holds: it follows the membership applied last, which had one
   * endpoint per instance (an instance listed twice is one endpoint: only the walk handles that), each
   * removed instance is one of its endpoints', and each added one takes a key that is free or that a
   * removed one frees. Otherwise the whole membership is walked instead.
   */
  #applies (membership: Membership, change: MembershipChange): boolean {
    const previous = this.#membership
    if (previous === undefined || membership.revision !== previous.revision + 1 || membership.service !== previous.service) return false
    if (this.#ordered.length !== previous.instances.length) return false
    if (membership.instances.length !== previous.instances.length - change.removed.length + change.added.length) return false
    const freed = new Set<string>()
    for (const instance of change.removed) {
      const endpoint = this.#byInstance.get(instance)
      if (endpoint === undefined || endpoint.instance !== instance || positionOf(this.#ordered, endpoint, instanceOf) < 0) return false
      freed.add(endpoint.key)
    }
    const taken = new Set<string>()
    for (const instance of change.added) {
      const key = endpointKey(instance)
      if (taken.has(key) || (this.#endpoints.has(key) && !freed.has(key))) return false
      taken.add(key)
    }
    return true
  }

  /** Applies a change that #applies() accepted: lookups for the changed instances only, and one copy of the ordered list. */
  #applyChange (membership: Membership, change: MembershipChange): void {
    const now = this.#now()
    const ordered = this.#ordered.slice()
    const leaving = new Map<string, Endpoint>()
    for (const instance of change.removed) {
      const endpoint = this.#byInstance.get(instance)!
      leaving.set(endpoint.key, endpoint)
      this.#byInstance.delete(instance)
      ordered.splice(positionOf(ordered, endpoint, instanceOf), 1)
    }
    const added: Endpoint[] = []
    let reshuffled = false
    for (const instance of change.added) {
      const key = endpointKey(instance)
      let endpoint = leaving.get(key)
      if (endpoint !== undefined) {
        leaving.delete(key)
        reshuffled = renew(endpoint, instance, now) || reshuffled
      } else {
        endpoint = this.#join(instance, key, now, added)
      }
      this.#byInstance.set(instance, endpoint)
      ordered.splice(insertionPoint(ordered, instance, instanceOf), 0, endpoint)
    }
    const removed = [...leaving.values()]
    for (const endpoint of removed) this.#leave(endpoint)
    this.#ordered = ordered
    this.#settle(membership, added, removed, reshuffled)
  }

  /** A new endpoint for `instance`, listed in `added`. */
  #join (instance: Instance, key: string, now: number, added: Endpoint[]): Endpoint {
    const endpoint = new Endpoint(instance, now)
    // Not those of the first membership: a proxy that starts has no warm instances to spare them. One
    // that joins draining has served nothing yet: its slow start begins once it is up.
    if (this.#slowStartMs > 0 && this.#membership !== undefined) {
      if (instance.state === 'up') this.#beginSlowStart(endpoint, now)
      else this.#slowStartOnceUp.add(endpoint)
    }
    this.#endpoints.set(key, endpoint)
    const count = (this.#addressCounts.get(endpoint.address) ?? 0) + 1
    this.#addressCounts.set(endpoint.address, count)
    if (count > 1) this.#sharedAddresses.add(endpoint.address)
    added.push(endpoint)
    return endpoint
  }

  /** The endpoint left the membership. */
  #leave (endpoint: Endpoint): void {
    this.#endpoints.delete(endpoint.key)
    this.#slowStarting.delete(endpoint)
    this.#slowStartOnceUp.delete(endpoint)
    const count = this.#addressCounts.get(endpoint.address)! - 1
    if (count === 0) this.#addressCounts.delete(endpoint.address)
    else this.#addressCounts.set(endpoint.address, count)
    if (count <= 1) this.#sharedAddresses.delete(endpoint.address)
  }

  #settle (membership: Membership, added: readonly Endpoint[], removed: readonly Endpoint[], reshuffled: boolean): void {
    this.#membership = membership
    if (added.length > 0 || removed.length > 0 || reshuffled) this.#rebuild()
    for (const endpoint of added) this.#emit({ type: 'added', endpoint })
    for (const endpoint of removed) this.#emit({ type: 'removed', endpoint })
    this.#emit({ type: 'changed', membership })
  }

  /**
   * The next endpoint for a new request, skipping `exclude` (those already tried for it) and, when
   * `limited`, those at the connection limit. Ejected endpoints are skipped unless too few are
   * healthy (panic: better a likely failure than none).
   */
  pick (exclude?: ReadonlySet<Endpoint>, limited = true): Endpoint | undefined {
    return this.#choose(exclude !== undefined && exclude.size > 0 ? exclude : undefined, limited ? this.#limit : 0)
  }

  /**
   * Whether pick() found no endpoint only because every one it could pick is at the connection limit:
   * the request should wait rather than fail. The rotation does not move.
   */
  atLimit (exclude?: ReadonlySet<Endpoint>): boolean {
    if (this.#limit === 0) return false
    const open = (e: Endpoint): boolean => !exclude?.has(e)
    if (this.#ejected.size === 0) return this.#picker.some(open)
    return this.#picker.some(e => !this.#ejected.has(e) && open(e)) || (this.#panic() && this.#picker.some(open))
  }

  #choose (exclude: ReadonlySet<Endpoint> | undefined, limit: number): Endpoint | undefined {
    if (this.#slowStarting.size > 0) {
      // An instance in slow start takes only its share of the turns it is offered. When no healthy one
      // takes the request that way (all in slow start, the others busy, excluded or ejected), the rules
      // below pick as if none were: it takes what no other would, before an ejected one in panic.
      const now = this.#now()
      if (now >= this.#slowStartsEndMs) {
        for (const endpoint of this.#slowStarting) this.#endSlowStart(endpoint)
      } else {
        if (this.#ejected.size > 0) this.#expireEjections(now)
        const chosen = this.#picker.next(e => !exclude?.has(e) && (limit === 0 || e.inflight < limit) && !this.#ejected.has(e) && this.#takesTurn(e, now))
        if (chosen !== undefined) return chosen
      }
    }
    if (this.#ejected.size > 0) this.#expireEjections(this.#now())
    if (this.#ejected.size === 0) {
      if (limit === 0) return exclude ? this.#picker.next(e => !exclude.has(e)) : this.#picker.next(always)
      return exclude ? this.#picker.next(e => e.inflight < limit && !exclude.has(e)) : this.#picker.next(this.#hasRoom)
    }
    const open = (e: Endpoint): boolean => !exclude?.has(e)
    const chosen = this.#picker.next(e => !this.#ejected.has(e) && open(e) && (limit === 0 || e.inflight < limit))
    if (chosen || !this.#panic()) return chosen
    // Panic: ejected instances are tried when no healthy one is left, not when healthy ones are busy.
    if (limit > 0 && this.#picker.some(e => !this.#ejected.has(e) && open(e))) return undefined
    return this.#picker.next(e => open(e) && (limit === 0 || e.inflight < limit))
  }

  /**
   * Whether an endpoint offered a turn takes it: always, out of slow start; in it, as often as the
   * share it has grown to (from SLOW_START_MIN_SHARE to 1, in step with the time), so that over a
   * rotation it takes what a weight that much lower would give it.
   */
  #takesTurn (endpoint: Endpoint, now: number): boolean {
    if (endpoint.slowStartUntilMs === 0) return true
    const leftMs = endpoint.slowStartUntilMs - now
    if (leftMs <= 0) {
      this.#endSlowStart(endpoint)
      return true
    }
    // In thousandths of a turn: ten tenths add up to exactly one.
    endpoint.slowStartCredit += Math.max(SLOW_START_MIN_SHARE * 1000, Math.round(1000 - 1000 * leftMs / this.#slowStartMs))
    if (endpoint.slowStartCredit < 1000) return false
    endpoint.slowStartCredit -= 1000
    return true
  }

  #beginSlowStart (endpoint: Endpoint, now: number): void {
    endpoint.slowStartUntilMs = now + this.#slowStartMs
    this.#slowStarting.add(endpoint)
    if (endpoint.slowStartUntilMs > this.#slowStartsEndMs) this.#slowStartsEndMs = endpoint.slowStartUntilMs
  }

  #endSlowStart (endpoint: Endpoint): void {
    endpoint.slowStartUntilMs = 0
    endpoint.slowStartCredit = 0
    this.#slowStarting.delete(endpoint)
  }

  /** Whether the endpoint is in slow start now (see PoolOptions.slowStartMs). */
  isSlowStarting (endpoint: Endpoint): boolean {
    return endpoint.slowStartUntilMs > this.#now()
  }

  /** Too few healthy instances for ejection to be honoured. */
  #panic (): boolean {
    const healthyPercent = ((this.#upCount - this.#ejected.size) / this.#upCount) * 100
    return healthyPercent < this.#options.panicThresholdPercent
  }

  /** Whether the endpoint is ejected now: a request pick() gives it was picked in panic. */
  isEjected (endpoint: Endpoint): boolean {
    return this.#ejected.size > 0 && this.#ejected.has(endpoint)
  }

  /** The endpoint answered (see reportAnswer): it is reachable, and its ejections in a row are over. */
  reportSuccess (endpoint: Endpoint): void {
    if (endpoint.failures === 0 && endpoint.ejections === 0) return
    endpoint.failures = 0
    endpoint.ejections = 0
  }

  /** The endpoint took a connection: it is reachable (whether it serves is for its answers to say). */
  reportConnected (endpoint: Endpoint): void {
    endpoint.failures = 0
  }

  /**
   * The endpoint answered a request with `statusCode`. With ejectAfterErrors, a server error counts
   * toward an ejection (see reportServerError); any other answer ends the run, and the ejections in a row.
   * `sentWhileEjected`: the request was sent to it in panic, after its ejection began. Answered, the
   * ejection is over: it serves again, and it need not wait out an ejection that doubled while it was
   * down, with the requests of a panicking pool spread over instances that still refuse. (A request it
   * carried from before its ejection says nothing of that.)
   */
  reportAnswer (endpoint: Endpoint, statusCode: number, sentWhileEjected = false): void {
    if (this.#errorLimit === 0 || statusCode < 500 || statusCode === 501 || statusCode === 505) {
      if (endpoint.serverErrors !== 0) endpoint.serverErrors = 0
      if (sentWhileEjected) this.#readmit(endpoint)
      return this.reportSuccess(endpoint)
    }
    endpoint.failures = 0
    this.reportServerError(endpoint)
  }

  /**
   * With ejectAfterErrors, the endpoint failed a request it took: a server error, or a reset, a timeout
   * or a broken answer before any answer. The last of that many in a row ejects it. Those that come
   * while it is ejected (requests it was already carrying) do not count toward the next run.
   */
  reportServerError (endpoint: Endpoint): void {
    if (this.#errorLimit === 0) return
    if (endpoint.ejectedUntilMs > this.#now()) {
      endpoint.serverErrors = 0
      return
    }
    if (++endpoint.serverErrors < this.#errorLimit) return
    endpoint.serverErrors = 0
    this.#eject(endpoint, 'server-errors')
  }

  /** A connect failed: eject the endpoint for a growing time, so later requests skip it. */
  reportConnectFailure (endpoint: Endpoint): void {
    endpoint.failures++
    this.#eject(endpoint, 'connect')
  }

  #eject (endpoint: Endpoint, reason: EjectionReason): void {
    // A late failure of a removed endpoint is not its successor's (same key, a new object); nor is one of
    // an entry set aside for its server's other one.
    if (this.#endpoints.get(endpoint.key) !== endpoint || endpoint.instance.state !== 'up' || this.#setAside.has(endpoint)) return
    const now = this.#now()
    if (endpoint.ejectedUntilMs > now) return
    if (reason === 'server-errors' && !this.#mayEjectForErrors(now)) return
    const durationMs = Math.min(this.#options.ejectMaxMs, this.#options.ejectBaseMs * 2 ** endpoint.ejections)
    endpoint.ejections++
    endpoint.ejectedUntilMs = now + durationMs
    endpoint.changedAtMs = now
    this.#ejected.add(endpoint)
    this.#emit({ type: 'ejected', endpoint, durationMs, reason })
  }

  #readmit (endpoint: Endpoint): void {
    if (!this.#ejected.has(endpoint)) return
    this.#ejected.delete(endpoint)
    endpoint.ejectedUntilMs = 0
    endpoint.changedAtMs = this.#now()
    this.#emit({ type: 'readmitted', endpoint })
  }

  /**
   * Server errors eject no more instances than leave the healthy share at the panic threshold, and never
   * the last healthy one: when most of a fleet fails alike (its shared database is down), none serves
   * better than the others, and ejections would only pile the requests onto the last few. A refused
   * connect has no such cap: nothing at all is served there.
   */
  #mayEjectForErrors (now: number): boolean {
    this.#expireEjections(now)
    const healthyAfter = this.#upCount - this.#ejected.size - 1
    return healthyAfter >= 1 && healthyAfter * 100 >= this.#options.panicThresholdPercent * this.#upCount
  }

  /** Counts by state, for status and metrics. */
  counts (): Record<EndpointState, number> {
    const now = this.#now()
    const counts: Record<EndpointState, number> = { up: 0, draining: 0, ejected: 0 }
    for (const endpoint of this.#endpoints.values()) counts[endpoint.state(now)]++
    return counts
  }

  #expireEjections (now: number): void {
    for (const endpoint of this.#ejected) {
      if (endpoint.ejectedUntilMs <= now) {
        this.#ejected.delete(endpoint)
        endpoint.changedAtMs = now
      }
    }
  }

  #rebuild (): void {
    // One server registered under two ids (a ServerSet member back before its old znode expired) is
    // one server: one share, one connection limit, and a retry that does not land on it again. Its
    // first entry takes the requests; the other serves what it already has. Only addresses held twice
    // are looked up: at 10,000 instances, a set of every address was most of a change's cost here.
    const shared = this.#sharedAddresses
    const seen = new Set<string>()
    this.#setAside.clear()
    const up = this.#ordered.filter(e => {
      if (e.instance.state !== 'up') return false
      if (shared.size === 0 || !shared.has(e.address)) return true
      if (seen.has(e.address)) {
        this.#setAside.add(e)
        return false
      }
      seen.add(e.address)
      return true
    })
    this.#upCount = up.length
    // Only endpoints in the rotation count as ejected. An ejection outlives a spell of draining: the
    // instance comes back up still ejected, as it shows. One set aside is not ejected: its server's
    // other entry stands for it.
    const now = this.#now()
    if (this.#slowStartOnceUp.size > 0) {
      for (const endpoint of this.#slowStartOnceUp) {
        if (endpoint.instance.state !== 'up') continue
        this.#slowStartOnceUp.delete(endpoint)
        this.#beginSlowStart(endpoint, now)
      }
    }
    if (this.#setAside.size > 0 && this.#slowStarting.size > 0) this.#shareSlowStarts(up, now)
    this.#expireEjections(now)
    for (const endpoint of this.#setAside) {
      if (endpoint.ejectedUntilMs > now) {
        endpoint.ejectedUntilMs = 0
        endpoint.changedAtMs = now
      }
    }
    this.#ejected.clear()
    for (const endpoint of up) if (endpoint.ejectedUntilMs > now) this.#ejected.add(endpoint)
    this.#picker.reset(up)
  }

  /**
   * One server, one slow start: an entry set aside that joined later (its server back under a new id
   * before the old entry expired) says when the server started again, so the entry that takes the
   * server's requests ramps up with it, from then, rather than at full share until the old entry goes.
   */
  #shareSlowStarts (up: readonly Endpoint[], now: number): void {
    const entries = new Map<string, Endpoint>()
    for (const endpoint of up) if (this.#sharedAddresses.has(endpoint.address)) entries.set(endpoint.address, endpoint)
    for (const aside of this.#setAside) {
      if (aside.slowStartUntilMs <= now) continue
      const entry = entries.get(aside.address)
      if (entry === undefined || entry.slowStartUntilMs >= aside.slowStartUntilMs) continue
      entry.slowStartUntilMs = aside.slowStartUntilMs
      this.#slowStarting.add(entry)
    }
  }

  #emit (event: PoolEvent): void {
    for (const listener of this.#listeners) listener(event)
  }
}

/**
 * The endpoint's instance registered again with other data: the same endpoint, keeping its health and
 * counters. Returns whether the rotation must be rebuilt (a new state or weight).
 */
function renew (endpoint: Endpoint, instance: Instance, now: number): boolean {
  const before = endpoint.instance
  endpoint.instance = instance
  if (before.state !== instance.state) endpoint.changedAtMs = now
  return before.state !== instance.state || before.weight !== instance.weight
}

function instanceOf (endpoint: Endpoint): Instance {
  return endpoint.instance
}

function always (): boolean {
  return true
}
