import t from 'tap'
import { Pool, type Endpoint } from '../../src/balancer/pool.ts'
import type { Instance } from '../../src/membership/instance.ts'
import type { Membership } from '../../src/membership/source.ts'

const inst = (id: string, port: number, state: Instance['state'] = 'up'): Instance =>
  ({ id, host: '127.0.0.1', port, state, weight: 1, labels: {} })

let revision = 0
const membership = (...instances: Instance[]): Membership =>
  ({ service: 's', instances, revision: ++revision, changedAtMs: Date.now() })

function build (now = { ms: 1_000_000 }) {
  const pool = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, now: () => now.ms })
  return { pool, now }
}
const ids = (pool: Pool, n: number, exclude?: Set<Endpoint>) => Array.from({ length: n }, () => pool.pick(exclude)?.instance.id ?? '-')

t.test('round robin over up instances; draining ones get nothing new', async t => {
  const { pool } = build()
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3, 'draining')))
  t.same(ids(pool, 4), ['a', 'b', 'a', 'b'])
  t.same(pool.counts(), { up: 2, draining: 1, ejected: 0 })
})

t.test('empty pool picks nothing', async t => {
  const { pool } = build()
  t.equal(pool.pick(), undefined)
  pool.update(membership())
  t.equal(pool.pick(), undefined)
})

t.test('an instance that refused a connection is skipped for a growing time', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  const b = [...pool.endpoints()].find(e => e.instance.id === 'b')!
  pool.reportConnectFailure(b)
  t.equal(b.state(now.ms), 'ejected')
  t.notOk(ids(pool, 6).includes('b'))
  now.ms += 1001
  t.ok(ids(pool, 3).includes('b'), 'back after the first ejection')
  pool.reportConnectFailure(b)
  now.ms += 1001
  t.notOk(ids(pool, 6).includes('b'), 'second ejection in a row lasts twice as long')
  now.ms += 1000
  pool.reportSuccess(b)
  t.ok(ids(pool, 3).includes('b'))
  t.equal(b.ejections, 0, 'an answer resets the back-off')
})

t.test('panic: with most instances ejected, all up instances get traffic again', async t => {
  const { pool } = build()
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  const [a, b] = [...pool.endpoints()]
  pool.reportConnectFailure(a!)
  pool.reportConnectFailure(b!)
  // 1 of 3 healthy is below 50 %: the healthy one comes first, ejected ones still serve when excluded.
  t.equal(pool.pick()?.instance.id, 'c')
  t.ok(pool.pick(new Set([[...pool.endpoints()][2]!])), 'falls back to an ejected instance instead of none')
})

t.test('exclusion skips already-tried instances', async t => {
  const { pool } = build()
  pool.update(membership(inst('a', 1), inst('b', 2)))
  const a = [...pool.endpoints()][0]!
  t.same(ids(pool, 3, new Set([a])), ['b', 'b', 'b'])
})

t.test('update keeps health state of known instances and reports leavers', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2)))
  const a = [...pool.endpoints()][0]!
  pool.reportConnectFailure(a)
  const events: string[] = []
  pool.onEvent(e => { if (e.type !== 'changed') events.push(`${e.type}:${e.endpoint.instance.id}`) })
  pool.update(membership(inst('a', 1), inst('c', 3)))
  t.equal([...pool.endpoints()][0], a, 'same endpoint object')
  t.equal(a.state(now.ms), 'ejected')
  t.same(events, ['added:c', 'removed:b'])
  pool.update(membership(inst('a', 1, 'draining'), inst('c', 3)))
  t.equal(a.state(now.ms), 'draining')
})

t.test('same id at a new address is a new endpoint', async t => {
  const { pool } = build()
  pool.update(membership(inst('a', 1)))
  const first = [...pool.endpoints()][0]
  pool.update(membership(inst('a', 2)))
  t.not([...pool.endpoints()][0], first)
})

t.test('an instance that leaves and comes back (the same object) joins again as a new endpoint', async t => {
  const { pool } = build()
  const a = inst('a', 1)
  const b = inst('b', 2)
  const events: string[] = []
  pool.onEvent(event => { if (event.type !== 'changed') events.push(`${event.type} ${event.endpoint.instance.id}`) })
  pool.update(membership(a, b))
  const first = [...pool.endpoints()].find(e => e.instance.id === 'b')!
  pool.update(membership(a))
  t.same(ids(pool, 2), ['a', 'a'])
  pool.update(membership(a, b))
  t.same(events, ['added a', 'added b', 'removed b', 'added b'])
  t.equal(pool.size, 2)
  const again = [...pool.endpoints()].find(e => e.instance.id === 'b')!
  t.not(again, first, 'a fresh endpoint: the old one was handed off as removed')
  t.same(ids(pool, 4).sort(), ['a', 'a', 'b', 'b'])
  pool.reportConnectFailure(again)
  t.equal(pool.counts().ejected, 1, 'and it can be ejected like any other')
})

t.test('a weight change alone re-spreads the rotation', async t => {
  const { pool } = build()
  pool.update(membership(inst('a', 1), inst('b', 2)))
  t.same(ids(pool, 4).sort(), ['a', 'a', 'b', 'b'])
  pool.update(membership({ ...inst('a', 1), weight: 3 }, inst('b', 2)))
  t.same(ids(pool, 8).sort(), ['a', 'a', 'a', 'a', 'a', 'a', 'b', 'b'])
})

t.test('connection limit: an instance at the limit is skipped; all at it is "at limit", not "none"', async t => {
  const pool = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, maxInflight: 2 })
  pool.update(membership(inst('a', 1), inst('b', 2)))
  const [a, b] = [...pool.endpoints()] as [Endpoint, Endpoint]
  a.inflight = 2
  t.same(ids(pool, 3), ['b', 'b', 'b'], 'a is full')
  b.inflight = 2
  t.equal(pool.pick(), undefined, 'both full')
  t.ok(pool.atLimit(), 'because of the limit')
  t.ok(pool.pick(undefined, false), 'an upgrade may still pick one')
  t.ok(pool.atLimit(new Set([a])), 'a retry that may only use b waits for b')
  t.notOk(pool.atLimit(new Set([a, b])), 'one that tried both has nothing to wait for')
  b.inflight = 1
  t.equal(pool.pick(new Set([a]))?.instance.id, 'b')
  t.equal(pool.pick(new Set([b])), undefined, 'a retry excluding b does not overfill a')

  // With an ejection, the limit still holds, in panic or not.
  a.inflight = 0
  b.inflight = 0
  pool.reportConnectFailure(a)
  t.same(ids(pool, 2), ['b', 'b'])
  b.inflight = 2
  t.equal(pool.pick(), undefined, 'the healthy one is full: 1 of 2 healthy is not below 50 %, so no panic')
  t.ok(pool.atLimit())
  t.equal(new Pool({ service: 's', ejectBaseMs: 1, ejectMaxMs: 1, panicThresholdPercent: 50 }).atLimit(), false, 'no limit: never at it')
})

t.test('connection limit in panic: a busy healthy instance is waited for, not passed over for ejected ones', async t => {
  const pool = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, maxInflight: 1 })
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  const [a, b, c] = [...pool.endpoints()] as [Endpoint, Endpoint, Endpoint]
  pool.reportConnectFailure(a)
  pool.reportConnectFailure(b)
  t.equal(pool.pick()?.instance.id, 'c', '1 of 3 healthy: panic, and the healthy one first')
  c.inflight = 1
  t.equal(pool.pick(), undefined, 'c is busy: nothing is picked...')
  t.ok(pool.atLimit(), '...and the request waits for c')
  t.ok(pool.pick(new Set([c])), 'a retry that failed on c may still try an ejected one')
  t.notOk(pool.atLimit(new Set([a, b, c])), 'one that tried all has nothing to wait for')
})

t.test('asking atLimit() does not move the rotation', async t => {
  const pool = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, maxInflight: 1 })
  pool.update(membership(inst('a', 1), inst('b', 2)))
  const [a, b] = [...pool.endpoints()] as [Endpoint, Endpoint]
  t.equal(pool.pick()?.instance.id, 'a')
  a.inflight = 1
  b.inflight = 1
  t.equal(pool.pick(), undefined)
  for (let i = 0; i < 3; i++) t.ok(pool.atLimit())
  a.inflight = 0
  b.inflight = 0
  t.same(ids(pool, 2), ['b', 'a'], 'b is next, as before the requests waited')
})
