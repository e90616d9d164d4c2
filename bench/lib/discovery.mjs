// fleetgate's own discovery figures on a real ZooKeeper (test/helpers/zookeeper.ts): convergence
// after a znode create/delete, first membership and change cost at 1,000 and 10,000 instances.

import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import zookeeper from 'node-zookeeper-client'
import { Pool, request } from 'undici'
import { LOAD_CPU, startCompetitor, waitHttp } from './competitors.mjs'
import { eventually, memory, stopProcess } from './proc.mjs'
import { median } from './stats.mjs'
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

const BASE_PATH = '/services'

/**
 * Starts ZooKeeper through the project's test helper (a TypeScript file: tap's loader is registered
 * first) and pins it, all threads, to the load core. Returns the helper's server plus `packetsReceived()`.
 */
export async function startBenchZooKeeper () {
  process.env.TS_NODE_TRANSPILE_ONLY ??= '1'
  await import('@tapjs/typescript/import')
  const { startZooKeeper, fourLetterWord } = await import('../../test/helpers/zookeeper.ts')
  const zk = await startZooKeeper({ maxSessionTimeoutMs: 30_000 })
  execFileSync('taskset', ['-a', '-cp', LOAD_CPU, String(zk.pid)], { stdio: 'ignore' })
  /** zk_packets_received from `mntr`; the mntr request itself counts as one. */
  zk.packetsReceived = async () => {
    const answer = await fourLetterWord(zk.port, 'mntr', 2000)
    const m = /zk_packets_received\s+(\d+)/.exec(answer)
    if (!m) throw new Error(`no zk_packets_received in mntr answer: ${JSON.stringify(answer.slice(0, 200))}`)
    return Number(m[1])
  }
  return zk
}

/** A promise-returning node-zookeeper-client for the harness's own writes. */
export async function connectClient (connectString) {
  const client = zookeeper.createClient(connectString, { sessionTimeout: 30_000, spinDelay: 200, retries: 0 })
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('harness ZooKeeper client did not connect in 10 s')), 10_000)
    client.once('connected', () => { clearTimeout(timer); resolve() })
    client.connect()
  })
  // node-zookeeper-client has no request timeout: a write that gets no answer fails the run after 30 s.
  const call = (fn, ...args) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`harness ZooKeeper request ${fn.name || 'call'} got no answer in 30 s`)), 30_000)
    fn.call(client, ...args, (err, result) => { clearTimeout(timer); err ? reject(err) : resolve(result) })
  })
  return {
    client,
    mkdirp: path => call(client.mkdirp, path),
    create: (path, data, mode = zookeeper.CreateMode.EPHEMERAL) => call(client.create, path, Buffer.from(data), mode),
    remove: path => call(client.remove, path, -1),
    /** Creates many persistent children with multi-ops of `batch` creates each. */
    async createMany (entries, batch = 1000) {
      for (let i = 0; i < entries.length; i += batch) {
        const tx = client.transaction()
        for (const [path, data] of entries.slice(i, i + batch)) tx.create(path, Buffer.from(data), zookeeper.CreateMode.PERSISTENT)
        await new Promise((resolve, reject) => tx.commit(err => err ? reject(err) : resolve()))
      }
    },
    close: () => client.close(),
  }
}

/** The registration fleetgate's agent writes (Curator x-discovery JSON). */
export function curatorRegistration (service, id, port) {
  return JSON.stringify({
    name: service, id, address: '127.0.0.1', port, sslPort: null, payload: null,
    registrationTimeUTC: Date.now(), serviceType: 'DYNAMIC', uriSpec: null,
  })
}

/**
 * Sends GET /1k through the proxy on `connections` keep-alive connections, each a tight sequential loop,
 * and hands every answer to `onAnswer({ startMs, endMs, backend })` until it returns true, `timeoutMs`
 * passes or `maxRequests` were sent. Bounded either way.
 */
async function drive (pool, { connections = 8, timeoutMs = 2000, maxRequests = 50_000, onAnswer }) {
  const deadline = performance.now() + timeoutMs
  let sent = 0
  let done = false
  const loop = async () => {
    while (!done && sent < maxRequests && performance.now() < deadline) {
      sent++
      const startMs = performance.now()
      const res = await pool.request({ path: '/1k', method: 'GET' })
      await res.body.dump()
      const endMs = performance.now()
      if (onAnswer({ startMs, endMs, backend: res.headers['x-backend'], status: res.statusCode })) done = true
    }
  }
  await Promise.all(Array.from({ length: connections }, loop))
  return { sent, timedOut: !done }
}

/**
 * `changes` creates and as many deletes of one instance's znode while requests flow: the time from the
 * ZooKeeper call to the first answer from the new instance, and to the last answer from the removed one
 * (among requests sent after the delete; 0 when there was none). Answers' end times make both an upper bound.
 */
export async function convergence ({ zk, dir, backends, changes, fleetgateArgs, log, id = 'fleetgate-zk' }) {
  const service = id
  const path = `${BASE_PATH}/${service}`
  const zc = await connectClient(zk.connectString)
  let proxy
  const pool = { close: async () => {} }
  try {
    await zc.mkdirp(path)
    const [a, b, c, d] = backends
    for (const backend of [a, b, c]) await zc.create(`${path}/${backend.name}`, curatorRegistration(service, backend.name, backend.port))
    const spawnedAt = performance.now()
    // Info level only adds a line per published membership: it tells when fleetgate applied each change.
    proxy = await startCompetitor({ id, kind: 'fleetgate', zookeeper: zk.connectString, service, fleetgateArgs: [...(fleetgateArgs ?? []), '--log-level', 'info'] }, { dir, backends })
    const published = membershipLog(join(dir, `${id}.log`))
    let revision = (await published.after(0)).revision
    /** From a ZooKeeper call started at `t0` (performance.now()) to fleetgate's publish of the change. */
    const toPublish = async t0 => {
      const m = await published.after(revision, 5000)
      revision = m.revision
      return m.atMs - (performance.timeOrigin + t0)
    }
    const readyMs = performance.now() - spawnedAt
    // Timeouts within the loops' own bound, so one stalled answer cannot hold a loop past it for long.
    const http = new Pool(proxy.url, { connections: 8, pipelining: 1, headersTimeout: 5_000, bodyTimeout: 5_000 })
    pool.close = () => http.close()
    const created = []
    const deleted = []
    /** How long ZooKeeper took to acknowledge each create and delete (included in the figures). */
    const writes = []
    /** From the ZooKeeper call to fleetgate's log line for the new membership (ms clock of two processes). */
    const createPublished = []
    const deletePublished = []
    let timeouts = 0
    let errors = 0
    for (let i = 0; i < changes; i++) {
      // Create: the first answer from the new instance.
      let t0 = performance.now()
      await zc.create(`${path}/${d.name}`, curatorRegistration(service, d.name, d.port))
      writes.push(performance.now() - t0)
      let first
      const up = await drive(http, {
        onAnswer: ({ endMs, backend, status }) => {
          if (status !== 200) errors++
          if (backend === d.name && first === undefined) first = endMs
          return first !== undefined
        },
      })
      if (up.timedOut) timeouts++
      else created.push(first - t0)
      createPublished.push(await toPublish(t0))
      // Delete: the last answer from the removed instance, watched for 100 ms and 200 answers after it.
      t0 = performance.now()
      await zc.remove(`${path}/${d.name}`)
      writes.push(performance.now() - t0)
      let last
      let since = 0
      const down = await drive(http, {
        onAnswer: ({ startMs, endMs, backend, status }) => {
          if (status !== 200) errors++
          if (backend === d.name && startMs >= t0) { last = endMs; since = 0 } else since++
          return since >= 200 && performance.now() - (last ?? t0) >= 100
        },
      })
      if (down.timedOut) timeouts++
      else deleted.push(last === undefined ? 0 : last - t0)
      deletePublished.push(await toPublish(t0))
      await sleep(10)
    }
    log(`  convergence (${id}): ${created.length} creates, ${deleted.length} deletes measured, ${timeouts} timed out, ${errors} non-200 answers`)
    return { created, deleted, writes, createPublished, deletePublished, timeouts, errors, readyMs }
  } finally {
    await pool.close()
    await stopProcess(proxy?.entry)
    zc.close()
  }
}

/**
 * fleetgate logs every published membership at info level ('membership changed', with its revision and
 * size; pino stamps it with Date.now()). Reading those lines from the log file observes a change without
 * asking the proxy anything: polling /metrics instead costs the proxy tens of ms per scrape at 10,000
 * instances and delays the very change being timed.
 */
export function membershipLog (file) {
  return {
    /** Published memberships so far: [{ revision, instances, atMs }]. */
    read () {
      if (!existsSync(file)) return []
      const out = []
      for (const line of readFileSync(file, 'utf8').split('\n')) {
        if (!line.includes('"membership changed"')) continue
        try {
          const entry = JSON.parse(line)
          out.push({ revision: entry.revision, instances: entry.instances, atMs: entry.time })
        } catch {}
      }
      return out
    },
    /** Waits for a membership with a revision above `revision`. */
    async after (revision, timeoutMs = 30_000) {
      return eventually(() => this.read().find(m => m.revision > revision), { timeoutMs, intervalMs: 2, what: `membership revision > ${revision} in ${file}` })
    },
  }
}

/**
 * For each fleet size: register that many instances, start fleetgate on them, and measure the time to
 * the first membership (spawn to /readyz 200, all instances known), RSS, and one change: its time and
 * the ZooKeeper packets it cost (mntr's zk_packets_received, less the harness's own request and the
 * mntr request). Also the packets of one periodic full resync.
 */
export async function scale ({ zk, dir, backends, sizes, samples, fleetgateArgs, log }) {
  const zc = await connectClient(zk.connectString)
  const results = []
  try {
    for (const size of sizes) {
      const service = `scale-${size}`
      const path = `${BASE_PATH}/${service}`
      await zc.mkdirp(path)
      const t = performance.now()
      const entries = Array.from({ length: size }, (_, i) => {
        const id = randomUUID()
        return [`${path}/${id}`, curatorRegistration(service, id, 10_000 + i)]
      })
      await zc.createMany(entries)
      log(`  scale ${size}: registered in ${Math.round(performance.now() - t)} ms`)
      results.push(await scaleOne({ zk, zc, dir, backends, size, service, path, samples, fleetgateArgs, log }))
    }
    return results
  } finally {
    zc.close()
  }
}

async function scaleOne ({ zk, zc, dir, backends, size, service, path, samples, fleetgateArgs, log }) {
  let proxy
  try {
    const id = `fleetgate-scale-${size}`
    const changes = membershipLog(join(dir, `${id}.log`))
    const spawnedAt = Date.now()
    // No traffic goes to these instances (nothing listens on their ports); readiness is /readyz.
    proxy = await startCompetitor({ id, kind: 'fleetgate', zookeeper: zk.connectString, service, waitReady: false, fleetgateArgs: [...(fleetgateArgs ?? []), '--log-level', 'info'] }, { dir, backends })
    await waitHttp(`${proxy.admin}/readyz`, 60_000, proxy.entry)
    const readyMs = Date.now() - spawnedAt
    const first = await changes.after(0)
    const afterReady = memory([proxy.entry.pid])
    const samplesOut = []
    let revision = first.revision
    for (let i = 0; i < samples; i++) {
      for (const kind of ['create', 'delete']) {
        const child = `${path}/extra-${i}`
        const p0 = await zk.packetsReceived()
        const t0 = Date.now()
        if (kind === 'create') await zc.create(child, curatorRegistration(service, `extra-${i}`, 9_000 + i))
        else await zc.remove(child)
        // ZooKeeper's own part: the write is logged (fsync) and applied before the watch fires.
        const ackMs = Date.now() - t0
        const applied = await changes.after(revision)
        revision = applied.revision
        await sleep(100) // reads still in flight after the publish are counted too
        const p1 = await zk.packetsReceived()
        samplesOut.push({ kind, ms: Math.max(0, applied.atMs - t0), ackMs, reads: p1 - p0 - 2, instances: applied.instances })
      }
    }
    // After the changes, one /status and one Prometheus scrape: what each costs at this size. /status
    // goes first, so that it does not pay for the collection of the scrape's 24 MB at 10,000.
    const timedGet = async (path) => {
      const t = performance.now()
      const res = await request(`${proxy.admin}${path}`, { headersTimeout: 30_000, bodyTimeout: 30_000 })
      const bytes = (await res.body.arrayBuffer()).byteLength
      if (res.statusCode !== 200) throw new Error(`${path} answered ${res.statusCode}`)
      return { ms: performance.now() - t, bytes }
    }
    const { ms: statusMs, bytes: statusBytes } = await timedGet('/status')
    const { ms: metricsMs, bytes: metricsBytes } = await timedGet('/metrics')
    const rss = memory([proxy.entry.pid])
    log(`  scale ${size}: ready in ${readyMs} ms with ${first.instances} instances, RSS ${(rss.rss / 1048576).toFixed(0)} MB, change ${median(samplesOut.map(c => c.ms))} ms`)
    return { size, readyMs, firstMembershipMs: first.atMs - spawnedAt, known: first.instances, rssAfterReady: afterReady.rss, peakRss: rss.peak, changes: samplesOut, metricsBytes, metricsMs, statusBytes, statusMs }
  } finally {
    await stopProcess(proxy?.entry)
  }
}

/**
 * Packets one periodic full resync costs at `size` instances: a proxy with a 4 s resync period, watched
 * for three periods (so three resyncs, give or take one at the edges), divided by three.
 */
export async function resyncCost ({ zk, dir, backends, size, fleetgateArgs }) {
  let proxy
  try {
    const service = `scale-${size}`
    const periodMs = 4000
    proxy = await startCompetitor({ id: `fleetgate-resync-${size}`, kind: 'fleetgate', zookeeper: zk.connectString, service, waitReady: false, fleetgateArgs: [...(fleetgateArgs ?? []), '--resync-interval-ms', String(periodMs)] }, { dir, backends })
    await waitHttp(`${proxy.admin}/readyz`, 60_000, proxy.entry)
    const p0 = await zk.packetsReceived()
    const t0 = performance.now()
    await sleep(3 * periodMs)
    const p1 = await zk.packetsReceived()
    return { size, periodMs, windowMs: performance.now() - t0, packetsPerResync: (p1 - p0 - 1) / 3 }
  } finally {
    await stopProcess(proxy?.entry)
  }
}
