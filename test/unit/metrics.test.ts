import { readFileSync } from 'node:fs'
import t from 'tap'
import { createAgentMetrics, createProxyMetrics, createRegistry } from '../../src/metrics.ts'

t.test('instance_state follows the membership at each scrape: 1 for the current state, nothing for instances gone', async t => {
  let states: Array<readonly [string, string]> = [['10.0.0.1:8088', 'up'], ['10.0.0.2:8088', 'ejected']]
  const registry = createRegistry()
  createProxyMetrics(registry, {
    service: 's', sourceKind: 'static', instanceCounts: () => ({ up: 1, draining: 0, ejected: 1 }),
    instanceStates: () => states, discovery: () => ({ connected: true, stale: false }),
  })
  const scrape = async (): Promise<string[]> => (await registry.metrics()).split('\n').filter(l => l.startsWith('fleetgate_instance_state{'))
  t.same(await scrape(), [
    'fleetgate_instance_state{service="s",instance="10.0.0.1:8088",state="up"} 1',
    'fleetgate_instance_state{service="s",instance="10.0.0.1:8088",state="draining"} 0',
    'fleetgate_instance_state{service="s",instance="10.0.0.1:8088",state="ejected"} 0',
    'fleetgate_instance_state{service="s",instance="10.0.0.2:8088",state="up"} 0',
    'fleetgate_instance_state{service="s",instance="10.0.0.2:8088",state="draining"} 0',
    'fleetgate_instance_state{service="s",instance="10.0.0.2:8088",state="ejected"} 1',
  ])
  states = [['10.0.0.2:8088', 'draining']]
  t.same(await scrape(), [
    'fleetgate_instance_state{service="s",instance="10.0.0.2:8088",state="up"} 0',
    'fleetgate_instance_state{service="s",instance="10.0.0.2:8088",state="draining"} 1',
    'fleetgate_instance_state{service="s",instance="10.0.0.2:8088",state="ejected"} 0',
  ])
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
