// End to end: `--workers 2` serves the port from two processes that follow ONE ZooKeeper session held by
// the primary; /status and /metrics add up what the workers did.

import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { get, registerCurator, removeNode, sample, startBackend, startProxy, zkClient } from '../helpers/fleet.ts'
import { fourLetterWord, startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

const aliveConnections = async (): Promise<number> =>
  Number(/zk_num_alive_connections\s+(\d+)/.exec(await fourLetterWord(server.port, 'mntr'))?.[1])

t.test('two workers, one ZooKeeper session, merged status and metrics', async t => {
  const client = await zkClient(t, server.connectString)
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map(n => startBackend(t, n)))
  for (const backend of [a!, b!]) await registerCurator(client, { service: 'workers', id: backend.name, port: backend.port })
  const before = await aliveConnections()

  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'workers', '--workers', '2'])
  await eventually(() => proxy.ready(), { timeoutMs: 20_000 })
  t.equal(await aliveConnections(), before + 1, 'one ZooKeeper connection for the whole proxy')

  const served: Record<string, number> = {}
  for (let i = 0; i < 60; i++) {
    const res = await get(proxy.url, `/n/${i}`)
    t.equal(res.status, 200)
    served[res.servedBy!] = (served[res.servedBy!] ?? 0) + 1
  }
  t.ok(served.a! > 0 && served.b! > 0, `both instances served: ${JSON.stringify(served)}`)
  const status = await proxy.status()
  t.equal(status.instances.reduce((sum, i) => sum + i.requests, 0), 60, '/status adds up every worker')
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '200' }), 60, '/metrics adds up every worker')
  t.equal(sample(metrics, 'fleetgate_membership_changes_total'), 1, 'discovery metrics come from the primary alone')
  t.equal(sample(metrics, 'fleetgate_instances', { state: 'up' }), 2, 'membership gauges are not multiplied by workers')

  await registerCurator(client, { service: 'workers', id: 'c', port: c!.port })
  await removeNode(client, '/services/workers/a')
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === 'b,c')
  const after = new Set<string>()
  for (let i = 0; i < 20; i++) after.add((await get(proxy.url)).servedBy!)
  t.same([...after].sort(), ['b', 'c'], 'every worker follows the change')

  proxy.kill('SIGTERM')
  t.same(await proxy.exited, { code: 0, signal: null }, 'a clean shutdown of primary and workers')
})
