// End to end under load: SIGTERM drains an instance without a failed request, and a fleet scaled from 2 to
// 5 to 1 shares requests by its current membership at every step. Real ZooKeeper, agents and proxy.

import t from 'tap'
import { startAgent, startHealthBackend, steadyLoad, type AgentProcess, type HealthBackend } from '../helpers/agent.ts'
import { eventually } from '../helpers/eventually.ts'
import { startProxy, type ProxyProcess } from '../helpers/fleet.ts'
import { startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

const idOf = (backend: HealthBackend): string => `127.0.0.1-${backend.port}`
/** Health checks that a busy test process (load generator and backends in one) does not fail by accident. */
const STEADY = ['--health-timeout-ms', '2000', '--fall', '5']

/** Waits until the proxy's pool is exactly these instances, all up. */
async function membershipIs (proxy: ProxyProcess, backends: HealthBackend[], timeoutMs = 30_000): Promise<void> {
  const want = backends.map(idOf).sort().join(',')
  await eventually(async () => {
    const instances = (await proxy.status()).instances
    return instances.every(i => i.state === 'up') && instances.map(i => i.id).sort().join(',') === want
  }, { timeoutMs, intervalMs: 10, message: `membership ${backends.map(b => b.name).join(',')}` })
}

t.test('drain under load: SIGTERM one agent, no request fails, it exits 0, and gets no new request once draining', async t => {
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'drain'])
  // Each request takes 50 to 500 ms at the backend.
  const slow = (): number => 50 + Math.floor(Math.random() * 450)
  const [a, b] = await Promise.all([startHealthBackend(t, 'a', slow), startHealthBackend(t, 'b', slow)]) as [HealthBackend, HealthBackend]
  const [agentA] = await Promise.all([a, b].map(backend => startAgent(t, { zookeeper: server.connectString, service: 'drain', port: backend.port, args: ['--drain-ms', '1500', ...STEADY] }))) as [AgentProcess, AgentProcess]
  await membershipIs(proxy, [a, b])

  const load = steadyLoad(proxy.url, { ratePerSecond: 200, maxMs: 30_000, maxRequests: 6000 })
  t.teardown(() => load.stop())
  await eventually(() => a.arrivals.length > 100 && b.arrivals.length > 100, { timeoutMs: 30_000, message: 'load reaches both' })

  agentA.kill('SIGTERM')
  // The moment the proxy applied draining for a: its status says so, with the time of the change.
  const drainingAt = (await eventually(async () => {
    const instance = (await proxy.status()).instances.find(i => i.id === idOf(a))
    return instance?.state === 'draining' ? Date.parse(instance.changedAt) : undefined
  }, { intervalMs: 5, timeoutMs: 30_000, message: 'proxy sees a draining' }))!
  const inFlightAtA = a.arrivals.filter(r => r.arrivedAt <= drainingAt).length - a.arrivals.filter(r => r.arrivedAt <= drainingAt - 500).length
  const { code } = await agentA.exited
  const exitedAt = Date.now()
  t.equal(code, 0, 'agent exits 0')
  await membershipIs(proxy, [b])
  // Keep the load on past the drain, then let every request finish.
  await eventually(() => Date.now() - exitedAt > 500)
  const result = await load.stop()

  const lateAtA = a.arrivals.filter(r => r.sentAt > drainingAt)
  const lastSentToA = Math.max(...a.arrivals.map(r => r.sentAt))
  t.comment(`load: ${result.sent} requests at 200/s, ${result.ok} ok, ${result.failed} failed; served ${JSON.stringify(result.byInstance)}`)
  t.comment(`a: last request sent ${lastSentToA - drainingAt} ms relative to draining; about ${inFlightAtA} arrived in the 500 ms before it`)
  t.equal(result.failed, 0, `no failed request: ${result.errors.join('; ')}`)
  t.equal(result.ok, result.sent)
  t.equal(lateAtA.length, 0, 'no request sent after the proxy saw draining reached a')
  t.ok(result.byInstance.a! > 100 && result.byInstance.b! > 100)
})

t.test('scale under load: 2 -> 5 -> 1 with SIGTERMs; no request fails and requests follow the current membership', async t => {
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'scale'])
  const quick = (): number => 5 + Math.floor(Math.random() * 20)
  const backends = await Promise.all(['s1', 's2', 's3', 's4', 's5'].map(n => startHealthBackend(t, n, quick)))
  const agents = new Map<HealthBackend, AgentProcess>()
  const add = async (list: HealthBackend[]): Promise<void> => {
    await Promise.all(list.map(async backend => {
      agents.set(backend, await startAgent(t, { zookeeper: server.connectString, service: 'scale', port: backend.port, args: ['--drain-ms', '500', ...STEADY] }))
    }))
  }

  const shares: string[] = []
  let load: ReturnType<typeof steadyLoad>

  /**
   * With the membership stable, the requests sent in the next 1.5 s go only to its members, in about
   * equal shares. A window in which the membership changed (a health check lost to a busy machine) is
   * not a step of the scale-down: it is measured again.
   */
  const checkShare = async (members: HealthBackend[]): Promise<void> => {
    for (let attempt = 1; ; attempt++) {
      await membershipIs(proxy, members)
      const from = Date.now()
      await eventually(() => Date.now() - from >= 1500, { timeoutMs: 5000 })
      const to = Date.now()
      const instances = (await proxy.status()).instances
      const stable = instances.length === members.length && instances.every(i => i.state === 'up' && Date.parse(i.changedAt) < from)
      if (!stable && attempt < 3) {
        t.comment(`membership changed during the window for ${members.length}; measuring again`)
        continue
      }
      t.ok(stable, `membership of ${members.length} stable through the window`)
      await eventually(() => load.oldestRunningSentAt() >= to, { timeoutMs: 30_000, message: 'requests of the window answered' })
      const counts = backends.map(backend => backend.arrivals.filter(r => r.sentAt >= from && r.sentAt < to).length)
      const total = counts.reduce((x, y) => x + y, 0)
      shares.push(`${members.length}: ${backends.map((backend, i) => `${backend.name}=${counts[i]}`).join(' ')}`)
      backends.forEach((backend, i) => {
        if (!members.includes(backend)) t.equal(counts[i], 0, `${backend.name} is not a member and gets nothing`)
      })
      const fair = total / members.length
      for (const member of members) {
        const count = counts[backends.indexOf(member)]!
        t.ok(Math.abs(count - fair) <= Math.max(3, fair * 0.2), `${member.name}: ${count} of ${total} with ${members.length} members`)
      }
      return
    }
  }

  await add(backends.slice(0, 2))
  await membershipIs(proxy, backends.slice(0, 2))
  load = steadyLoad(proxy.url, { ratePerSecond: 200, maxMs: 120_000, maxRequests: 24_000 })
  t.teardown(() => load.stop())
  await checkShare(backends.slice(0, 2))
  await add(backends.slice(2))
  await checkShare(backends)
  for (let i = 0; i < 4; i++) {
    const agent = agents.get(backends[i]!)!
    agent.kill('SIGTERM')
    t.equal((await agent.exited).code, 0, `agent of ${backends[i]!.name} exits 0`)
    await checkShare(backends.slice(i + 1))
  }
  const result = await load.stop()
  t.comment(`shares per step: ${shares.join(' | ')}`)
  t.comment(`load: ${result.sent} requests at 200/s, ${result.ok} ok, ${result.failed} failed`)
  t.equal(result.failed, 0, `no failed request: ${result.errors.join('; ')}`)
  t.equal(result.ok, result.sent)
})
