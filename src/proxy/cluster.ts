// Multi-core: the primary process holds the one discovery source per machine (one ZooKeeper session,
// not one per worker), the admin listener and the workers' lifecycle; each worker serves the proxy port
// with a RemoteSource fed over IPC. /status and /metrics merge what the workers report.

import cluster, { type Worker } from 'node:cluster'
import { randomUUID } from 'node:crypto'
import { Counter, Registry, type Aggregator, type MetricObjectWithValues, type MetricValue } from 'prom-client'
import { splitHostPort, WORKER_CONFIG_ENV, type ProxyConfig } from '../config.ts'
import { FleetgateError, listenFor } from '../errors.ts'
import type { Logger } from '../logger.ts'
import { instanceAddress, type Instance } from '../membership/instance.ts'
import { deltaFromChange, diffInstances, RemoteSource, type SourceUpdate } from '../membership/remote.ts'
import type { MembershipSource } from '../membership/source.ts'
import { createProxyMetrics } from '../metrics.ts'
import { buildAdmin } from './admin.ts'
import { missingNodeFlags } from './node-flags.ts'
import { createProxy, describeQueue, describeSource, wireDiscoveryMetrics, type ProxyStatus } from './server.ts'
import { renderStatusPage } from './status-page.ts'
import { MetricsRenderer, PRIMARY_METRICS } from './metrics-renderer.ts'
import { isCount, isRecord, isTrafficReport, type TrafficReport } from './traffic-report.ts'

type ToWorker =
  | { readonly fleetgate: 'source', readonly update: SourceUpdate }
  | { readonly fleetgate: 'query', readonly id: string, readonly what: 'status' | 'metrics' }
  | { readonly fleetgate: 'shutdown' }
  /** The watchdog's question: a worker whose event loop turns answers it with a pong. */
  | { readonly fleetgate: 'ping' }

type ToPrimary =
  /** Sent at start, and again by a worker that got a delta it cannot apply: asks for the whole list. */
  | { readonly fleetgate: 'hello' }
  | { readonly fleetgate: 'listening', readonly port: number }
  | { readonly fleetgate: 'answer', readonly id: string, readonly value: unknown }
  | { readonly fleetgate: 'pong' }

/**
 * A worker's answer to a metrics query: the process's own metrics (node's and the process's, a few dozen
 * series) as prom-client JSON, and its traffic as a report the primary renders.
 */
export interface WorkerMetrics {
  readonly process: MetricObjectWithValues<MetricValue<string>>[]
  readonly traffic: TrafficReport
}

/** Whether a worker's answer has that shape; a worker that could not answer sends null, which has not. */
export function isWorkerMetrics (value: unknown): value is WorkerMetrics {
  const answer = value as Partial<WorkerMetrics> | null
  return Array.isArray(answer?.process) && answer.process.every(isProcessMetric) && isTrafficReport(answer?.traffic)
}

const AGGREGATORS: ReadonlySet<unknown> = new Set<Aggregator>(['omit', 'sum', 'first', 'min', 'max', 'average'])

/**
 * What AggregatorRegistry.aggregate reads of a metric, which it would otherwise throw on. A value may be
 * null: the JSON of the IPC channel turns a NaN (a gauge not yet measured) into null.
 */
function isProcessMetric (metric: unknown): boolean {
  if (!isRecord(metric)) return false
  const { name, help, type, aggregator, values } = metric
  return typeof name === 'string' && typeof help === 'string' && typeof type === 'string' && AGGREGATORS.has(aggregator) &&
    Array.isArray(values) && values.every(sample =>
      isRecord(sample) && (typeof sample.value === 'number' || sample.value === null) && isRecord(sample.labels))
}

/** Whether a worker's /status answer has what mergeStatus reads: its instances' counts, and its queue's. */
export function isStatusPart (value: unknown): value is ProxyStatus {
  if (!isRecord(value) || !isRecord(value.queue) || !isCount(value.queue.waiting) || !isCount(value.queue.timedOut)) return false
  const latency = (ms: unknown): boolean => ms === null || isCount(ms)
  return Array.isArray(value.instances) && value.instances.every(instance =>
    isRecord(instance) && typeof instance.id === 'string' && typeof instance.address === 'string' &&
    typeof instance.state === 'string' && typeof instance.changedAt === 'string' &&
    isCount(instance.inflight) && isCount(instance.requests) && isCount(instance.errors) &&
    latency(instance.p50Ms) && latency(instance.p99Ms) && (instance.slowStartUntil === null || typeof instance.slowStartUntil === 'string'))
}

/** How long the primary waits for a worker's answer to /status or /metrics before leaving it out. */
const QUERY_TIMEOUT_MS = 2_000
/** A worker that dies is replaced after this; while replacements keep dying young, the wait doubles. */
const RESPAWN_DELAY_MS = 1_000
const MAX_RESPAWN_DELAY_MS = 30_000
/** A worker that served this long died of something else than what killed the one before. */
const HEALTHY_LIFETIME_MS = 30_000
/** How often the watchdog asks each worker whether its event loop still turns, at most. */
const PING_INTERVAL_MS = 1_000
/** After the shutdown timeout, how long the primary still waits for a worker before killing it. */
const HARD_STOP_GRACE_MS = 5_000

/**
 * Starts the workers and the admin listener, and resolves once every worker listens. A `stop` that aborts
 * meanwhile (a signal during start-up) stops the workers as close() does, and resolves all the same.
 */
export async function runPrimary (config: ProxyConfig, source: MembershipSource, logger: Logger, workerCount: number, stop?: AbortSignal): Promise<{ close(): Promise<void> }> {
  const service = config.service
  const log = logger.child({ service, role: 'primary' })
  let closing = false
  /** Queries out to the workers: the answers so far, and the workers still owing one. */
  const pending = new Map<string, { answers: Array<[worker: number, answer: unknown]>, owing: Set<number>, resolve: () => void }>()
  const listening = new Map<Worker, number>()

  // fleetgate's metrics only. The discovery ones are the primary's own; the rest add up the workers' last
  // reports, as do the process metrics (the workers serve the traffic), on a thread of their own.
  const registry = new Registry()
  const metrics = createProxyMetrics(registry, {
    service,
    sourceKind: source.kind,
    instanceCounts: () => ({}),
    instanceStates: () => [],
    discovery: () => {
      const state = source.state()
      return { connected: state.status === 'connected', stale: state.stale }
    },
  })
  for (const metric of registry.getMetricsAsArray()) if (!PRIMARY_METRICS.has(metric.name)) registry.removeSingleMetric(metric.name)
  wireDiscoveryMetrics(source, metrics, service, log)
  const restarts = new Counter({
    name: 'fleetgate_worker_restarts_total',
    help: 'Workers replaced, by reason: exited (died, killed) or stalled (killed by the watchdog after --worker-stall-timeout-ms without an answer)',
    labelNames: ['service', 'reason'] as const,
    registers: [registry],
  })
  for (const reason of ['exited', 'stalled']) restarts.inc({ service, reason }, 0)
  const renderer = new MetricsRenderer({ service, sourceKind: source.kind }, err => {
    log.error({ err }, 'the metrics thread failed; the next scrape starts another, with the counts so far lost')
  })

  // The last membership list sent to the workers, and its number: each change goes out as a delta from it.
  let sent: { seq: number, revision: number, instances: readonly Instance[] } | undefined
  const sourceStatus = (): Pick<SourceUpdate, 'kind' | 'status' | 'stale'> => {
    const { kind, status, stale } = source.state()
    return { kind, status, stale }
  }
  const whole = (): SourceUpdate => ({ ...sourceStatus(), ...(sent ? { seq: sent.seq, instances: sent.instances } : {}) })
  const broadcast = (update: SourceUpdate): void => {
    const message: ToWorker = { fleetgate: 'source', update }
    for (const worker of Object.values(cluster.workers ?? {})) if (worker?.isConnected()) worker.send(message)
  }
  source.onEvent(event => {
    if (event.type === 'status') {
      broadcast(sourceStatus())
    } else if (event.type === 'membership') {
      const { instances, change, revision } = event.membership
      // The source's own account of the change, when it follows the list sent last; else a diff of the two.
      const reported = sent && change !== undefined && revision === sent.revision + 1
        ? deltaFromChange(sent.instances, instances, change, sent.seq)
        : undefined
      const delta = sent && (reported ?? diffInstances(sent.instances, instances, sent.seq))
      sent = { seq: (sent?.seq ?? 0) + 1, revision, instances }
      // A delta that replaces most of the list is no cheaper than the list.
      broadcast(delta && delta.added.length < instances.length / 2 ? { ...sourceStatus(), seq: sent.seq, delta } : whole())
    }
  })

  /**
   * Each listening worker's answer, by worker id; a worker that does not answer in time is left out. One
   * still starting (a replacement) has served nothing, and could not hear the question yet: it would
   * hold every scrape for the whole timeout.
   */
  const query = (what: 'status' | 'metrics'): Promise<Array<[worker: number, answer: unknown]>> => {
    const workers = [...listening.keys()].filter(worker => worker.isConnected())
    if (workers.length === 0) return Promise.resolve([])
    const id = randomUUID()
    return new Promise(resolve => {
      const timer = setTimeout(() => finish(), QUERY_TIMEOUT_MS)
      const finish = (): void => {
        clearTimeout(timer)
        const entry = pending.get(id)
        pending.delete(id)
        resolve(entry?.answers ?? [])
      }
      pending.set(id, { answers: [], owing: new Set(workers.map(worker => worker.id)), resolve: finish })
      for (const worker of workers) worker.send({ fleetgate: 'query', id, what } satisfies ToWorker)
    })
  }

  // Until every first worker listens, a worker that exits is a start-up failure (a port in use, say):
  // the primary stops rather than fork the same failure again and again.
  let started = false
  let failStart: (err: Error) => void = () => undefined
  /** One per worker slot: how many of its workers in a row died young. A replacement takes its slot. */
  interface Slot { shortLives: number }
  // A worker forked later (a replacement) runs on the same settings as the others, whatever the file says
  // by then. It follows the primary's source, so it needs no registry credentials.
  const workerEnv = { [WORKER_CONFIG_ENV]: JSON.stringify({ ...config, consulToken: undefined }) }
  /**
   * The watchdog's view of each worker: when it last heard from it, from its first message on (before it,
   * the worker is loading its code), and whether it has killed it.
   */
  const heard = new Map<Worker, { atMs: number, killed: boolean }>()
  const fork = (slot: Slot = { shortLives: 0 }): void => {
    const worker = cluster.fork(workerEnv)
    const forkedAtMs = performance.now()
    // A message to a worker that is exiting fails (EPIPE) after isConnected() said yes. Its 'exit' follows
    // and is handled there; unheard, the error would take the primary down.
    worker.on('error', err => log.debug({ err, pid: worker.process.pid }, 'message to a proxy worker not delivered'))
    worker.on('message', (message: ToPrimary) => {
      const watch = heard.get(worker)
      if (watch) watch.atMs = performance.now()
      else heard.set(worker, { atMs: performance.now(), killed: false })
      if (message?.fleetgate === 'hello') {
        // A worker still loading its code when shutdown began never got the message.
        worker.send(closing ? { fleetgate: 'shutdown' } satisfies ToWorker : { fleetgate: 'source', update: whole() } satisfies ToWorker)
      } else if (message?.fleetgate === 'listening') {
        listening.set(worker, message.port)
        log.info({ pid: worker.process.pid, port: message.port }, 'proxy worker listening')
      } else if (message?.fleetgate === 'answer') {
        const entry = pending.get(message.id)
        if (!entry?.owing.delete(worker.id)) return
        entry.answers.push([worker.id, message.value])
        if (entry.owing.size === 0) entry.resolve()
      }
    })
    worker.on('exit', (code, signal) => {
      listening.delete(worker)
      const stalled = heard.get(worker)?.killed === true
      heard.delete(worker)
      // While shutting down too, once a scrape has started the metrics thread: a scrape during the drain
      // must not count what a worker that has exited held. (Before any scrape, it holds nothing of it.)
      if (!closing || scrapes > 0) renderer.retire(worker.id)
      // A scrape does not wait out the query timeout for a worker that is gone.
      for (const entry of pending.values()) if (entry.owing.delete(worker.id) && entry.owing.size === 0) entry.resolve()
      if (closing) return
      if (!started) {
        failStart(new FleetgateError('FLEETGATE_ERR_WORKER_EXIT', `worker ${worker.process.pid} exited with ${signal ?? `code ${code}`} (its error is above)`))
        return
      }
      restarts.inc({ service, reason: stalled ? 'stalled' : 'exited' })
      slot.shortLives = performance.now() - forkedAtMs < HEALTHY_LIFETIME_MS ? slot.shortLives + 1 : 0
      const delayMs = Math.min(MAX_RESPAWN_DELAY_MS, RESPAWN_DELAY_MS * 2 ** Math.max(0, slot.shortLives - 1))
      log.error({ pid: worker.process.pid, code, signal, respawnInMs: delayMs }, 'proxy worker died; starting another')
      setTimeout(() => { if (!closing) fork(slot) }, delayMs).unref()
    })
  }

  // The watchdog (HAProxy's and Envoy's kill a process whose thread is stuck): a worker whose event loop
  // has stopped turning (a loop that never ends, SIGSTOP) still holds the connections the kernel gave it,
  // and the shared socket may give it more. It is killed, and replaced as a worker that died.
  const stallTimeoutMs = config.workerStallTimeoutMs
  const pingEveryMs = Math.min(PING_INTERVAL_MS, stallTimeoutMs / 4)
  let lastTickMs = performance.now()
  const watchdog = stallTimeoutMs === 0 ? undefined : setInterval(() => {
    const nowMs = performance.now()
    // A primary that was held itself (stopped, a host that paused) heard nobody meanwhile: the time it
    // missed is not the workers' silence.
    const lateMs = nowMs - lastTickMs - pingEveryMs
    lastTickMs = nowMs
    if (lateMs > pingEveryMs) for (const watch of heard.values()) watch.atMs += lateMs
    for (const [worker, watch] of heard) {
      if (watch.killed || !worker.isConnected()) continue
      const silentMs = nowMs - watch.atMs
      if (silentMs >= stallTimeoutMs) {
        watch.killed = true
        log.error({ pid: worker.process.pid, silentMs: Math.round(silentMs) }, 'proxy worker stopped answering; killing it')
        worker.process.kill('SIGKILL')
      } else {
        worker.send({ fleetgate: 'ping' } satisfies ToWorker)
      }
    }
  }, pingEveryMs)
  watchdog?.unref()

  let scrapes = 0
  const scrape = async (): Promise<Buffer> => {
    // Numbered when asked: a scrape that waited out a dead worker must not put back older reports.
    const asked = ++scrapes
    const answers: Array<[worker: number, answer: WorkerMetrics]> = []
    let malformed = 0
    for (const [worker, answer] of await query('metrics')) {
      if (isWorkerMetrics(answer)) answers.push([worker, answer])
      else if (answer !== null) malformed++ // null: a worker that could not answer, and logged why
    }
    if (malformed > 0) log.warn({ malformed }, 'left out worker metrics of an unknown shape')
    const members = source.current()?.instances.map(instanceAddress) ?? []
    return renderer.render(await registry.metrics(), asked, members, answers)
  }
  // One answer for /readyz and /status: ready once the first membership is known and a worker serves it.
  const ready = (): boolean => !closing && source.current() !== undefined && listening.size > 0
  const status = async (): Promise<ProxyStatus> => {
    const parts = (await query('status')).map(([, answer]) => answer).filter(isStatusPart)
    return mergeStatus(config, source, parts, ready())
  }
  const admin = buildAdmin({
    registry,
    logger: log,
    ready,
    status,
    statusPage: async () => renderStatusPage(await status()),
    metrics: scrape,
  })

  // Let the kernel spread connections over the workers instead of handing each one through the primary.
  // Before setupPrimary, which fixes the policy.
  cluster.schedulingPolicy = cluster.SCHED_NONE
  cluster.setupPrimary({ silent: false, execArgv: [...process.execArgv, ...missingNodeFlags(process.execArgv)] })

  /**
   * Asks every worker to drain, and kills one still there once its drain's deadline is long past (a
   * worker that never listened has nothing to drain: it gets the grace alone).
   */
  const stopWorkers = async (): Promise<void> => {
    closing = true
    const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead())
    await Promise.all(workers.map(worker => new Promise<void>(resolve => {
      const waitMs = (listening.has(worker) ? config.shutdownTimeoutMs : 0) + HARD_STOP_GRACE_MS
      const hardStop = setTimeout(() => {
        log.error({ pid: worker.process.pid, waitedMs: waitMs }, 'proxy worker did not stop; killing it')
        worker.process.kill('SIGKILL')
      }, waitMs)
      worker.once('exit', () => {
        clearTimeout(hardStop)
        resolve()
      })
      if (worker.isConnected()) worker.send({ fleetgate: 'shutdown' } satisfies ToWorker)
      else worker.kill('SIGTERM')
    })))
  }

  source.start().catch(err => log.error({ err }, 'discovery failed to start'))
  const stopped = new Error('stopped while starting')
  const adminAddress = splitHostPort(config.adminListen)
  for (let i = 0; i < workerCount; i++) fork()
  try {
    await new Promise<void>((resolve, reject) => {
      const check = setInterval(() => {
        if (listening.size === workerCount) {
          clearInterval(check)
          resolve()
        }
      }, 10)
      failStart = err => {
        clearInterval(check)
        reject(err)
      }
      stop?.addEventListener('abort', () => failStart(stopped), { once: true })
      if (stop?.aborted) failStart(stopped)
    })
    started = true
    await listenFor('--admin-listen', () => admin.listen({ host: adminAddress.host, port: adminAddress.port }))
  } catch (err) {
    await stopWorkers()
    clearInterval(watchdog)
    await source.close()
    await renderer.close()
    // Stopped by a signal, the start ends quietly; a failure stays one, whatever came after it.
    if (err === stopped) return { close: async () => undefined }
    throw err
  }
  const { host } = splitHostPort(config.listen)
  const port = [...listening.values()][0]
  const adminPort = (admin.server.address() as { port: number }).port
  log.info({ listen: `${host}:${port}`, admin: `${adminAddress.host}:${adminPort}`, workers: workerCount }, 'fleetgate proxy listening')

  return {
    async close () {
      log.info({ workers: Object.keys(cluster.workers ?? {}).length }, 'shutting down: workers drain their in-flight requests')
      await stopWorkers()
      clearInterval(watchdog)
      await source.close()
      await admin.close()
      await renderer.close()
    },
  }
}

/** A message to the primary, unless it is gone (the worker is then on its way out: 'disconnect'). */
function tell (message: ToPrimary): void {
  if (process.connected) process.send?.(message)
}

/** A worker: the proxy app on the shared port, following the primary's source. */
export async function runWorker (config: ProxyConfig, logger: Logger): Promise<{ closed: Promise<void> }> {
  // The pid too: the primary names a worker by it (listening, died, killed), as do ps and the OOM killer.
  const log = logger.child({ role: 'worker', worker: cluster.worker?.id, pid: process.pid })
  const source = new RemoteSource(config.service, 'remote')
  const proxy = createProxy({ ...config, adminListen: undefined }, source, log)
  let resolveClosed!: () => void
  const closed = new Promise<void>(resolve => { resolveClosed = resolve })
  let listened = false
  let shutdownAsked = false
  // Asked before the port is bound, the drain starts once it is (closing a listen under way is racy).
  const shutdown = (): void => {
    shutdownAsked = true
    if (listened) void proxy.close().then(resolveClosed, resolveClosed)
  }
  process.on('message', (message: ToWorker) => {
    switch (message?.fleetgate) {
      case 'source':
        if (source.apply(message.update)) tell({ fleetgate: 'hello' })
        break
      case 'query':
        void answer(message.what)
          .catch(err => {
            // Answered all the same, so the primary need not wait out its timeout: it leaves a null out.
            log.warn({ err, what: message.what }, 'could not answer the primary')
            return null
          })
          .then(value => tell({ fleetgate: 'answer', id: message.id, value }))
        break
      case 'shutdown':
        shutdown()
        break
      case 'ping':
        tell({ fleetgate: 'pong' })
        break
    }
  })
  // The primary owns shutdown; a signal sent to the whole group (Ctrl-C, a closed terminal's SIGHUP)
  // must not race it.
  process.on('SIGINT', () => undefined)
  process.on('SIGHUP', () => undefined)
  // Node's default would open its inspector, which runs any code a local client sends it.
  process.on('SIGUSR1', () => log.info({ signal: 'SIGUSR1' }, 'SIGUSR1 ignored'))
  process.on('SIGTERM', shutdown)
  // A primary that is gone (killed, out of memory) leaves the worker to finish what it carries. Node's
  // cluster would end the worker at once, unless the disconnect is marked as one it asked for.
  if (cluster.worker) cluster.worker.exitedAfterDisconnect = true
  process.on('disconnect', shutdown)
  const answer = async (what: 'status' | 'metrics'): Promise<unknown> => {
    if (what === 'status') return proxy.status()
    const { registry } = proxy.metrics
    const own = registry.getMetricsAsArray().filter(metric => !metric.name.startsWith('fleetgate_'))
    const processMetrics = await Promise.all(own.map(metric => registry.getSingleMetric(metric.name)!.get()))
    return { process: processMetrics, traffic: proxy.report() } satisfies WorkerMetrics
  }
  // Hello first: the membership is on its way while the listener opens.
  tell({ fleetgate: 'hello' })
  const { port } = await proxy.listen()
  listened = true
  tell({ fleetgate: 'listening', port })
  if (shutdownAsked) shutdown()
  return { closed }
}

/** One view of every worker's pool: counts add up; an instance ejected by any worker shows as ejected. */
function mergeStatus (config: ProxyConfig, source: MembershipSource, parts: ProxyStatus[], ready: boolean): ProxyStatus {
  const byKey = new Map<string, ProxyStatus['instances'][number]>()
  for (const part of parts) {
    for (const instance of part.instances) {
      const key = `${instance.id}@${instance.address}`
      const seen = byKey.get(key)
      if (!seen) {
        byKey.set(key, { ...instance })
        continue
      }
      seen.inflight += instance.inflight
      seen.requests += instance.requests
      seen.errors += instance.errors
      seen.p50Ms = max(seen.p50Ms, instance.p50Ms)
      seen.p99Ms = max(seen.p99Ms, instance.p99Ms)
      if (instance.state === 'ejected') seen.state = 'ejected'
      if (instance.changedAt > seen.changedAt) seen.changedAt = instance.changedAt
      // Each worker's slow start began when the change reached it: the latest end is the one still to come.
      if (instance.slowStartUntil !== null && (seen.slowStartUntil === null || instance.slowStartUntil > seen.slowStartUntil)) seen.slowStartUntil = instance.slowStartUntil
    }
  }
  return {
    service: config.service,
    ready,
    source: describeSource(source.state()),
    instances: [...byKey.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)),
    // The limit stays per process: with N workers an instance may carry N times it.
    queue: describeQueue(config, sum(parts, p => p.queue.waiting), sum(parts, p => p.queue.timedOut)),
  }
}

function sum<T> (items: readonly T[], of: (item: T) => number): number {
  return items.reduce((total, item) => total + of(item), 0)
}

function max (a: number | null, b: number | null): number | null {
  return a === null ? b : b === null ? a : Math.max(a, b)
}
