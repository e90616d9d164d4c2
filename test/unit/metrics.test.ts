import t from 'tap'
import { createProxyMetrics, createRegistry } from '../../src/metrics.ts'

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
