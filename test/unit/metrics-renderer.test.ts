import t from 'tap'
import type { WorkerMetrics } from '../../src/proxy/cluster.ts'
import { MetricsRenderer } from '../../src/proxy/metrics-renderer.ts'
import type { TrafficReport } from '../../src/proxy/traffic-report.ts'

/** A worker's answer: `count` GET 200s answered by one instance. */
const answer = (count: number, process: WorkerMetrics['process'] = []): WorkerMetrics => ({
  process,
  traffic: {
    instances: [{ instance: '127.0.0.1:1001', requests: [{ method: 'GET', code: '200', count }] }],
    unanswered: [],
    retries: { connect_failure: 0, reset_before_response: 0 },
    noLiveInstances: 0,
    queue: { size: 0, timeouts: 0 },
    instanceCounts: { up: 1, draining: 0, ejected: 0 },
    instanceStates: [['127.0.0.1:1001', 'up']],
  } satisfies TrafficReport,
})
const OWN = '# HELP fleetgate_discovery_connected x\n# TYPE fleetgate_discovery_connected gauge\nfleetgate_discovery_connected{service="s",source="zookeeper"} 1\n'
const served = (text: string): number => Number(/^fleetgate_requests_total\{[^}]*\} (\S+)$/m.exec(text)?.[1] ?? NaN)

t.test('the thread adds up the workers\' reports, keeps a retired worker\'s counts, and leaves out its late answer', async t => {
  const errors: Error[] = []
  const renderer = new MetricsRenderer({ service: 's', sourceKind: 'zookeeper' }, err => errors.push(err))
  t.teardown(() => renderer.close())
  // Worker 1 exits before any scrape has started the thread: its answer to a scrape under way is left out.
  renderer.retire(1)
  let text = (await renderer.render(OWN, 1, ['127.0.0.1:1001'], [[1, answer(5)], [2, answer(3)]])).toString()
  t.ok(text.startsWith(OWN), 'the primary\'s own text first')
  t.equal(served(text), 3, 'only the live worker\'s answer counts')
  text = (await renderer.render(OWN, 2, ['127.0.0.1:1001'], [[2, answer(4)]])).toString()
  t.equal(served(text), 4)
  renderer.retire(2)
  text = (await renderer.render(OWN, 3, ['127.0.0.1:1001'], [[3, answer(1)]])).toString()
  t.equal(served(text), 5, 'a worker that exited keeps what it counted')
  t.same(errors, [])
})

t.test('a scrape that fails on the thread fails alone: the thread and its counts stay', async t => {
  const errors: Error[] = []
  const renderer = new MetricsRenderer({ service: 's', sourceKind: 'zookeeper' }, err => errors.push(err))
  t.teardown(() => renderer.close())
  t.equal(served((await renderer.render(OWN, 1, [], [[1, answer(2)]])).toString()), 2)
  renderer.retire(1)
  // A "process" metric that clashes with one of the thread's own: prom-client refuses to merge them.
  const clash = [{ name: 'fleetgate_requests_total', help: 'h', type: 'counter', aggregator: 'sum', values: [] }] as unknown as WorkerMetrics['process']
  await t.rejects(renderer.render(OWN, 2, [], [[2, answer(1, clash)]]), /already been registered/)
  t.equal(served((await renderer.render(OWN, 3, [], [[2, answer(1)]])).toString()), 3, 'the counts carried on')
  t.same(errors, [], 'and the thread did not fail')
})

t.test('after close, a scrape is refused and nothing starts again', async t => {
  const renderer = new MetricsRenderer({ service: 's', sourceKind: 'zookeeper' }, () => undefined)
  t.equal(served((await renderer.render(OWN, 1, [], [[1, answer(1)]])).toString()), 1)
  await renderer.close()
  await t.rejects(renderer.render(OWN, 2, [], [[1, answer(1)]]), /shutting down/)
})
