import { setImmediate as tick } from 'node:timers/promises'
import t from 'tap'
import { Endpoint } from '../../src/balancer/pool.ts'
import type { Instance } from '../../src/membership/instance.ts'
import { createProxyMetrics, createRegistry } from '../../src/metrics.ts'
import { InstanceMetrics } from '../../src/proxy/instance-metrics.ts'

const endpoint = (id: string, port: number): Endpoint =>
  new Endpoint({ id, host: '127.0.0.1', port, state: 'up', weight: 1, labels: {} } satisfies Instance, Date.now())

function build () {
  const registry = createRegistry()
  const instanceMetrics = new InstanceMetrics()
  const metrics = createProxyMetrics(registry, {
    service: 's', sourceKind: 'static', instanceCounts: () => ({}), instanceStates: () => [], discovery: () => ({ connected: true, stale: false }), traffic: instanceMetrics,
  })
  /** `name{labels} value` lines of the fleetgate series that carry an instance label. */
  const series = async (): Promise<string[]> => (await registry.metrics()).split('\n')
    .filter(line => line.startsWith('fleetgate_') && line.includes('instance="'))
  const value = async (name: string, instance: string): Promise<number | undefined> => {
    const line = (await series()).find(l => l.startsWith(`${name}{`) && l.includes(`instance="${instance}"`))
    return line === undefined ? undefined : Number(line.split(' ').pop())
  }
  return { registry, metrics, instanceMetrics, series, value }
}

/** The instance labels whose series are held. */
const instances = (m: InstanceMetrics): string[] => [...m.instances()].map(series => series.instance)

/** What forward.ts does around one attempt. */
function request (m: InstanceMetrics, e: Endpoint, method: string, code: number): void {
  e.inflight++
  e.inflight--
  m.ended(e)
  m.finished(e, method, code, 0.01)
}

t.test('requests are counted by instance, method and code; unknown methods fold into OTHER', async t => {
  const { instanceMetrics: m, metrics } = build()
  const a = endpoint('a', 1001)
  request(m, a, 'GET', 200)
  request(m, a, 'GET', 200)
  request(m, a, 'POST', 500)
  request(m, a, 'BREW', 418)
  m.finished(undefined, 'GET', 503, 0)
  const values = (await metrics.requests.get()).values.map(v => `${v.labels.instance} ${v.labels.method} ${v.labels.code} ${v.value}`)
  t.same(values.sort(), [
    '127.0.0.1:1001 GET 200 2', '127.0.0.1:1001 OTHER 418 1', '127.0.0.1:1001 POST 500 1', 'none GET 503 1',
  ])
  t.equal(m.summary(a).errors, 1)
})

t.test('in-flight, connect failure and ejection series exist from 0 as soon as an instance joins', async t => {
  const { instanceMetrics: m, value } = build()
  const a = endpoint('a', 1001)
  m.added(a)
  t.equal(await value('fleetgate_in_flight_requests', '127.0.0.1:1001'), 0)
  t.equal(await value('fleetgate_upstream_connect_failures_total', '127.0.0.1:1001'), 0)
  t.equal(await value('fleetgate_ejections_total', '127.0.0.1:1001'), 0)
  t.equal(await value('fleetgate_responses_cut_off_total', '127.0.0.1:1001'), 0)
  t.equal(await value('fleetgate_ejections_after_errors_total', '127.0.0.1:1001'), 0)
  // An instance whose very first connect fails: increase() sees 0 -> 1, not a series born at 1.
  a.inflight++
  a.inflight--
  m.ended(a)
  m.connectFailure(a)
  m.ejected(a, 'connect')
  t.equal(await value('fleetgate_ejections_total', '127.0.0.1:1001'), 1)
  t.equal(await value('fleetgate_ejections_after_errors_total', '127.0.0.1:1001'), 0, 'a refused connect is not counted there')
  m.ejected(a, 'server-errors')
  t.equal(await value('fleetgate_ejections_total', '127.0.0.1:1001'), 2, 'every ejection counts in the total')
  t.equal(await value('fleetgate_ejections_after_errors_total', '127.0.0.1:1001'), 1, 'and one after server errors, there too')
  t.equal(m.summary(a).errors, 1, 'for the status page, a failed connect is an error of the instance')
  m.cutOff(a, 200)
  m.finished(a, 'GET', 200, 0.01)
  t.equal(m.summary(a).errors, 2, 'a 200 broken off mid-body is an error of the instance')
  m.cutOff(a, 503)
  m.finished(a, 'GET', 503, 0.01)
  t.equal(m.summary(a).errors, 3, 'a 503 broken off is one error, not two')
  t.equal(await value('fleetgate_responses_cut_off_total', '127.0.0.1:1001'), 2)
  m.removed(a)
  t.equal(await value('fleetgate_ejections_total', '127.0.0.1:1001'), undefined)
})

t.test('an instance that joins and leaves without a request leaves nothing behind', async t => {
  const { instanceMetrics: m, series } = build()
  const a = endpoint('a', 1001)
  m.added(a)
  m.removed(a)
  t.same(await series(), [])
  t.same(instances(m), [])
})

t.test('an idle instance that leaves takes its series with it', async t => {
  const { instanceMetrics: m, series } = build()
  const a = endpoint('a', 1001)
  const b = endpoint('b', 1002)
  request(m, a, 'GET', 200)
  request(m, b, 'GET', 200)
  m.removed(a)
  const left = await series()
  t.notOk(left.some(l => l.includes('127.0.0.1:1001')), 'no series of the removed instance')
  t.ok(left.some(l => l.includes('127.0.0.1:1002')))
  t.same(instances(m), ['127.0.0.1:1002'])
  request(m, a, 'GET', 200)
  t.notOk((await series()).some(l => l.includes('127.0.0.1:1001')), 'a late call does not bring them back')
})

t.test('a busy instance that leaves keeps its series until its last request is counted', async t => {
  const { instanceMetrics: m, value } = build()
  const a = endpoint('a', 1001)
  m.added(a)
  a.inflight++
  m.removed(a)
  t.equal(await value('fleetgate_in_flight_requests', '127.0.0.1:1001'), 1)
  a.inflight--
  m.ended(a)
  m.finished(a, 'GET', 200, 0.02)
  t.equal(await value('fleetgate_requests_total', '127.0.0.1:1001'), 1, 'counted before the series go')
  await tick()
  t.equal(await value('fleetgate_requests_total', '127.0.0.1:1001'), undefined)
  t.same(instances(m), [])
})

t.test('an instance re-registered under a new id at the same address keeps its series when the old id leaves', async t => {
  const { instanceMetrics: m, value } = build()
  const old = endpoint('member_0001', 1001)
  const renewed = endpoint('member_0002', 1001)
  m.added(old)
  m.added(renewed)
  // The old registration still has a request running when the new one takes traffic.
  old.inflight++
  renewed.inflight++
  m.removed(old)
  old.inflight--
  m.ended(old)
  m.finished(old, 'GET', 200, 0.01)
  await tick()
  t.equal(await value('fleetgate_in_flight_requests', '127.0.0.1:1001'), 1, 'the new endpoint\'s request is still in flight')
  renewed.inflight--
  m.ended(renewed)
  m.finished(renewed, 'GET', 200, 0.01)
  t.equal(await value('fleetgate_in_flight_requests', '127.0.0.1:1001'), 0, 'never negative')
  t.equal(await value('fleetgate_requests_total', '127.0.0.1:1001'), 2, 'no reset: both requests counted')
  m.removed(renewed)
  t.equal(await value('fleetgate_requests_total', '127.0.0.1:1001'), undefined, 'gone once neither holds them')
})
