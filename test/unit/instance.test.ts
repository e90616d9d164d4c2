import t from 'tap'
import { decodeRegistration, encodeCurator, instanceAddress, sortInstances, type Instance } from '../../src/membership/instance.ts'
import { seededRandom } from '../helpers/random.ts'

const curator = {
  name: 'superset', id: 'ca2f', address: '10.1.2.3', port: 8088, sslPort: null, payload: null,
  registrationTimeUTC: 1717000000000, serviceType: 'DYNAMIC', uriSpec: null,
}

const cases: Array<{ name: string, data: unknown, expect: Record<string, unknown> | string }> = [
  { name: 'Curator x-discovery', data: curator, expect: { host: '10.1.2.3', port: 8088, state: 'up', weight: 1 } },
  { name: 'Curator disabled reads as draining', data: { ...curator, enabled: false }, expect: { state: 'draining' } },
  { name: 'Curator with fleetgate payload', data: { ...curator, payload: { state: 'draining', weight: 5, labels: { zone: 'a', n: 1 } } }, expect: { state: 'draining', weight: 5, labels: { zone: 'a', n: '1' } } },
  { name: 'Curator with unknown fields', data: { ...curator, extra: [1, 2] }, expect: { host: '10.1.2.3' } },
  { name: 'ServerSet ALIVE', data: { serviceEndpoint: { host: '10.1.2.4', port: 8088 }, additionalEndpoints: {}, status: 'ALIVE', shard: 0 }, expect: { host: '10.1.2.4', state: 'up', labels: { status: 'ALIVE', shard: '0' } } },
  { name: 'ServerSet STOPPING drains', data: { serviceEndpoint: { host: '10.1.2.4', port: 8088 }, status: 'STOPPING' }, expect: { state: 'draining' } },
  { name: 'ServerSet DEAD gets no new requests', data: { serviceEndpoint: { host: '10.1.2.4', port: 8088 }, status: 'DEAD' }, expect: { state: 'draining' } },
  { name: 'Nerve', data: { host: 'web-1.example', port: 8088, name: 'superset-7f9c', weight: 10, labels: { az: 'b' } }, expect: { host: 'web-1.example', weight: 10, labels: { az: 'b', name: 'superset-7f9c' } } },
  { name: 'Nerve weight 0 drains', data: { host: '10.0.0.1', port: 80, weight: 0 }, expect: { state: 'draining', weight: 1 } },
  { name: 'IPv6 host', data: { host: '::1', port: 8088 }, expect: { host: '::1' } },
  { name: 'string port', data: { host: '10.0.0.1', port: '8088' }, expect: { port: 8088 } },
  { name: 'not JSON', data: Buffer.from('{nope'), expect: 'not_json' },
  { name: 'JSON but not an object', data: [1, 2, 3], expect: 'not_json' },
  { name: 'no port', data: { ...curator, port: null }, expect: 'bad_port' },
  { name: 'port 99999', data: { ...curator, port: 99999 }, expect: 'bad_port' },
  { name: 'fractional port', data: { host: 'a', port: 80.5 }, expect: 'bad_port' },
  { name: 'no host', data: { ...curator, address: '' }, expect: 'no_host' },
  { name: 'host with spaces', data: { host: 'a b', port: 80 }, expect: 'no_host' },
  { name: 'IPv6 host with a zone (no URL can hold it)', data: { host: 'fe80::1%eth0', port: 80 }, expect: 'no_host' },
  { name: 'host ending in a number that is no IPv4 address', data: { host: '10.0.0.256', port: 80 }, expect: 'no_host' },
  { name: 'bracketed IPv6 host', data: { host: '[::1]', port: 80 }, expect: { host: '::1' } },
  { name: 'host 0.0.0.0 (a bind address)', data: { host: '0.0.0.0', port: 80 }, expect: 'no_host' },
  { name: 'host 0, read as 0.0.0.0', data: { host: '0', port: 80 }, expect: 'no_host' },
  { name: 'host ::', data: { host: '::', port: 80 }, expect: 'no_host' },
  { name: 'host ::ffff:0.0.0.0', data: { host: '[::ffff:0.0.0.0]', port: 80 }, expect: 'no_host' },
  { name: 'unknown format', data: { foo: 1 }, expect: 'unknown_format' },
  { name: '1 MB of garbage', data: Buffer.alloc(1024 * 1024, 0x41), expect: 'too_large' },
  { name: 'empty', data: Buffer.alloc(0), expect: 'not_json' },
]

for (const c of cases) {
  t.test(c.name, async t => {
    const data = Buffer.isBuffer(c.data) ? c.data : Buffer.from(JSON.stringify(c.data))
    const result = decodeRegistration('child-1', data)
    if (typeof c.expect === 'string') {
      t.equal(result.ok, false)
      if (!result.ok) t.equal(result.reason, c.expect)
    } else {
      t.equal(result.ok, true, JSON.stringify(result))
      if (result.ok) {
        t.equal(result.instance.id, 'child-1')
        t.match(result.instance, c.expect)
        t.ok(Object.isFrozen(result.instance))
      }
    }
  })
}

t.test('encodeCurator writes what Curator requires and decodes back', async t => {
  const data = encodeCurator({ service: 'superset', id: 'i-1', host: '127.0.0.1', port: 8088, state: 'up', weight: 2, labels: { zone: 'a' }, registrationTimeUTC: 1 })
  const doc = JSON.parse(data.toString())
  for (const field of ['name', 'id', 'address', 'port', 'sslPort', 'payload', 'registrationTimeUTC', 'serviceType', 'uriSpec']) {
    t.ok(field in doc, `has ${field}`)
  }
  t.equal(doc.serviceType, 'DYNAMIC')
  const decoded = decodeRegistration('i-1', data)
  t.ok(decoded.ok)
  if (decoded.ok) {
    t.equal(decoded.format, 'curator')
    t.match(decoded.instance, { host: '127.0.0.1', port: 8088, state: 'up', weight: 2, labels: { zone: 'a' } })
  }
})

t.test('instanceAddress brackets IPv6', async t => {
  t.equal(instanceAddress({ host: '::1', port: 80 }), '[::1]:80')
  t.equal(instanceAddress({ host: '10.0.0.1', port: 80 }), '10.0.0.1:80')
})

t.test('sortInstances sorts by id, and from a previous set gives the same order as a full sort', async t => {
  const make = (id: string, port = 80): Instance => Object.freeze({ id, host: '10.0.0.1', port, state: 'up', weight: 1, labels: Object.freeze({}) })
  const byId = (list: readonly Instance[]): string[] => list.map(i => `${i.id}:${i.port}`)
  t.same(byId(sortInstances([make('c'), make('a'), make('b')])), ['a:80', 'b:80', 'c:80'])

  // Random joins, leaves and replacements (a new object under a known id), checked against a plain sort.
  const random = seededRandom(7)
  const counts = [0, 0, 0, 0]
  let current = Array.from({ length: 200 }, (_, i) => make(`id-${String(i * 7 % 200).padStart(3, '0')}`))
  let previous = sortInstances(current)
  for (let round = 0; round < 300; round++) {
    const next = current.slice()
    const op = random(4)
    counts[op]!++
    if (op === 0 || next.length === 0) next.push(make(`id-${random(1000)}-${round}`))
    else if (op === 1) next.splice(random(next.length), 1)
    else if (op === 2) { const i = random(next.length); next[i] = make(next[i]!.id, 81) }
    else for (let k = 0; k < 5; k++) next.push(make(`x-${random(100)}-${round}-${k}`))
    const sorted = sortInstances(next, previous)
    const expected = next.slice().sort((a, b) => a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
    if (byId(sorted).join() !== byId(expected).join()) {
      t.same(byId(sorted), byId(expected), `round ${round}, operation ${op}`)
      return
    }
    // The objects given, or for one read again unchanged, the earlier object.
    const given = new Set([...next, ...previous])
    if (!sorted.every(instance => given.has(instance))) return t.fail(`round ${round}: an object that was never given`)
    current = next
    previous = sorted
  }
  t.equal(previous.length, current.length)
  t.ok(counts.every(c => c > 50), `joins, leaves, replacements and batches were all tried: ${counts.join(', ')}`)
})

t.test('sortInstances hands back the earlier object for an instance read again unchanged', async t => {
  const make = (id: string, port = 80, labels: Record<string, string> = {}): Instance => Object.freeze({ id, host: '10.0.0.1', port, state: 'up', weight: 1, labels: Object.freeze(labels) })
  const [a, b] = [make('a', 80, { zone: 'x' }), make('b')]
  const first = sortInstances([b, a])
  const again = sortInstances([make('b'), make('a', 80, { zone: 'x' }), make('c')], first)
  t.equal(again[0], a, 'a, read again, is the object first published')
  t.equal(again[1], b)
  t.equal(again[2]!.id, 'c')
  const changed = sortInstances([make('a', 80, { zone: 'y' }), b], first)
  t.not(changed[0], a, 'a with another label is a new object')
  t.same(changed[0]!.labels, { zone: 'y' })
})
