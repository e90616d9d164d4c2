import t from 'tap'
import { Pool, type Endpoint } from '../../src/balancer/pool.ts'
import type { Instance } from '../../src/membership/instance.ts'
import { BaseSource, type Membership } from '../../src/membership/source.ts'
import { seededRandom } from '../helpers/random.ts'

const inst = (id: string, port: number, state: Instance['state'] = 'up'): Instance =>
  ({ id, host: '127.0.0.1', port, state, weight: 1, labels: {} })
/** One server (127.0.0.9:1) under the id given. */
const twin = (id: string): Instance => ({ ...inst(id, 1), host: '127.0.0.9' })

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

t.test('with ejectAfterErrors, that many server errors in a row eject an instance, for a growing time', async t => {
  const now = { ms: 1_000_000 }
  const pool = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, ejectAfterErrors: 3, now: () => now.ms })
  const events: { id: string, reason: string, durationMs: number }[] = []
  pool.onEvent(event => { if (event.type === 'ejected') events.push({ id: event.endpoint.instance.id, reason: event.reason, durationMs: event.durationMs }) })
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  const b = [...pool.endpoints()].find(e => e.instance.id === 'b')!
  pool.reportAnswer(b, 500)
  pool.reportAnswer(b, 503)
  pool.reportAnswer(b, 404)
  pool.reportAnswer(b, 502)
  pool.reportAnswer(b, 500)
  t.equal(b.state(now.ms), 'up', 'an answer below 500 ends the run: two, then two, are not three')
  pool.reportAnswer(b, 501)
  pool.reportAnswer(b, 505)
  t.equal(b.state(now.ms), 'up', '501 and 505 answer the request, not for the server: they do not count, and end the run')
  pool.reportAnswer(b, 500)
  pool.reportAnswer(b, 500)
  t.equal(b.state(now.ms), 'up')
  pool.reportAnswer(b, 599)
  t.equal(b.state(now.ms), 'ejected', 'the third in a row ejects it')
  t.notOk(ids(pool, 6).includes('b'), 'and it is skipped')
  t.same(events, [{ id: 'b', reason: 'server-errors', durationMs: 1000 }])
  pool.reportAnswer(b, 500) // requests that were running on it meanwhile
  pool.reportServerError(b)
  now.ms += 1001
  t.ok(ids(pool, 3).includes('b'), 'back after the ejection')
  pool.reportAnswer(b, 500)
  pool.reportServerError(b) // a reset or a timeout before any answer
  t.equal(b.state(now.ms), 'up', 'what failed while it was ejected does not count toward the next run')
  pool.reportAnswer(b, 500)
  t.same(events.at(-1), { id: 'b', reason: 'server-errors', durationMs: 2000 }, 'server errors do not end the ejections in a row: the next lasts twice as long')
  now.ms += 2001
  pool.reportAnswer(b, 200)
  t.equal(b.ejections, 0, 'another answer starts the doubling over')
  for (let i = 0; i < 3; i++) pool.reportAnswer(b, 500)
  t.same(events.at(-1), { id: 'b', reason: 'server-errors', durationMs: 1000 })
  pool.reportConnectFailure([...pool.endpoints()].find(e => e.instance.id === 'a')!)
  t.same(events.at(-1), { id: 'a', reason: 'connect', durationMs: 1000 }, 'a refused connect says so')
})

t.test('server errors eject no more instances than the panic threshold allows, and never the last healthy one', async t => {
  const now = { ms: 1_000_000 }
  const options = { service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, ejectAfterErrors: 1, now: () => now.ms }
  const half = new Pool({ ...options, panicThresholdPercent: 50 })
  half.update(membership(inst('a', 1), inst('b', 2), inst('c', 3), inst('d', 4)))
  for (const endpoint of half.endpoints()) half.reportAnswer(endpoint, 500)
  t.same(half.counts(), { up: 2, draining: 0, ejected: 2 }, 'a whole fleet answering 500: half of it is ejected, no more')
  half.reportConnectFailure([...half.endpoints()][3]!)
  t.same(half.counts(), { up: 1, draining: 0, ejected: 3 }, 'a refused connect still ejects past it')
  now.ms += 1001
  t.same(half.counts(), { up: 4, draining: 0, ejected: 0 })

  const none = new Pool({ ...options, panicThresholdPercent: 0 })
  none.update(membership(inst('a', 1), inst('b', 2)))
  for (let i = 0; i < 3; i++) for (const endpoint of none.endpoints()) none.reportAnswer(endpoint, 500)
  t.same(none.counts(), { up: 1, draining: 0, ejected: 1 }, 'with no panic threshold, the last healthy one stays')
  const single = new Pool({ ...options, panicThresholdPercent: 0 })
  single.update(membership(inst('a', 1)))
  for (let i = 0; i < 3; i++) single.reportAnswer([...single.endpoints()][0]!, 500)
  t.equal(single.pick()?.instance.id, 'a', 'a lone instance is never ejected for its answers')
})

t.test('without ejectAfterErrors, server errors never eject, and any answer ends the ejections in a row', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2)))
  const b = [...pool.endpoints()].find(e => e.instance.id === 'b')!
  for (let i = 0; i < 100; i++) {
    pool.reportAnswer(b, 500)
    pool.reportServerError(b)
  }
  t.equal(b.state(now.ms), 'up')
  pool.reportConnectFailure(b)
  t.equal(b.ejections, 1)
  now.ms += 1001
  pool.reportAnswer(b, 500)
  t.equal(b.ejections, 0, 'a 500 is an answer: the instance is reachable')
})

t.test('one server listed under two ids takes one share, and the other entry takes over when the first leaves', async t => {
  const { pool } = build()
  pool.update(membership(twin('member_1'), twin('member_2'), inst('b', 2)))
  t.same(ids(pool, 4), ['member_1', 'b', 'member_1', 'b'], 'one share for the server, not two')
  const [first] = [...pool.endpoints()]
  const limited = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, maxInflight: 1 })
  limited.update(membership(twin('member_1'), twin('member_2')))
  ;[...limited.endpoints()][0]!.inflight = 1
  t.equal(limited.pick(), undefined, 'its connection limit holds for the server, not per entry')
  t.ok(limited.atLimit(), 'so a request waits for it')
  pool.reportConnectFailure(first!)
  t.notOk(ids(pool, 4).includes('member_2'), 'ejected, the server is not tried again under its other id')
  pool.update(membership(twin('member_2'), inst('b', 2)))
  t.same(ids(pool, 2).sort(), ['b', 'member_2'], 'the other entry takes over once the first leaves')
})

t.test('an entry set aside for its server\'s other one is not counted or ejected', async t => {
  const { pool, now } = build()
  const ejected: string[] = []
  pool.onEvent(event => { if (event.type === 'ejected') ejected.push(event.endpoint.instance.id) })
  pool.update(membership(twin('member_2'), inst('b', 2)))
  const second = [...pool.endpoints()][0]!
  pool.reportConnectFailure(second)
  t.same(pool.counts(), { up: 1, draining: 0, ejected: 1 })
  // The server registers again under an id that sorts first: its old entry is set aside.
  pool.update(membership(twin('member_1'), twin('member_2'), inst('b', 2)))
  t.same(ids(pool, 4), ['member_1', 'b', 'member_1', 'b'], 'the new entry takes the server\'s share')
  t.same(pool.counts(), { up: 3, draining: 0, ejected: 0 }, 'the set-aside entry is not shown as ejected either')
  now.ms += 1001
  pool.reportConnectFailure(second)
  t.same(ejected, ['member_2'], 'a late failure of the set-aside entry ejects nothing more')
  const [first, , b] = [...pool.endpoints()]
  pool.reportConnectFailure(b!)
  t.same(ids(pool, 3), ['member_1', 'member_1', 'member_1'], 'the healthy one takes the requests')
  t.equal(pool.pick(new Set([first!])), undefined, 'one of two in the rotation healthy is no panic: the set-aside entry is not counted')
})

t.test('an ejection outlives a spell of draining: the instance comes back still ejected', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  const a = [...pool.endpoints()].find(e => e.instance.id === 'a')!
  pool.reportConnectFailure(a)
  pool.update(membership(inst('a', 1, 'draining'), inst('b', 2), inst('c', 3)))
  t.equal(a.state(now.ms), 'draining')
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  t.equal(a.state(now.ms), 'ejected', 'shown as ejected')
  t.notOk(ids(pool, 6).includes('a'), 'and routed as ejected')
  t.same(pool.counts(), { up: 2, draining: 0, ejected: 1 })
  now.ms += 1001
  t.ok(ids(pool, 3).includes('a'), 'until the ejection ends')
  pool.reportConnectFailure(a)
  t.notOk(ids(pool, 6).includes('a'), 'a refusal then ejects it again')
  t.equal(a.ejections, 2, 'for longer')
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

t.test('panic: an ejected instance that answers a request sent to it while ejected is back at once', async t => {
  const { pool, now } = build()
  pool.update(membership(inst('a', 1), inst('b', 2), inst('c', 3)))
  const [a, b, c] = [...pool.endpoints()] as [Endpoint, Endpoint, Endpoint]
  const events: string[] = []
  pool.onEvent(event => { if (event.type === 'readmitted') events.push(event.endpoint.instance.id) })
  for (let i = 0; i < 3; i++) for (const e of [a, b, c]) pool.reportConnectFailure(e)
  t.same(pool.counts(), { up: 0, draining: 0, ejected: 3 }, 'all ejected, for 4 s each now')

  // A request a carried from before its ejection says nothing: only one sent to it in panic does.
  pool.reportAnswer(a, 200)
  t.equal(a.state(now.ms), 'ejected', 'an answer to a request from before the ejection does not end it')
  const picked = pool.pick()!
  t.ok(pool.isEjected(picked), 'in panic, an ejected instance is picked')
  pool.reportAnswer(picked, 200, true)
  t.equal(picked.state(now.ms), 'up', 'its answer ends its ejection')
  t.same(events, [picked.instance.id], 'and says so')
  t.same(ids(pool, 3), [picked.instance.id, picked.instance.id, picked.instance.id], 'the one that answers takes the requests, not the ones that refuse')

  // Without ejectAfterErrors, any answer shows the instance reachable, as it resets the back-off.
  const other = [a, b, c].find(e => e !== picked)!
  pool.reportAnswer(other, 503, true)
  t.equal(other.state(now.ms), 'up', 'so does a 503, when only refused connects eject')

  // With it, a server error is no sign of health.
  const strict = new Pool({ service: 's', ejectBaseMs: 1000, ejectMaxMs: 8000, panicThresholdPercent: 50, ejectAfterErrors: 2, now: () => now.ms })
  strict.update(membership(inst('a', 1), inst('b', 2)))
  const [x, y] = [...strict.endpoints()] as [Endpoint, Endpoint]
  strict.reportConnectFailure(x)
  strict.reportConnectFailure(y)
  strict.reportAnswer(x, 503, true)
  t.equal(x.state(now.ms), 'ejected', 'with --eject-after-errors, a 5xx sent in panic leaves it ejected')
  strict.reportAnswer(x, 404, true)
  t.equal(x.state(now.ms), 'up', 'and any other answer ends it')
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
  // A request still on the old endpoint fails to connect late: the new one is not the old one.
  pool.reportConnectFailure(first)
  t.equal(pool.counts().ejected, 0, 'the removed endpoint is not ejected in its successor\'s place')
  t.same(events, ['added a', 'added b', 'removed b', 'added b'], 'nor reported ejected')
  pool.reportConnectFailure(again)
  t.equal(pool.counts().ejected, 1, 'and the new one can be ejected like any other')
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

/** A source driven by hand, to make memberships that carry their change as a real source does. */
class HandSource extends BaseSource {
  readonly kind = 'hand'
  async start (): Promise<void> {}
  async close (): Promise<void> {}
  set (instances: Instance[]): boolean {
    return this.publish(instances)
  }

  change (added: Instance[], removed: Instance[], whole: () => Instance[]): boolean {
    return this.publishChange(added, removed, whole)
  }
}

t.test('a membership that carries its change leaves the pool as walking the whole set would', async t => {
  const random = seededRandom(7)
  const source = new HandSource('s')
  const clock = { ms: 1_000_000 }
  const byChange = build(clock).pool
  const byWalk = build(clock).pool
  // Each update's added and removed events, in any order.
  const logEvents = (pool: Pool): string[] => {
    const updates: string[] = []
    let batch: string[] = []
    pool.onEvent(e => {
      if (e.type === 'added' || e.type === 'removed') batch.push(`${e.type} ${e.endpoint.key}`)
      if (e.type === 'changed') { updates.push(batch.sort().join(', ')); batch = [] }
    })
    return updates
  }
  const log = { byChange: logEvents(byChange), byWalk: logEvents(byWalk) }
  let carried = 0
  source.subscribe(m => {
    if (m.change) carried++
    byChange.update(m)
    const { change: _change, ...whole } = m
    byWalk.update(whole)
  })
  const live = new Map<string, Instance>()
  const make = (id: string): Instance => ({
    id, host: '127.0.0.1', port: 1000 + random(4), state: random(4) === 0 ? 'draining' : 'up', weight: 1 + random(2), labels: {},
  })
  for (let i = 0; i < 40; i++) live.set(`i${i}`, make(`i${i}`))
  source.set([...live.values()])
  const view = (pool: Pool): string => [...pool.endpoints()].map(e => `${e.key}:${e.state(clock.ms)}:${e.weight}:${e.ejections}`).join(' ')
  for (let round = 0; round < 300; round++) {
    const added: Instance[] = []
    const removed: Instance[] = []
    for (let k = 0, n = 1 + random(3); k < n; k++) {
      const id = `i${random(60)}`
      const before = live.get(id)
      if (before && random(2) === 0) {
        live.delete(id)
        removed.push(before)
      } else {
        // New, or registered again with other data (perhaps another address: another endpoint).
        const instance = make(id)
        live.set(id, instance)
        if (before) removed.push(before)
        added.push(instance)
      }
    }
    // Drop what was added and removed again in the same round: a source never reports it.
    const net = { added: added.filter(i => live.get(i.id) === i), removed: removed.filter(i => !added.includes(i)) }
    source.change(net.added, net.removed, () => [...live.values()])
    // Health is the pool's own: eject the same endpoint in both, for a time that runs out a few rounds on.
    clock.ms += 400
    const victim = [...byChange.endpoints()][random(byChange.size || 1)]
    if (victim) {
      byChange.reportConnectFailure(victim)
      byWalk.reportConnectFailure([...byWalk.endpoints()].find(e => e.key === victim.key)!)
    }
    if (view(byChange) !== view(byWalk)) return t.equal(view(byChange), view(byWalk), `round ${round}: the endpoints`)
    if (ids(byChange, 7).join() !== ids(byWalk, 7).join()) return t.same(ids(byChange, 7), ids(byWalk, 7), `round ${round}: the picks`)
  }
  t.same(log.byChange, log.byWalk, `the same added and removed events at each of ${log.byChange.length} updates`)
  t.same(byChange.counts(), byWalk.counts())
  t.ok(carried > 250, `most memberships carried their change (${carried} of 300)`)
})

t.test('the pool applies the change it is given, and walks the set when the change does not follow what it holds', async t => {
  const { pool } = build()
  const [a, b, c, d] = [inst('a', 1), inst('b', 2), inst('c', 3), inst('d', 4)]
  pool.update(membership(a, b))
  const keys = (): string[] => [...pool.endpoints()].map(e => e.instance.id)
  // The source vouches for the change, so the pool does not look past it: here, at a d listed instead of c.
  pool.update({ ...membership(a, b, d), change: { added: [c], removed: [] } })
  t.same(keys(), ['a', 'b', 'c'], 'the change alone is applied')
  pool.update({ ...membership(a, d), change: { added: [], removed: [b] } })
  t.same(keys(), ['a', 'c'])
  revision++
  pool.update({ ...membership(c, d), change: { added: [], removed: [a] } })
  t.same(keys(), ['c', 'd'], 'a revision was skipped: the whole set is walked')
  pool.update({ ...membership(a, d), change: { added: [a], removed: [b] } })
  t.same(keys(), ['a', 'd'], 'b is not in the pool: the whole set is walked')
  const again = inst('a', 1)
  pool.update({ ...membership(a, again, d), change: { added: [again], removed: [] } })
  t.same(keys(), ['a', 'd'], 'a second a@127.0.0.1:1 (listed twice): the whole set is walked, and it is one endpoint')
  pool.update({ ...membership(a, d), change: { added: [], removed: [again] } })
  t.same(keys(), ['a', 'd'], 'after a set with an instance listed twice, the set is walked: one a is still listed')
})
