// Slow start: an instance that joins a pool already following a membership takes a share of the
// requests that grows over --slow-start-ms, as HAProxy's `slowstart` and Envoy's slow start give it.

import t from 'tap'
import { Pool, SLOW_START_MIN_SHARE, type Endpoint } from '../../src/balancer/pool.ts'
import type { Instance } from '../../src/membership/instance.ts'
import type { Membership } from '../../src/membership/source.ts'

const inst = (id: string, port: number, state: Instance['state'] = 'up'): Instance =>
  ({ id, host: '127.0.0.1', port, state, weight: 1, labels: {} })

let revision = 0
const membership = (...instances: Instance[]): Membership =>
  ({ service: 's', instances, revision: ++revision, changedAtMs: Date.now() })

const SLOW_START_MS = 10_000

function build (options: { maxInflight?: number, slowStartMs?: number } = {}) {
  const now = { ms: 1_000_000 }
  const pool = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, slowStartMs: SLOW_START_MS, ...options, now: () => now.ms })
  return { pool, now }
}

/** How many of `n` picks each instance got. */
function shares (pool: Pool, n: number, exclude?: Set<Endpoint>): Record<string, number> {
  const counts: Record<string, number> = {}
  for (let i = 0; i < n; i++) {
    const id = pool.pick(exclude)?.instance.id ?? '-'
    counts[id] = (counts[id] ?? 0) + 1
  }
  return counts
}

const endpoint = (pool: Pool, id: string): Endpoint => [...pool.endpoints()].find(e => e.instance.id === id)!

t.test('the instances a pool starts with take their full share at once', async t => {
  const { pool } = build()
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  t.same(shares(pool, 300), { a: 100, b: 100, c: 100 })
  t.notOk(pool.isSlowStarting(endpoint(pool, 'c')))
})

t.test('an instance that joins later takes a share that grows with the time, then its full share', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2)))
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  const c = endpoint(pool, 'c')
  t.ok(pool.isSlowStarting(c), 'in slow start')

  // At first it takes 10 % of its turns: of 2,100 requests, 2,000 ÷ 2 to each old one and 100 to it.
  const first = shares(pool, 2_100)
  t.equal(first.c, 100, `at the start, the minimum share (${SLOW_START_MIN_SHARE * 100} % of its turns): ${JSON.stringify(first)}`)
  t.equal(first.a, first.b, 'the rest goes round the others evenly')

  now.ms += SLOW_START_MS / 2
  const half = shares(pool, 2_500)
  t.equal(half.c, 500, `halfway, half of its turns, as a weight half as large: ${JSON.stringify(half)}`)

  now.ms += SLOW_START_MS / 2
  t.notOk(pool.isSlowStarting(c), 'over at the end of the window')
  t.same(shares(pool, 300), { a: 100, b: 100, c: 100 }, 'then its full share')
})

t.test('without slowStartMs, a joining instance takes its full share at once', async t => {
  const { pool } = build({ slowStartMs: 0 })
  pool.update(membership(inst('a', 1), inst('b', 2)))
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  t.notOk(pool.isSlowStarting(endpoint(pool, 'c')))
  t.same(shares(pool, 300), { a: 100, b: 100, c: 100 })
})

t.test('an instance in slow start takes what no other would', async t => {
  await t.test('the first instances of a service that was empty', async t => {
    const { pool } = build()
    pool.update(membership())
    pool.update(membership(inst('a', 1)))
    t.ok(pool.isSlowStarting(endpoint(pool, 'a')))
    t.same(shares(pool, 10), { a: 10 }, 'alone, it takes every request')
    pool.update(membership(inst('a', 1), inst('b', 2)))
    t.same(shares(pool, 20), { a: 10, b: 10 }, 'two in slow start since the same moment share alike')
  })

  await t.test('the others excluded (a retry that tried them)', async t => {
    const { pool } = build()
    pool.update(membership(inst('a', 1), inst('b', 2)))
    pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
    const tried = new Set([endpoint(pool, 'a'), endpoint(pool, 'b')])
    t.same(shares(pool, 5, tried), { c: 5 })
  })

  await t.test('the others at their connection limit', async t => {
    const { pool } = build({ maxInflight: 1 })
    pool.update(membership(inst('a', 1), inst('b', 2)))
    pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
    for (const id of ['a', 'b']) endpoint(pool, id).inflight = 1
    t.equal(pool.pick()?.instance.id, 'c', 'it takes the request rather than have it wait')
    endpoint(pool, 'c').inflight = 1
    t.equal(pool.pick(), undefined, 'and once it is at the limit too, none is picked')
    t.ok(pool.atLimit(), 'because every one is at its limit: the request waits')
  })

  await t.test('the others ejected', async t => {
    const { pool } = build()
    pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
    pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3), inst('d', 4)))
    pool.reportConnectFailure(endpoint(pool, 'a'))
    const counts = shares(pool, 200)
    t.notOk('a' in counts, 'the ejected one gets nothing (3 of 4 healthy: no panic)')
    t.ok(counts.d! < 20, `the new one keeps to its small share while others can take requests: ${JSON.stringify(counts)}`)
    pool.reportConnectFailure(endpoint(pool, 'b'))
    pool.reportConnectFailure(endpoint(pool, 'c'))
    t.same(shares(pool, 5, new Set()), { d: 5 }, 'with every other one ejected, it takes them all')
  })
})

t.test('slow start ends when the instance leaves, and is not given again to an instance coming back from an ejection or from draining', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2)))
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  pool.update(membership(inst('a', 1), inst('b', 2)))
  t.same(shares(pool, 4), { a: 2, b: 2 }, 'gone, it is not picked')

  now.ms += SLOW_START_MS
  const b = endpoint(pool, 'b')
  pool.reportConnectFailure(b)
  now.ms += 1001
  t.notOk(pool.isSlowStarting(b))
  t.same(shares(pool, 4), { a: 2, b: 2 }, 'back from its ejection: its full share')

  pool.update(membership(inst('a', 1), inst('b', 2, 'draining')))
  pool.update(membership(inst('a', 1), inst('b', 2)))
  t.notOk(pool.isSlowStarting(endpoint(pool, 'b')))
  t.same(shares(pool, 4), { a: 2, b: 2 }, 'back from draining: its full share')
})

t.test('re-registered under a new id (a restart), an instance starts slowly again', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2)))
  now.ms += SLOW_START_MS
  pool.update(membership(inst('a', 1), inst('b2', 2)))
  t.ok(pool.isSlowStarting(endpoint(pool, 'b2')))
  t.equal(shares(pool, 110).b2, 10)
})

t.test('an instance that joins draining begins its slow start once it is up, however long it drained', async t => {
  for (const asChange of [false, true]) {
    await t.test(asChange ? 'applied as a change' : 'applied whole', async t => {
      const { pool, now } = build()
      const a = inst('a', 1)
      const b = inst('b', 2)
      const drained = inst('c', 3, 'draining')
      pool.update(membership(a, b))
      pool.update(membership(a, b, drained))
      t.notOk(pool.isSlowStarting(endpoint(pool, 'c')), 'draining: out of the rotation, no slow start shown')
      now.ms += 2 * SLOW_START_MS
      const up = inst('c', 3)
      const next = membership(a, b, up)
      pool.update(asChange ? { ...next, change: { added: [up], removed: [drained] } } : next)
      const c = endpoint(pool, 'c')
      t.equal(c.slowStartUntilMs, now.ms + SLOW_START_MS, 'its window starts as it goes up')
      t.equal(shares(pool, 2_100).c, 100, 'at first, the minimum share of its turns')
    })
  }
})

t.test('a server back under a new id while its old entry lingers ramps up from then, and on once the old entry goes', async t => {
  const { pool, now } = build()
  const a = inst('a', 1)
  const before = inst('member_1', 2)
  pool.update(membership(a, before))
  now.ms += SLOW_START_MS
  // Restarted, the server at port 2 registers again; its old registration has not expired yet. One server: the old entry takes its requests.
  pool.update(membership(a, before, inst('member_2', 2)))
  const first = shares(pool, 2_200)
  t.same(first, { a: 2_000, member_1: 200 }, `the restarted server takes the minimum share at once, through its old entry: ${JSON.stringify(first)}`)
  t.ok(pool.isSlowStarting(endpoint(pool, 'member_1')), 'its entry shows the slow start')

  now.ms += SLOW_START_MS / 2
  pool.update(membership(a, inst('member_2', 2)))
  const half = shares(pool, 1_500)
  t.same(half, { a: 1_000, member_2: 500 }, `the old entry gone, the new one goes on from halfway: ${JSON.stringify(half)}`)
})
