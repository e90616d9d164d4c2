// Time that matters to behaviour runs on the monotonic clock: a wall-clock step neither stretches nor
// cuts short an ejection, and never stalls the agent's health checks.

import t from 'tap'
import { HealthChecker, RiseFall } from '../../src/agent/health-check.ts'
import { Pool } from '../../src/balancer/pool.ts'
import { silentLogger } from '../../src/logger.ts'
import { StaticSource } from '../../src/membership/static.ts'
import { createProxy } from '../../src/proxy/server.ts'
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

t.test('/status shows when an instance changed on the wall clock as it reads now', async t => {
  const clock = steppableWallClock(t)
  const proxy = createProxy({
    service: 's', listen: '127.0.0.1:0', adminListen: undefined, connectTimeoutMs: 1000, headersTimeoutMs: 1000,
    idleTimeoutMs: 1000, clientKeepAliveTimeoutMs: 1000, tries: 2, ejectBaseMs: 1000, ejectMaxMs: 1000, ejectAfterErrors: 0, panicThresholdPercent: 50,
    shutdownTimeoutMs: 100, maxHeaderBytes: 16_384, maxConnectionsPerInstance: 0, queueTimeoutMs: 1000, slowStartMs: 0, accessLog: 'off',
  }, new StaticSource('s', [inst('a', 9)]), silentLogger)
  t.teardown(() => proxy.close())
  await proxy.listen()
  await eventually(() => proxy.status().instances.length === 1, { message: 'the membership' })
  const before = Date.parse(proxy.status().instances[0]!.changedAt)
  t.ok(Math.abs(Date.now() - before) < 5000, 'joined just now')
  clock.step(-HOUR_MS)
  const after = Date.parse(proxy.status().instances[0]!.changedAt)
  t.ok(Math.abs(after - (before - HOUR_MS)) < 1000, `an hour earlier, as the clock now says (${new Date(before).toISOString()} then ${new Date(after).toISOString()})`)
  t.equal(proxy.status().instances[0]!.state, 'up')
})
