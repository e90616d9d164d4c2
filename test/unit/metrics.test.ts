import { readFileSync } from 'node:fs'
import t from 'tap'
import { AggregatorRegistry, Counter, Gauge, Registry } from 'prom-client'
import { CollectedCounter, CollectedGauge, createAgentMetrics, createProxyMetrics, createRegistry, type CollectedRows } from '../../src/metrics.ts'

t.test('instance_state follows the membership at each scrape: 1 for the current state, nothing for instances gone', async t => {
  let states: Array<readonly [string, string]> = [['10.0.0.1:8088', 'up'], ['10.0.0.2:8088', 'ejected']]
  const registry = createRegistry()
  createProxyMetrics(registry, {
    service: 's', sourceKind: 'static', instanceCounts: () => ({ up: 1, draining: 0, ejected: 1 }),
    instanceStates: () => states, discovery: () => ({ connected: true, stale: false }),
  })
  const scrape = async (): Promise<string[]> => (await registry.metrics()).split('\n').filter(l => l.startsWith('fleetgate_instance_state{'))
  t.same(await scrape(), [
    'fleetgate_instance_state{state="up",service="s",instance="10.0.0.1:8088"} 1',
    'fleetgate_instance_state{state="draining",service="s",instance="10.0.0.1:8088"} 0',
    'fleetgate_instance_state{state="ejected",service="s",instance="10.0.0.1:8088"} 0',
    'fleetgate_instance_state{state="up",service="s",instance="10.0.0.2:8088"} 0',
    'fleetgate_instance_state{state="draining",service="s",instance="10.0.0.2:8088"} 0',
    'fleetgate_instance_state{state="ejected",service="s",instance="10.0.0.2:8088"} 1',
  ])
  states = [['10.0.0.2:8088', 'draining']]
  t.same(await scrape(), [
    'fleetgate_instance_state{state="up",service="s",instance="10.0.0.2:8088"} 0',
    'fleetgate_instance_state{state="draining",service="s",instance="10.0.0.2:8088"} 1',
    'fleetgate_instance_state{state="ejected",service="s",instance="10.0.0.2:8088"} 0',
  ])
  // Listed twice (two workers that disagree): 1 in each state given, and one series per state. A state
  // unknown here is none of the three, but the instance keeps its series.
  states = [['10.0.0.2:8088', 'up'], ['10.0.0.3:8088', 'maintenance'], ['10.0.0.2:8088', 'ejected']]
  t.same(await scrape(), [
    'fleetgate_instance_state{state="up",service="s",instance="10.0.0.2:8088"} 1',
    'fleetgate_instance_state{state="draining",service="s",instance="10.0.0.2:8088"} 0',
    'fleetgate_instance_state{state="ejected",service="s",instance="10.0.0.2:8088"} 1',
    'fleetgate_instance_state{state="up",service="s",instance="10.0.0.3:8088"} 0',
    'fleetgate_instance_state{state="draining",service="s",instance="10.0.0.3:8088"} 0',
    'fleetgate_instance_state{state="ejected",service="s",instance="10.0.0.3:8088"} 0',
  ])
})

t.test('collected counters and gauges give the text and the values prom-client\'s own would for the same series', async t => {
  // Label values that need escaping, a series without own labels, and one with, at zero and not.
  const odd = Object.freeze({ service: 's', instance: 'a "quoted" \\ back\nslash' })
  const plain = Object.freeze({ service: 's', instance: '10.0.0.1:8088' })
  const rows: CollectedRows = emit => {
    emit(plain, { method: 'GET', code: '200' }, 3)
    emit(plain, { method: 'POST', code: '502' }, 0)
    emit(odd, { method: 'GET', code: '200' }, 1.5)
  }
  const names = ['service', 'instance', 'method', 'code'] as const
  const ours = new Registry()
  new CollectedCounter({ name: 'c_total', help: 'h "c"', labelNames: names, registers: [ours], rows })
  new CollectedGauge({ name: 'g', help: 'h\\g', labelNames: names, registers: [ours], aggregator: 'max', rows })
  const theirs = new Registry()
  const counter = new Counter({ name: 'c_total', help: 'h "c"', labelNames: names, registers: [theirs] })
  const gauge = new Gauge({ name: 'g', help: 'h\\g', labelNames: names, registers: [theirs], aggregator: 'max' })
  rows((labels, own, value) => {
    counter.inc({ ...labels, ...own }, value)
    gauge.set({ ...labels, ...own }, value)
  })
  // The text: the same lines, up to the order of the labels within a line.
  const lines = async (registry: Registry): Promise<string[]> => (await registry.metrics()).split('\n').filter(Boolean).map(line => {
    if (line.startsWith('#')) return line
    const labels = [...line.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map(([label]) => label).sort()
    return `${line.split('{')[0]}{${labels.join(',')}} ${line.slice(line.lastIndexOf(' ') + 1)}`
  }).sort()
  const expected = await lines(theirs)
  t.equal(expected.filter(line => !line.startsWith('#')).length, 6, 'three series each')
  t.same(await lines(ours), expected)
  // The values, as a worker's registry hands them to prom-client's aggregator.
  const json = async (registry: Registry): Promise<unknown> => (await registry.getMetricsAsJSON()).map(m => ({ ...m, values: m.values.map(({ labels, value }) => ({ labels, value })) }))
  t.same(await json(ours), await json(theirs))
  const merged = async (registry: Registry): Promise<string[]> => lines(AggregatorRegistry.aggregate([await registry.getMetricsAsJSON(), await registry.getMetricsAsJSON()]) as Registry)
  t.same(await merged(ours), await merged(theirs), 'merged across two workers alike: summed, or the max')
})

t.test('every fleetgate_ metric of the proxy and the agent is in README\'s metrics table, with its labels', async t => {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8')
  const proxy = createRegistry()
  createProxyMetrics(proxy, {
    service: 's', sourceKind: 'static', instanceCounts: () => ({}), instanceStates: () => [], discovery: () => ({ connected: true, stale: false }),
  })
  const agent = createRegistry()
  createAgentMetrics(agent)
  const metrics = [...proxy.getMetricsAsArray(), ...agent.getMetricsAsArray()].filter(m => m.name.startsWith('fleetgate_'))
  t.ok(metrics.length >= 20, `${metrics.length} metrics`)
  for (const metric of metrics) {
    const row = readme.split('\n').find(line => line.startsWith(`| \`${metric.name}\` |`))
    if (!row) {
      t.fail(`${metric.name} is not in README's metrics table`)
      continue
    }
    const labels = (metric as unknown as { labelNames: string[] }).labelNames
    t.ok(labels.every(label => row.includes(`\`${label}\``)), `${metric.name}: labels ${labels.join(', ')} listed`)
  }
})

t.test('a dashboard query of a metric that the agent exports too selects the proxies\' job', async t => {
  const dashboard = JSON.parse(readFileSync(new URL('../../deploy/grafana/fleetgate-dashboard.json', import.meta.url), 'utf8')) as {
    panels: Array<{ title: string, targets?: Array<{ expr: string }> }>
  }
  const proxy = createRegistry()
  createProxyMetrics(proxy, {
    service: 's', sourceKind: 'static', instanceCounts: () => ({}), instanceStates: () => [], discovery: () => ({ connected: true, stale: false }),
  })
  const agent = createRegistry()
  createAgentMetrics(agent)
  const agentNames = new Set(agent.getMetricsAsArray().map(m => m.name))
  const shared = proxy.getMetricsAsArray().map(m => m.name).filter(name => agentNames.has(name))
  t.ok(shared.length > 0, `shared: ${shared.join(', ')}`)
  // The proxy variable's "All" is .*, which matches every agent's instance label as well.
  for (const panel of dashboard.panels) {
    for (const { expr } of panel.targets ?? []) {
      for (const name of shared) {
        for (const match of expr.matchAll(new RegExp(`${name}(\\{[^}]*\\})?`, 'g'))) {
          t.match(match[1] ?? '', /job="fleetgate-proxy"/, `"${panel.title}": ${match[0]} counts the proxies alone`)
        }
      }
    }
  }
})
