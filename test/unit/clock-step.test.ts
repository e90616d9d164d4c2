// Time that matters to behaviour runs on the monotonic clock: a wall-clock step neither stretches nor
// cuts short an ejection, and never stalls the agent's health checks.

import t from 'tap'
import { HealthChecker, RiseFall } from '../../src/agent/health-check.ts'
import { Pool } from '../../src/balancer/pool.ts'
import type { Instance } from '../../src/membership/instance.ts'
import { steppableWallClock } from '../helpers/clock.ts'
import { eventually } from '../helpers/eventually.ts'

const HOUR_MS = 3_600_000
const inst = (id: string, port: number): Instance => ({ id, host: '127.0.0.1', port, state: 'up', weight: 1, labels: {} })

function twoInstances (ejectBaseMs: number) {
  const pool = new Pool({ service: 's', ejectBaseMs, ejectMaxMs: ejectBaseMs, panicThresholdPercent: 0 })
  pool.update({ service: 's', instances: [inst('a', 1), inst('b', 2)], revision: 1, changedAtMs: Date.now() })
  const b = [...pool.endpoints()].find(e => e.instance.id === 'b')!
  const picks = (n: number) => Array.from({ length: n }, () => pool.pick()?.instance.id)
  return { pool, b, picks }
}

t.test('an ejection set before the clock goes back an hour still runs out on time', async t => {
  const clock = steppableWallClock(t)
  const { pool, b, picks } = twoInstances(200)
  pool.reportConnectFailure(b)
  t.equal(b.state(pool.now()), 'ejected')
  clock.step(-HOUR_MS)
  t.notOk(picks(4).includes('b'), 'still out right after the step')
  await eventually(() => picks(2).includes('b'), { timeoutMs: 3000, message: 'b back after its 200 ms' })
  t.equal(pool.counts().ejected, 0)
})

t.test('an ejection is not cut short by the clock jumping an hour ahead', async t => {
  const clock = steppableWallClock(t)
  const { pool, b, picks } = twoInstances(60_000)
  pool.reportConnectFailure(b)
  clock.step(HOUR_MS)
  t.equal(b.state(pool.now()), 'ejected')
  t.notOk(picks(4).includes('b'), 'b stays out for its minute')
  t.same(pool.counts(), { up: 1, draining: 0, ejected: 1 })
})

t.test('the health checks keep their interval when the clock goes back an hour', async t => {
  const clock = steppableWallClock(t)
  let probes = 0
  const checker = new HealthChecker({
    intervalMs: 50,
    riseFall: new RiseFall({ rise: 1, fall: 1 }),
    probe: async () => {
      // The step comes while the first probe runs, between its start and the wait for the next.
      if (++probes === 1) clock.step(-HOUR_MS)
      return { ok: true, detail: 'HTTP 200', durationMs: 0 }
    },
    onResult: () => {},
  })
  checker.start()
  t.teardown(() => checker.stop())
  await eventually(() => probes >= 4, { timeoutMs: 3000, message: 'probes go on every 50 ms' })
  t.equal(checker.health, 'healthy')
})
