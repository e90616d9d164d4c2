// What a worker of a multi-process proxy tells its primary at a scrape: its traffic and pool as plain
// numbers, not as Prometheus series. The primary adds the workers' numbers up and renders the series once.
// A worker that answered with prom-client's JSON spent about 50 ms at 1,000 busy instances, and up to half
// a second at 10,000, building and serialising every series: time its event loop, and the requests on it,
// waited. A report costs a walk of the instances, and leaves out what is zero.

import { DURATION_BUCKETS_SECONDS, INSTANCE_COUNTS, type InstanceTraffic, type ProxyCollectors, type RequestCount, type RetryReason, type Traffic } from '../metrics.ts'

export interface TrafficReport {
  readonly instances: readonly InstanceReport[]
  readonly unanswered: readonly RequestCount[]
  readonly retries: Readonly<Record<RetryReason, number>>
  readonly noLiveInstances: number
  readonly queue: { readonly size: number, readonly timeouts: number }
  readonly instanceCounts: Readonly<Record<string, number>>
  readonly instanceStates: ReadonlyArray<readonly [instance: string, state: string]>
}

type Mutable<T> = { -readonly [K in keyof T]: T[K] }

/** One `instance` label value's series; a field left out is zero (or, for the lists, empty). */
export interface InstanceReport {
  readonly instance: string
  readonly inFlight?: number
  readonly requests?: readonly RequestCount[]
  readonly duration?: { readonly buckets: readonly number[], readonly sum: number, readonly count: number }
  readonly connectFailures?: number
  readonly ejections?: number
  readonly ejectionsAfterErrors?: number
  readonly cutOffs?: number
}

/**
 * Whether a value is a report MergedTraffic can add up: every part it reads is there, and every count in
 * it is a number. A worker forked after the code on disk changed may send another shape; its answer is
 * then left out rather than failing the scrape, or adding strings.
 */
export function isTrafficReport (value: unknown): value is TrafficReport {
  if (!isRecord(value)) return false
  const { instances, unanswered, retries, noLiveInstances, queue, instanceCounts, instanceStates } = value
  return Array.isArray(instances) && instances.every(isInstanceReport) &&
    isRequestCounts(unanswered) &&
    isRecord(retries) && Object.values(retries).every(isCount) &&
    isCount(noLiveInstances) &&
    isRecord(queue) && isCount(queue.size) && isCount(queue.timeouts) &&
    isRecord(instanceCounts) && Object.values(instanceCounts).every(isCount) &&
    Array.isArray(instanceStates) && instanceStates.every(pair => Array.isArray(pair) && typeof pair[0] === 'string' && typeof pair[1] === 'string')
}

function isInstanceReport (part: unknown): part is InstanceReport {
  if (!isRecord(part) || typeof part.instance !== 'string') return false
  const { inFlight, requests, duration } = part
  return [inFlight, ...INSTANCE_COUNTS.map(count => part[count])].every(count => count === undefined || isCount(count)) &&
    (requests === undefined || isRequestCounts(requests)) &&
    (duration === undefined || (isRecord(duration) && Array.isArray(duration.buckets) && duration.buckets.every(isCount) &&
      isCount(duration.sum) && isCount(duration.count)))
}

function isRequestCounts (value: unknown): value is RequestCount[] {
  return Array.isArray(value) &&
    value.every(entry => isRecord(entry) && typeof entry.method === 'string' && typeof entry.code === 'string' && isCount(entry.count))
}

export function isRecord (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

export function isCount (value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0
}

export type ReportedCollectors = Required<Pick<ProxyCollectors, 'traffic' | 'queue' | 'instanceCounts' | 'instanceStates'>>

/** A worker's report, read from the collectors its own metrics use. */
export function reportTraffic ({ traffic, queue, instanceCounts, instanceStates }: ReportedCollectors): TrafficReport {
  const instances: InstanceReport[] = []
  for (const series of traffic.instances()) {
    const requests = [...series.requests()]
    const { buckets, sum, count } = series.duration
    const part: Mutable<InstanceReport> = {
      instance: series.instance,
      ...(series.inFlight === 0 ? {} : { inFlight: series.inFlight }),
      ...(requests.length === 0 ? {} : { requests }),
      ...(count === 0 ? {} : { duration: { buckets: Array.from(buckets), sum, count } }),
    }
    for (const name of INSTANCE_COUNTS) if (series[name] !== 0) part[name] = series[name]
    instances.push(part)
  }
  return {
    instances,
    unanswered: [...traffic.unanswered()],
    retries: { ...traffic.retries },
    noLiveInstances: traffic.noLiveInstances,
    queue: { size: queue.size, timeouts: queue.timeouts },
    instanceCounts: instanceCounts(),
    instanceStates: [...instanceStates()],
  }
}

/** How long a late answer of a worker that exited is watched for: well past the primary's query timeout. */
const GONE_KEPT_MS = 60_000

/**
 * The workers' reports, added up as the primary's collectors. Counters, histograms and in-flight gauges
 * add up over the workers. The pool's gauges do not, because every worker holds the same membership: a
 * count by state is the largest any worker reports, and an instance is in every state some worker sees
 * it in (ejected by one, up in the others).
 *
 * Counters only ever go up, as Prometheus reads them (a drop is a restart, and the whole count is taken
 * as new):
 * - a worker that does not answer a scrape counts with its last report, and an answer older than the
 *   one held (a scrape that waited out a dead worker) is not taken;
 * - a worker that exited keeps its counts in the totals (`retire`), without its gauges; a late answer
 *   of its own is not taken either;
 * - an instance a worker stopped reporting, or reports again from 0 (it left and came back), keeps that
 *   worker's earlier counts while some worker reports it. Its series go once no worker reports it.
 */
export class MergedTraffic implements Traffic {
  /**
   * Each live worker's last report, the number of the scrape it answered, and per instance the counts
   * it reported before its series started again or went.
   */
  #held = new Map<number, { report: TrafficReport, asked: number, carried: Map<string, MergedInstance> }>()
  /** Workers that exited, and when: an answer of theirs may still come in, for as long as a query waits. */
  readonly #gone = new Map<number, number>()
  #asked = 0
  /** What workers that exited had counted. */
  #retired = { instances: new Map<string, MergedInstance>(), unanswered: new Map<string, RequestCount>(), retries: noRetries(), noLiveInstances: 0, queueTimeouts: 0 }
  #instances = new Map<string, MergedInstance>()
  #unanswered = new Map<string, RequestCount>()
  #retries = noRetries()
  #noLiveInstances = 0
  #counts: Record<string, number> = {}
  #states: Array<readonly [string, string]> = []
  readonly queue = { size: 0, timeouts: 0 }

  /**
   * Takes the reports of the workers that answered a scrape, by worker id, and adds up what every live
   * worker said last. `asked` numbers the scrape (default: after the last); `members`, the addresses in
   * the membership, keeps their counts while no worker reports them yet (all of them just replaced). An
   * instance's object lives on from scrape to scrape while it is reported, so the labels the metrics keep
   * for it (and prom-client's text of them) are made once.
   */
  update (answers: Iterable<readonly [worker: number, report: TrafficReport]>, { asked = this.#asked + 1, members }: { asked?: number, members?: ReadonlySet<string> } = {}): void {
    this.#asked = Math.max(this.#asked, asked)
    const now = performance.now()
    for (const [worker, retiredAtMs] of this.#gone) if (now - retiredAtMs > GONE_KEPT_MS) this.#gone.delete(worker)
    for (const [worker, report] of answers) {
      const before = this.#held.get(worker)
      if (this.#gone.has(worker) || (before !== undefined && before.asked > asked)) continue
      const carried = before?.carried ?? new Map<string, MergedInstance>()
      if (before) {
        const current = new Map(report.instances.map(part => [part.instance, part]))
        for (const part of before.report.instances) {
          const next = current.get(part.instance)
          if (next === undefined || restarted(part, next)) addTo(carried, countsOf(part))
        }
      }
      this.#held.set(worker, { report, asked, carried })
    }
    this.#merge(members)
  }

  /** A worker that exited: what it counted stays in the totals; what it held (in flight, queued) goes. */
  retire (worker: number): void {
    this.#gone.set(worker, performance.now())
    const held = this.#held.get(worker)
    if (!held) return
    this.#held.delete(worker)
    const retired = this.#retired
    for (const part of held.report.instances) addTo(retired.instances, countsOf(part))
    for (const part of held.carried.values()) addTo(retired.instances, countsOf(part))
    addCounts(retired.unanswered, held.report.unanswered)
    addRetries(retired.retries, held.report.retries)
    retired.noLiveInstances += held.report.noLiveInstances
    retired.queueTimeouts += held.report.queue.timeouts
  }

  #merge (members: ReadonlySet<string> | undefined): void {
    // An instance is reported while a live worker's last report names it, or it is in the membership;
    // the counts others kept of it go with it.
    const named = new Set<string>(members)
    for (const { report } of this.#held.values()) for (const part of report.instances) named.add(part.instance)
    for (const { carried } of this.#held.values()) for (const instance of carried.keys()) if (!named.has(instance)) carried.delete(instance)
    for (const instance of this.#retired.instances.keys()) if (!named.has(instance)) this.#retired.instances.delete(instance)

    for (const merged of this.#instances.values()) merged.clear()
    for (const instance of this.#instances.keys()) if (!named.has(instance)) this.#instances.delete(instance)
    const add = (part: InstanceReport): void => addTo(this.#instances, part)
    const retired = this.#retired
    for (const part of retired.instances.values()) add(countsOf(part))
    this.#unanswered = new Map(retired.unanswered)
    this.#retries = { ...retired.retries }
    this.#noLiveInstances = retired.noLiveInstances
    this.queue.size = 0
    this.queue.timeouts = retired.queueTimeouts
    this.#counts = {}
    const states = new Map<string, Set<string>>()
    for (const { report, carried } of this.#held.values()) {
      for (const part of report.instances) add(part)
      for (const part of carried.values()) add(countsOf(part))
      addCounts(this.#unanswered, report.unanswered)
      addRetries(this.#retries, report.retries)
      this.#noLiveInstances += report.noLiveInstances
      this.queue.size += report.queue.size
      this.queue.timeouts += report.queue.timeouts
      for (const [state, count] of Object.entries(report.instanceCounts)) this.#counts[state] = Math.max(this.#counts[state] ?? 0, count)
      for (const [instance, state] of report.instanceStates) {
        let seen = states.get(instance)
        if (!seen) states.set(instance, seen = new Set())
        seen.add(state)
      }
    }
    this.#states = []
    for (const [instance, seen] of states) for (const state of seen) this.#states.push([instance, state])
  }

  instances (): IterableIterator<InstanceTraffic> {
    return this.#instances.values()
  }

  unanswered (): IterableIterator<RequestCount> {
    return this.#unanswered.values()
  }

  get retries (): Readonly<Record<RetryReason, number>> {
    return this.#retries
  }

  get noLiveInstances (): number {
    return this.#noLiveInstances
  }

  instanceCounts (): Record<string, number> {
    return this.#counts
  }

  /** Each instance with each state a worker sees it in; an instance may come more than once. */
  instanceStates (): Iterable<readonly [instance: string, state: string]> {
    return this.#states
  }
}

function noRetries (): Record<RetryReason, number> {
  return { connect_failure: 0, reset_before_response: 0 }
}

function addRetries (into: Record<RetryReason, number>, from: Readonly<Record<RetryReason, number>>): void {
  for (const reason of Object.keys(into) as RetryReason[]) into[reason] += from[reason] ?? 0
}

/** Adds `part` to its instance's entry in `into`, made on first use. */
function addTo (into: Map<string, MergedInstance>, part: InstanceReport): void {
  let merged = into.get(part.instance)
  if (!merged) into.set(part.instance, merged = new MergedInstance(part.instance))
  merged.add(part)
}

/**
 * Whether an instance's series started again between two reports: any one count went down. (One that
 * started again and outgrew every count is read as continued: undercounted, never decreasing.)
 */
function restarted (before: InstanceReport, after: InstanceReport): boolean {
  for (const count of INSTANCE_COUNTS) if ((after[count] ?? 0) < (before[count] ?? 0)) return true
  const counts = new Map(after.requests?.map(entry => [`${entry.method} ${entry.code}`, entry.count]))
  if (before.requests?.some(entry => (counts.get(`${entry.method} ${entry.code}`) ?? 0) < entry.count)) return true
  const was = before.duration
  if (!was) return false
  const is = after.duration ?? { buckets: [], sum: 0, count: 0 }
  return is.count < was.count || is.sum < was.sum || was.buckets.some((count, i) => (is.buckets[i] ?? 0) < count)
}

/** An instance's counters, without its in-flight gauge. */
function countsOf (part: InstanceReport | MergedInstance): InstanceReport {
  const requests = part instanceof MergedInstance ? [...part.requests()] : part.requests
  const duration = part.duration && { buckets: [...part.duration.buckets], sum: part.duration.sum, count: part.duration.count }
  const counts: Mutable<InstanceReport> = { instance: part.instance, requests, duration }
  for (const count of INSTANCE_COUNTS) counts[count] = part[count]
  return counts
}

class MergedInstance implements InstanceTraffic {
  inFlight = 0
  connectFailures = 0
  ejections = 0
  ejectionsAfterErrors = 0
  cutOffs = 0
  readonly duration = { buckets: new Array<number>(DURATION_BUCKETS_SECONDS.length + 1).fill(0), sum: 0, count: 0 }
  readonly #requests = new Map<string, RequestCount>()

  constructor (readonly instance: string) {}

  clear (): void {
    this.inFlight = 0
    for (const count of INSTANCE_COUNTS) this[count] = 0
    this.duration.buckets.fill(0)
    this.duration.sum = 0
    this.duration.count = 0
    this.#requests.clear()
  }

  add (part: InstanceReport): void {
    this.inFlight += part.inFlight ?? 0
    for (const count of INSTANCE_COUNTS) this[count] += part[count] ?? 0
    if (part.requests) addCounts(this.#requests, part.requests)
    if (part.duration) {
      const { buckets } = this.duration
      for (let i = 0; i < buckets.length; i++) buckets[i]! += part.duration.buckets[i] ?? 0
      this.duration.sum += part.duration.sum
      this.duration.count += part.duration.count
    }
  }

  requests (): IterableIterator<RequestCount> {
    return this.#requests.values()
  }
}

function addCounts (into: Map<string, RequestCount>, counts: readonly RequestCount[]): void {
  for (const { method, code, count } of counts) {
    const key = `${method} ${code}`
    into.set(key, { method, code, count: (into.get(key)?.count ?? 0) + count })
  }
}
