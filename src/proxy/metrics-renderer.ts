// The primary's /metrics, rendered on a thread of its own. The primary holds the discovery session, and
// its event loop is what reads each ZooKeeper answer: at 10,000 instances, turning the workers' reports
// into 26 MB of text held it for over half a second, and a change that came meanwhile waited as long.
// The thread adds the reports up (MergedTraffic) and renders their series, and the process metrics; the
// primary renders only what it sees itself (discovery), and hands that text in with each scrape.

import { fileURLToPath } from 'node:url'
import { extname } from 'node:path'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import { AggregatorRegistry, Registry } from 'prom-client'
import { createProxyMetrics } from '../metrics.ts'
import type { WorkerMetrics } from './cluster.ts'
import { MergedTraffic } from './traffic-report.ts'

/** The metrics of what the primary itself sees (its source, its session): the primary renders these. */
export const PRIMARY_METRICS: ReadonlySet<string> = new Set([
  'fleetgate_membership_changes_total',
  'fleetgate_membership_last_change_timestamp_seconds',
  'fleetgate_discovery_connected',
  'fleetgate_discovery_stale',
  'fleetgate_zookeeper_session_expirations_total',
  'fleetgate_invalid_registrations_total',
])

interface RendererOptions {
  readonly service: string
  readonly sourceKind: string
}

type ToRenderer =
  | { readonly type: 'render', readonly id: number, readonly own: string, readonly asked: number, readonly members: readonly string[], readonly answers: ReadonlyArray<readonly [worker: number, answer: WorkerMetrics]> }
  | { readonly type: 'retire', readonly worker: number }

type FromRenderer = { readonly id: number, readonly body: Uint8Array } | { readonly id: number, readonly error: string }

/**
 * The primary's side: renders scrapes on the thread, started at the first (or at a worker's exit before
 * it). Counts carried from one scrape to the next live on the thread; a thread that failed (it should
 * not: a scrape that fails fails alone) is replaced at the next scrape, with its counts lost (Prometheus
 * takes that as a counter reset), and says so in the log.
 */
export class MetricsRenderer {
  readonly #options: RendererOptions
  readonly #onError: (err: Error) => void
  #thread: Worker | undefined
  #closed = false
  #next = 0
  readonly #pending = new Map<number, { resolve: (body: Buffer) => void, reject: (err: Error) => void }>()

  constructor (options: RendererOptions, onError: (err: Error) => void) {
    this.#options = options
    this.#onError = onError
  }

  /**
   * The scrape's text: `own` (the primary's metrics, in the text format), then the workers' traffic and
   * process metrics from their `answers`. `asked` numbers the scrape; `members`, the addresses in the
   * membership (see MergedTraffic.update).
   */
  render (own: string, asked: number, members: readonly string[], answers: ReadonlyArray<readonly [worker: number, answer: WorkerMetrics]>): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new Error('the proxy is shutting down'))
    const thread = this.#start()
    const id = ++this.#next
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject })
      thread.postMessage({ type: 'render', id, own, asked, members, answers } satisfies ToRenderer)
    })
  }

  /**
   * A worker exited: what it counted stays in the totals; what it held goes. Told even with no scrape yet
   * (the thread starts for it), so that its answer to a scrape under way is left out.
   */
  retire (worker: number): void {
    if (!this.#closed) this.#start().postMessage({ type: 'retire', worker } satisfies ToRenderer)
  }

  async close (): Promise<void> {
    this.#closed = true
    const thread = this.#thread
    this.#thread = undefined
    this.#failPending(new Error('the proxy is shutting down'))
    await thread?.terminate()
  }

  #failPending (err: Error): void {
    for (const pending of this.#pending.values()) pending.reject(err)
    this.#pending.clear()
  }

  #start (): Worker {
    if (this.#thread) return this.#thread
    // The same file, as the build has it: .js in dist, .ts where the sources run as they are.
    const file = new URL(`./metrics-renderer${extname(fileURLToPath(import.meta.url))}`, import.meta.url)
    const thread = new Worker(file, { workerData: { fleetgate: 'metrics-renderer', ...this.#options } })
    thread.unref()
    thread.on('message', (message: FromRenderer) => {
      const pending = this.#pending.get(message.id)
      if (!pending) return
      this.#pending.delete(message.id)
      if ('error' in message) pending.reject(new Error(message.error))
      else pending.resolve(Buffer.from(message.body.buffer, message.body.byteOffset, message.body.byteLength))
    })
    const failed = (err: Error): void => {
      if (this.#thread !== thread) return
      this.#thread = undefined
      this.#failPending(err)
      this.#onError(err)
    }
    thread.on('error', failed)
    thread.on('exit', code => failed(new Error(`the metrics thread exited with code ${code}`)))
    this.#thread = thread
    return thread
  }
}

/** The thread's side: a registry of everything but PRIMARY_METRICS, fed by the workers' reports. */
function serve (options: RendererOptions): void {
  const port = parentPort!
  const traffic = new MergedTraffic()
  const registry = new Registry()
  createProxyMetrics(registry, {
    ...options,
    instanceCounts: () => traffic.instanceCounts(),
    instanceStates: () => traffic.instanceStates(),
    discovery: () => ({ connected: false, stale: false }),
    traffic,
    queue: traffic.queue,
  })
  for (const name of PRIMARY_METRICS) registry.removeSingleMetric(name)
  const encoder = new TextEncoder()
  port.on('message', async (message: ToRenderer) => {
    if (message.type === 'retire') return traffic.retire(message.worker)
    const { id, own, asked, members, answers } = message
    // A scrape that fails fails alone: the thread, and the counts it carries, stay.
    try {
      // Nothing below waits on I/O (prom-client's awaits are of settled promises), so the next message,
      // another scrape's reports, is not taken until this text is done.
      traffic.update(answers.map(([worker, answer]) => [worker, answer.traffic]), { asked, members: new Set(members) })
      const text = await Registry.merge([registry, AggregatorRegistry.aggregate(answers.map(([, answer]) => answer.process))]).metrics()
      const body = encoder.encode(`${own}\n${text}`)
      port.postMessage({ id, body } satisfies FromRenderer, [body.buffer])
    } catch (err) {
      port.postMessage({ id, error: err instanceof Error ? err.message : String(err) } satisfies FromRenderer)
    }
  })
}

if (!isMainThread && (workerData as { fleetgate?: string } | undefined)?.fleetgate === 'metrics-renderer') serve(workerData as RendererOptions)
