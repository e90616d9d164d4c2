import t from 'tap'
import { AggregatorRegistry, Registry } from 'prom-client'
import { Endpoint } from '../../src/balancer/pool.ts'
import type { Instance } from '../../src/membership/instance.ts'
import { createProxyMetrics, createRegistry, type ProxyCollectors } from '../../src/metrics.ts'
import { InstanceMetrics } from '../../src/proxy/instance-metrics.ts'
import { isStatusPart, isWorkerMetrics } from '../../src/proxy/cluster.ts'
import type { ProxyStatus } from '../../src/proxy/server.ts'
import { isTrafficReport, MergedTraffic, reportTraffic, type ReportedCollectors, type TrafficReport } from '../../src/proxy/traffic-report.ts'

const endpoint = (id: string, port: number): Endpoint =>
  new Endpoint({ id, host: '127.0.0.1', port, state: 'up', weight: 1, labels: {} } satisfies Instance, Date.now())

const discovery = { service: 's', sourceKind: 'static', discovery: () => ({ connected: true, stale: false }) }

/** One worker's side: its instance metrics, the pool's view given as plain lists, and a queue. */
function worker (states: Array<readonly [string, string]>, counts: Record<string, number>, queue = { size: 0, timeouts: 0 }) {
  const traffic = new InstanceMetrics()
  const collectors: ReportedCollectors = { traffic, queue, instanceCounts: () => counts, instanceStates: () => states }
  return { traffic, collectors }
}

function serve (m: InstanceMetrics, e: Endpoint, method: string, code: number, seconds: number): void {
  e.inflight++
  e.inflight--
  m.ended(e)
  m.finished(e, method, code, seconds)
}

/**
 * The fleetgate_ lines of a text exposition (HELP, TYPE and samples, each sample's labels in name order),
 * sorted: neither the order of series nor that of labels is part of the format.
 */
async function samples (registry: { metrics(): Promise<string> }, except: ReadonlySet<string> = new Set()): Promise<string[]> {
  const nameOf = (line: string): string => line.startsWith('# ') ? line.split(' ')[2]! : line.split(/[{ ]/)[0]!
  return (await registry.metrics()).split('\n')
    .filter(line => /^(# (HELP|TYPE) )?fleetgate_/.test(line) && !except.has(nameOf(line).replace(/_(bucket|sum|count)$/, '')))
    .map(line => {
      if (line.startsWith('# ')) return line
      const name = line.split(/[{ ]/)[0]!
      const labels = [...line.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map(([label]) => label).sort()
      return `${name}{${labels.join(',')}} ${line.slice(line.lastIndexOf(' ') + 1)}`
    })
    .sort()
}

t.test('a report leaves out what is zero, and an idle instance is its name alone', async t => {
  const a = endpoint('a', 1001)
  const b = endpoint('b', 1002)
  const { traffic, collectors } = worker([['127.0.0.1:1001', 'up'], ['127.0.0.1:1002', 'up']], { up: 2 })
  traffic.added(a)
  traffic.added(b)
  serve(traffic, a, 'GET', 200, 0.003)
  traffic.connectFailure(a)
  traffic.cutOff(a, 200)
  const report = reportTraffic(collectors)
  const byName = new Map(report.instances.map(i => [i.instance, i]))
  t.same(byName.get('127.0.0.1:1002'), { instance: '127.0.0.1:1002' }, 'idle: no counts sent')
  const busy = byName.get('127.0.0.1:1001')!
  t.same(busy.requests, [{ method: 'GET', code: '200', count: 1 }])
  t.equal(busy.connectFailures, 1)
  t.equal(busy.cutOffs, 1)
  t.equal(busy.duration?.count, 1)
  t.equal(busy.duration?.buckets.reduce((x, y) => x + y, 0), 1, 'one observation in one bucket')
  t.equal(busy.inFlight, undefined, 'nothing in flight')
  t.same(JSON.parse(JSON.stringify(report)), report, 'it survives the JSON of the IPC channel unchanged')
})

t.test('the primary renders the workers\' reports as prom-client would have merged their series', async t => {
  const [a1, b1, a2, c2] = [endpoint('a', 1001), endpoint('b', 1002), endpoint('a', 1001), endpoint('c', 1003)]
  // Worker 1 has ejected b; worker 2 has c, which worker 1 has not heard of yet, and requests queued.
  const one = worker([['127.0.0.1:1001', 'up'], ['127.0.0.1:1002', 'ejected']], { up: 1, draining: 0, ejected: 1 }, { size: 0, timeouts: 2 })
  const two = worker([['127.0.0.1:1001', 'up'], ['127.0.0.1:1002', 'up'], ['127.0.0.1:1003', 'up']], { up: 3, draining: 0, ejected: 0 }, { size: 4, timeouts: 1 })
  for (const e of [a1, b1]) one.traffic.added(e)
  for (const e of [a2, c2]) two.traffic.added(e)
  serve(one.traffic, a1, 'GET', 200, 0.002)
  serve(one.traffic, a1, 'POST', 502, 0.4)
  serve(two.traffic, a2, 'GET', 200, 0.02)
  serve(two.traffic, c2, 'GET', 200, 7)
  one.traffic.finished(undefined, 'GET', 503, 0.001)
  two.traffic.finished(undefined, 'GET', 503, 0.001)
  one.traffic.connectFailure(b1)
  one.traffic.ejected(b1, 'connect')
  one.traffic.ejected(a1, 'server-errors')
  two.traffic.ejected(a2, 'server-errors')
  one.traffic.cutOff(a1, 200)
  two.traffic.cutOff(a2, 200)
  one.traffic.retry('connect_failure')
  two.traffic.noLiveInstance()
  a2.inflight = 3 // in flight on worker 2 right now

  // What a worker answered before: its whole registry as JSON, merged by prom-client's aggregator.
  const registries = [one, two].map(w => {
    const registry = createRegistry()
    createProxyMetrics(registry, { ...discovery, ...w.collectors } satisfies ProxyCollectors)
    return registry
  })
  const aggregated = async (): Promise<{ metrics(): Promise<string> }> =>
    AggregatorRegistry.aggregate(await Promise.all(registries.map(r => r.getMetricsAsJSON())))

  const merged = new MergedTraffic()
  const registry = new Registry()
  createProxyMetrics(registry, {
    ...discovery,
    instanceCounts: () => merged.instanceCounts(),
    instanceStates: () => merged.instanceStates(),
    traffic: merged,
    queue: merged.queue,
  })
  // The discovery gauges are the primary's own, never the workers' (prom-client would add up 1 + 1).
  const primaryOnly = new Set(['fleetgate_discovery_connected', 'fleetgate_discovery_stale'])
  /** A scrape of the primary: each worker's report, through the JSON of the IPC channel. */
  const ids = new Map([[one, 1], [two, 2]])
  const scrape = async (...workers: Array<typeof one>): Promise<string[]> => {
    merged.update(workers.map(w => [ids.get(w)!, JSON.parse(JSON.stringify(reportTraffic(w.collectors)))]))
    return samples(registry, primaryOnly)
  }

  const got = await scrape(one, two)
  t.same(got, await samples(await aggregated(), primaryOnly), 'the same series, values, help and types')
  t.ok(got.includes('fleetgate_instance_state{instance="127.0.0.1:1002",service="s",state="ejected"} 1'), 'ejected by one worker shows')
  t.ok(got.includes('fleetgate_instance_state{instance="127.0.0.1:1002",service="s",state="up"} 1'), 'as does up in the other')
  t.ok(got.includes('fleetgate_in_flight_requests{instance="127.0.0.1:1001",service="s"} 3'), 'in flight on worker 2')
  t.ok(got.includes('fleetgate_queued_requests{service="s"} 4'), 'queues add up')

  serve(one.traffic, a1, 'GET', 200, 0.03)
  serve(two.traffic, c2, 'DELETE', 204, 0.001)
  t.same(await scrape(one, two), await samples(await aggregated(), primaryOnly), 'and again at the next scrape, with more traffic')

  const both = await scrape(one, two)
  const GET_200_A = 'fleetgate_requests_total{code="200",instance="127.0.0.1:1001",method="GET",service="s"}'
  t.ok(both.includes(`${GET_200_A} 3`), 'a new scrape replaces the last reports rather than adding to them')
  t.same(await scrape(two), both, 'a worker that does not answer counts with its last report')

  merged.retire(1)
  const retired = await scrape(two)
  t.ok(retired.includes(`${GET_200_A} 3`), 'a worker that exited keeps its counts in the totals')
  t.ok(retired.includes('fleetgate_requests_total{code="502",instance="127.0.0.1:1001",method="POST",service="s"} 1'), 'all of them')
  t.ok(retired.includes('fleetgate_retries_total{reason="connect_failure",service="s"} 1'), 'not only the instances\' ones')
  t.notOk(retired.includes('fleetgate_instance_state{instance="127.0.0.1:1002",service="s",state="ejected"} 1'), 'but not what it saw')
  t.ok(retired.includes('fleetgate_instances{service="s",state="ejected"} 0'), 'counts included')
  t.ok(retired.includes('fleetgate_queued_requests{service="s"} 4'), 'nor what it held')
  t.ok(retired.includes('fleetgate_queue_timeouts_total{service="s"} 3'), 'while what it counted stays')

  // Instance a leaves worker 2's pool; worker 3, new, still serves it.
  const three = worker([['127.0.0.1:1001', 'up']], { up: 1 })
  const a3 = endpoint('a', 1001)
  three.traffic.added(a3)
  serve(three.traffic, a3, 'GET', 200, 0.01)
  ids.set(three, 3)
  a2.inflight = 0
  two.traffic.removed(a2)
  const left = await scrape(two, three)
  t.notOk(reportTraffic(two.collectors).instances.some(part => part.instance === '127.0.0.1:1001'), 'worker 2 no longer reports a')
  t.ok(left.includes(`${GET_200_A} 4`), 'a\'s count keeps worker 2\'s part while another worker reports a')

  three.traffic.removed(a3)
  const gone = await scrape(two, three)
  // (Its state gauges follow the pools, which these workers' fixed lists stand in for.)
  const traffic = gone.filter(line => !line.startsWith('fleetgate_instance_state'))
  t.notOk(traffic.some(line => line.includes('instance="127.0.0.1:1001"')), 'once no worker reports a, its series go, with what was kept of them')
  t.ok(traffic.some(line => line.includes('instance="127.0.0.1:1003"')), 'and the others stay')

  merged.retire(2)
  merged.retire(3)
  const none = await scrape()
  t.notOk(none.some(line => /instance="127/.test(line)), 'no workers left: no instance series')
  t.ok(none.includes('fleetgate_requests_total{code="503",instance="none",method="GET",service="s"} 2'), 'but the requests no instance answered')
  t.notOk(none.some(line => line.startsWith('fleetgate_instances{')), 'and no counts of instances')
  t.ok(none.includes('fleetgate_retries_total{reason="connect_failure",service="s"} 1'), 'the totals stay')
})

t.test('merged counters stay monotonic through late answers, dead workers and instances that come back', async t => {
  const a = (count: number): TrafficReport => ({
    instances: [{ instance: 'i:1', requests: [{ method: 'GET', code: '200', count }] }],
    unanswered: [], retries: { connect_failure: 0, reset_before_response: 0 }, noLiveInstances: 0,
    queue: { size: 0, timeouts: 0 }, instanceCounts: { up: 1 }, instanceStates: [['i:1', 'up']],
  })
  const without = (report: TrafficReport): TrafficReport => ({ ...report, instances: [], instanceStates: [] })
  const total = (merged: MergedTraffic): number => [...merged.instances()].reduce((sum, i) => sum + [...i.requests()].reduce((s, r) => s + r.count, 0), 0)

  const merged = new MergedTraffic()
  merged.update([[1, a(5)], [2, a(7)]], { asked: 1 })
  t.equal(total(merged), 12)
  merged.update([[1, a(9)]], { asked: 3 })
  merged.update([[1, a(6)], [2, a(8)]], { asked: 2 })
  t.equal(total(merged), 17, 'an answer to an older scrape does not replace a newer one (9 + 8, not 6 + 8)')

  merged.retire(2)
  merged.update([[2, a(30)]], { asked: 4 })
  t.equal(total(merged), 17, 'a late answer of a worker that exited is not taken')
  t.same([...merged.instanceStates()], [['i:1', 'up']], 'nor its gauges')

  // Worker 1 drops the instance and reports it again from 0: it left and came back.
  merged.update([[1, without(a(9))], [3, a(1)]], { asked: 5 })
  t.equal(total(merged), 18, 'its earlier counts are kept while another worker reports the instance')
  merged.update([[1, a(2)], [3, a(1)]], { asked: 6 })
  t.equal(total(merged), 20, 'and stay under its new ones: 9 + 2, 8 retired, 1')
  merged.update([[1, a(1)], [3, a(1)]], { asked: 7 })
  t.equal(total(merged), 21, 'a count that went down is read as a series started again: 9 + 2 kept, 1 new, 8 retired, 1')

  // Worker 3's series starts again with more requests in all, but fewer 200s: that count must not drop.
  const mixed: TrafficReport = { ...a(0), instances: [{ instance: 'i:1', requests: [{ method: 'GET', code: '503', count: 4 }] }] }
  merged.update([[1, a(1)], [3, mixed]], { asked: 8 })
  const byCode = (code: string): number => [...merged.instances()].flatMap(i => [...i.requests()]).filter(r => r.code === code).reduce((s, r) => s + r.count, 0)
  t.same([byCode('200'), byCode('503')], [21, 4], 'one count going down is a series started again, though the total grew')

  // Every worker replaced at once: the new ones report nothing yet, but the instance is in the membership.
  merged.retire(1)
  merged.retire(3)
  merged.update([[4, without(a(0))], [5, without(a(0))]], { asked: 9, members: new Set(['i:1']) })
  t.same([byCode('200'), byCode('503')], [21, 4], 'the counts stay while the instance is in the membership')
  merged.update([[4, without(a(0))], [5, without(a(0))]], { asked: 10, members: new Set() })
  t.equal(total(merged), 0, 'once no worker reports the instance and it left, its series go, with what was kept of them')
})

t.test('the primary keeps a worker\'s answer only when its report has every part, and numbers for its counts', async t => {
  const a = endpoint('a', 1001)
  const { traffic, collectors } = worker([['127.0.0.1:1001', 'up']], { up: 1 }, { size: 1, timeouts: 2 })
  traffic.added(a)
  serve(traffic, a, 'GET', 200, 0.003)
  traffic.connectFailure(a)
  traffic.finished(undefined, 'GET', 503, 0.001)
  a.inflight = 1
  const registry = createRegistry()
  const answer = JSON.parse(JSON.stringify({ process: await registry.getMetricsAsJSON(), traffic: reportTraffic(collectors) }))
  t.ok(isWorkerMetrics(answer), 'a worker\'s answer, through the JSON of the IPC channel')
  const report: TrafficReport = answer.traffic
  const [busy] = report.instances
  t.ok(busy?.requests && busy.duration && busy.inFlight && busy.connectFailures, 'with every optional count of an instance present')
  t.equal(report.unanswered.length, 1)

  // A worker that could not answer sends null.
  for (const bad of [null, undefined, 'metrics', [], {}, { process: answer.process }, { traffic: report }, { process: {}, traffic: report }]) {
    t.notOk(isWorkerMetrics(bad), `left out: ${JSON.stringify(bad)?.slice(0, 40)}`)
  }
  // The process metrics go to prom-client's AggregatorRegistry, which throws on what it cannot aggregate.
  const [processMetric] = answer.process
  t.ok(processMetric?.values.length > 0, 'a process metric with samples')
  t.throws(() => AggregatorRegistry.aggregate([[{ ...processMetric, aggregator: 'median' }]]), /not a defined aggregator/)
  for (const [what, bad] of Object.entries({
    'a process metric that is empty': {},
    'an aggregator prom-client does not have': { ...processMetric, aggregator: 'median' },
    'a sample without labels': { ...processMetric, values: [{ value: 1 }] },
    'a sample whose value is text': { ...processMetric, values: [{ labels: {}, value: '1' }] },
  })) {
    t.notOk(isWorkerMetrics({ process: [...answer.process, bad], traffic: report }), `left out: ${what}`)
  }
  t.ok(isWorkerMetrics({ process: [{ ...processMetric, values: [{ labels: {}, value: null }] }], traffic: report }),
    'a value of null is kept: the JSON of the IPC channel turns NaN into null')

  const instance = (part: object): object => ({ ...report, instances: [{ ...busy, ...part }] })
  const malformed: Record<string, object> = {
    'an instance without its name': { ...report, instances: [{ requests: [] }] },
    'an instance that is null': { ...report, instances: [null] },
    'a count given as text': instance({ inFlight: '1' }),
    'a negative count': instance({ cutOffs: -1 }),
    'requests that are not a list': instance({ requests: {} }),
    'a request count without its method': instance({ requests: [{ code: '200', count: 1 }] }),
    'a duration without buckets': instance({ duration: { sum: 1, count: 1 } }),
    'a bucket that is not a number': instance({ duration: { ...busy!.duration, buckets: [null] } }),
    'an unanswered entry that is null': { ...report, unanswered: [null] },
    'a queue without its size': { ...report, queue: { timeouts: 0 } },
    'a queue given as a list': { ...report, queue: [] },
    'a retry count given as text': { ...report, retries: { connect_failure: '1' } },
    'a count by state that is not a number': { ...report, instanceCounts: { up: null } },
    'a state that is not a pair': { ...report, instanceStates: [null] },
  }
  for (const part of Object.keys(report)) {
    const { [part]: _, ...without } = report as unknown as Record<string, unknown>
    malformed[`a report without ${part}`] = without
  }
  for (const [what, bad] of Object.entries(malformed)) {
    t.notOk(isTrafficReport(bad), `left out: ${what}`)
    t.notOk(isWorkerMetrics({ process: answer.process, traffic: bad }), `and the answer holding it: ${what}`)
  }

  const merged = new MergedTraffic()
  const answers = [answer, null, { process: [] }, { process: answer.process, traffic: malformed['a queue without its size'] }]
  merged.update(answers.filter(isWorkerMetrics).map((kept, worker) => [worker, kept.traffic]))
  t.same([...merged.instances()].map(i => [i.instance, i.duration.count, i.inFlight, i.connectFailures]), [['127.0.0.1:1001', 1, 1, 1]],
    'the well-formed answer alone is merged')
  t.same(merged.queue, { size: 1, timeouts: 2 }, 'its queue, not NaN')
  t.same([...merged.unanswered()], [{ method: 'GET', code: '503', count: 1 }])
})

t.test('the primary keeps a worker\'s /status only when it has what the merge reads', async t => {
  const part = {
    service: 's',
    ready: true,
    source: { kind: 'remote', status: 'connected', stale: false, revision: 3, changedAt: null },
    instances: [{
      id: 'a', address: '127.0.0.1:1001', state: 'up', weight: 1, labels: {},
      inflight: 0, requests: 2, errors: 0, p50Ms: null, p99Ms: 1.5, changedAt: new Date(0).toISOString(), slowStartUntil: null,
    }],
    queue: { limitPerInstance: null, timeoutMs: 1000, waiting: 0, timedOut: 0 },
  } satisfies ProxyStatus
  t.ok(isStatusPart(JSON.parse(JSON.stringify(part))), 'a worker\'s status, through the JSON of the IPC channel')
  const [instance] = part.instances
  for (const [what, bad] of Object.entries({
    null: null,
    'a status without instances': { ...part, instances: undefined },
    'a status without its queue': { ...part, queue: undefined },
    'a queue count given as text': { ...part, queue: { ...part.queue, waiting: '0' } },
    'an instance that is null': { ...part, instances: [null] },
    'an instance without its address': { ...part, instances: [{ ...instance, address: undefined }] },
    'a request count given as text': { ...part, instances: [{ ...instance, requests: '2' }] },
    'a latency given as text': { ...part, instances: [{ ...instance, p99Ms: '1.5' }] },
    'a slow start without its end': { ...part, instances: [{ ...instance, slowStartUntil: undefined }] },
  })) {
    t.notOk(isStatusPart(bad), `left out: ${what}`)
  }
})
