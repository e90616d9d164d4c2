// How Consul health entries become instances: checks, maintenance, Meta, address fallback, weights, labels.

import t from 'tap'
import { readHealthEntries } from '../../src/membership/consul.ts'

interface EntryOptions {
  id?: string
  node?: string
  nodeAddress?: string
  address?: string
  port?: unknown
  meta?: Record<string, string>
  tags?: string[]
  weights?: unknown
  checks?: Array<[string, string]>
}

function entry (o: EntryOptions = {}): unknown {
  const id = o.id ?? 'web-1'
  const node = o.node ?? 'node-1'
  return {
    Node: { Node: node, Address: o.nodeAddress ?? '10.0.0.1' },
    Service: { ID: id, Service: 'web', Address: o.address ?? '', Port: 'port' in o ? o.port : 8088, Meta: o.meta ?? {}, Tags: o.tags ?? [], ...(o.weights === undefined ? {} : { Weights: o.weights }) },
    Checks: (o.checks ?? [['serfHealth', 'passing'], [`service:${id}`, 'passing']]).map(([CheckID, Status]) => ({ Node: node, CheckID, Status, ServiceID: CheckID === 'serfHealth' ? '' : id })),
  }
}

const cases: Array<{ name: string, entries: unknown[], expected: { instances?: unknown[], excluded?: number, invalid?: unknown[] } }> = [
  {
    name: 'an empty Service.Address falls back to Node.Address',
    entries: [entry()],
    expected: { instances: [{ id: 'web-1', host: '10.0.0.1', port: 8088, state: 'up', weight: 1, labels: {} }], excluded: 0 },
  },
  {
    name: 'Service.Address wins when set',
    entries: [entry({ address: '10.9.9.9' })],
    expected: { instances: [{ host: '10.9.9.9' }] },
  },
  {
    name: 'a failing service check leaves the instance out',
    entries: [entry({ checks: [['serfHealth', 'passing'], ['service:web-1', 'critical']] })],
    expected: { instances: [], excluded: 1 },
  },
  {
    name: 'a warning is not passing either (as ?passing)',
    entries: [entry({ checks: [['serfHealth', 'passing'], ['service:web-1', 'warning']] })],
    expected: { instances: [], excluded: 1 },
  },
  {
    name: 'a failing node check leaves the instance out',
    entries: [entry({ checks: [['serfHealth', 'critical'], ['service:web-1', 'passing']] })],
    expected: { instances: [], excluded: 1 },
  },
  {
    name: 'service maintenance drains',
    entries: [entry({ checks: [['serfHealth', 'passing'], ['service:web-1', 'passing'], ['_service_maintenance:web-1', 'critical']] })],
    expected: { instances: [{ id: 'web-1', state: 'draining' }], excluded: 0 },
  },
  {
    name: 'node maintenance drains',
    entries: [entry({ checks: [['serfHealth', 'passing'], ['_node_maintenance', 'critical'], ['service:web-1', 'passing']] })],
    expected: { instances: [{ state: 'draining' }] },
  },
  {
    name: 'maintenance plus a failing check: out, not draining',
    entries: [entry({ checks: [['_service_maintenance:web-1', 'critical'], ['service:web-1', 'critical']] })],
    expected: { instances: [], excluded: 1 },
  },
  {
    name: 'another service\'s maintenance check does not count as maintenance',
    entries: [entry({ checks: [['_service_maintenance:web-2', 'critical']] })],
    expected: { instances: [], excluded: 1 },
  },
  {
    name: 'Meta fleetgate_state=draining drains; fleetgate_ keys are not labels; tags are',
    entries: [entry({ meta: { fleetgate_state: 'draining', zone: 'a' }, tags: ['blue', 'v2'] })],
    expected: { instances: [{ state: 'draining', labels: { zone: 'a', tags: 'blue,v2' } }] },
  },
  {
    name: 'weights from Weights.Passing; a missing or bad weight is 1',
    entries: [entry({ id: 'a', weights: { Passing: 5, Warning: 1 } }), entry({ id: 'b', weights: { Passing: 0 } }), entry({ id: 'c', weights: 'x' })],
    expected: { instances: [{ id: 'a', weight: 5 }, { id: 'b', weight: 1 }, { id: 'c', weight: 1 }] },
  },
  {
    name: 'checks with no status are not passing',
    entries: [entry({ checks: [['service:web-1', '']] })],
    expected: { instances: [], excluded: 1 },
  },
  {
    name: 'the same service ID on two nodes: qualified by node',
    entries: [entry({ id: 'web', node: 'n1', nodeAddress: '10.0.0.1' }), entry({ id: 'web', node: 'n2', nodeAddress: '10.0.0.2' })],
    expected: { instances: [{ id: 'n1/web', host: '10.0.0.1' }, { id: 'n2/web', host: '10.0.0.2' }] },
  },
  {
    name: 'bad port and bad address are invalid, the rest is kept',
    entries: [entry({ id: 'ok' }), entry({ id: 'p0', port: 0 }), entry({ id: 'big', port: 70000 }), entry({ id: 'noaddr', nodeAddress: '' }), entry({ id: 'junk', address: 'not a host!' })],
    expected: {
      instances: [{ id: 'ok' }],
      invalid: [{ id: 'p0', reason: 'bad_port' }, { id: 'big', reason: 'bad_port' }, { id: 'noaddr', reason: 'no_host' }, { id: 'junk', reason: 'no_host' }],
    },
  },
  {
    name: 'an entry without a Service is reported, not a crash',
    entries: [{ Node: { Node: 'n1' } }, null, 'text'],
    expected: { instances: [], invalid: [{ reason: 'unknown_format' }, { reason: 'unknown_format' }, { reason: 'unknown_format' }] },
  },
  {
    name: 'IPv6 addresses',
    entries: [entry({ address: '::1' })],
    expected: { instances: [{ host: '::1' }] },
  },
]

for (const c of cases) {
  t.test(c.name, async t => {
    const result = readHealthEntries(c.entries)
    if (c.expected.instances) {
      t.equal(result.instances.length, c.expected.instances.length, 'instance count')
      t.match(result.instances, c.expected.instances)
    }
    if (c.expected.excluded !== undefined) t.equal(result.excluded, c.expected.excluded, 'excluded')
    t.match(result.invalid, c.expected.invalid ?? [])
    if (!c.expected.invalid) t.equal(result.invalid.length, 0)
  })
}
