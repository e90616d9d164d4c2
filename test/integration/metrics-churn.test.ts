// Cardinality stays bounded: 1,000 real instances registered in ZooKeeper, given traffic and deleted in
// batches leave only the live instances' series in the real proxy's /metrics.

import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { registerCurator, removeNode, sample, startBackend, startProxy, zkClient } from '../helpers/fleet.ts'
import { startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

/** Every `instance` label value among the fleetgate_ series of a scrape. */
function instanceLabels (metrics: string): Set<string> {
  const found = new Set<string>()
  for (const line of metrics.split('\n')) {
    if (!line.startsWith('fleetgate_')) continue
    const match = /[{,]instance="([^"]*)"/.exec(line)
    if (match) found.add(match[1]!)
  }
  return found
}

t.test('churning 1,000 instances through ZooKeeper leaves only the live instances\' series', async t => {
  const client = await zkClient(t, server.connectString)
  const service = 'churn'
  const stable = await Promise.all(['s1', 's2', 's3'].map(n => startBackend(t, n)))
  for (const b of stable) await registerCurator(client, { service, id: b.name, port: b.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', service])
  await eventually(async () => (await proxy.status()).instances.length === 3, { message: '3 stable instances' })
  const live = new Set(stable.map(b => `127.0.0.1:${b.port}`))

  const BATCHES = 10
  const PER_BATCH = 100
  const timings: number[] = []
  let seriesAtPeak = 0
  for (let batch = 0; batch < BATCHES; batch++) {
    // Real listeners, so every churned instance answers and gets a full set of series.
    const backends = await Promise.all(Array.from({ length: PER_BATCH }, (_, i) => startBackend(t, `b${batch}-${i}`)))
    const paths = await Promise.all(backends.map(b => registerCurator(client, { service, id: b.name, port: b.port })))
    await eventually(async () => (await proxy.status()).instances.length === 3 + PER_BATCH, { message: `batch ${batch} joined`, timeoutMs: 20_000 })

    // Round robin over 103 instances: 103 requests in a row reach each one once. Bounded at three rounds.
    const unserved = new Set(backends.map(b => b.name))
    for (let i = 0; i < 3 * (3 + PER_BATCH) && unserved.size > 0; i++) {
      const res = await request(`${proxy.url}/churn/${i}`)
      await res.body.dump()
      unserved.delete(String(res.headers['x-served-by']))
    }
    t.equal(unserved.size, 0, `batch ${batch}: every churned instance served requests`)

    if (batch === 0) {
      const metrics = await proxy.metrics()
      t.equal(instanceLabels(metrics).size, 3 + PER_BATCH, 'while a batch is live, /metrics has its series')
      seriesAtPeak = metrics.split('\n').filter(l => l.startsWith('fleetgate_')).length
      // /metrics with 103 registered instances that all took traffic: a figure for the log, not a test
      // (other tests may share the cores here).
      for (let i = 0; i < 20; i++) {
        const started = performance.now()
        const res = await request(`${proxy.adminUrl}/metrics`)
        await res.body.text()
        timings.push(performance.now() - started)
      }
    }

    await Promise.all(paths.map(p => removeNode(client, p)))
    await eventually(async () => (await proxy.status()).instances.length === 3, { message: `batch ${batch} left`, timeoutMs: 20_000 })
    await Promise.all(backends.map(b => b.close()))
  }

  // A removed instance's series go after its last request; none is running now, so they are gone at once.
  const metrics = await eventually<string>(async () => {
    const text = await proxy.metrics()
    const labels = instanceLabels(text)
    labels.delete('none')
    return labels.size === live.size ? text : ''
  }, { message: 'only live instances in /metrics', timeoutMs: 5000 })
  t.same([...instanceLabels(metrics)].filter(i => i !== 'none').sort(), [...live].sort(), 'only the 3 live instances have series')
  const seriesAfter = metrics.split('\n').filter(l => l.startsWith('fleetgate_')).length
  t.ok(seriesAfter < seriesAtPeak / 10, `fleetgate_ series: ${seriesAtPeak} with 103 instances, ${seriesAfter} after the churn`)
  t.equal(sample(metrics, 'fleetgate_instances', { service }), 3, 'fleetgate_instances counts the live set only')
  t.ok(sample(metrics, 'fleetgate_membership_changes_total') >= 2 * BATCHES, 'membership changes were counted')

  timings.sort((a, b) => a - b)
  const pct = (q: number): string => timings[Math.min(timings.length - 1, Math.floor(q * timings.length))]!.toFixed(2)
  t.comment(`/metrics with 103 instances (${seriesAtPeak} fleetgate_ series): p50 ${pct(0.5)} ms, max ${pct(1)} ms over ${timings.length} scrapes`)
})

