// End to end on a real three-server ZooKeeper ensemble, as production runs it: a server that dies (the
// leader among them) moves its clients to the others with their sessions and watches, so does a server
// that hangs (its clients' watchdogs leave it), and an ensemble that loses its quorum leaves the proxy
// serving on its last membership. The pool never empties.

import t, { type Test } from 'tap'
import { children, readNode, startAgent, startHealthBackend } from '../helpers/agent.ts'
import { eventually } from '../helpers/eventually.ts'
import { expectPoolNeverEmpty, loadLoop, sample, startProxy, zkClient } from '../helpers/fleet.ts'
import { startEnsemble } from '../helpers/zookeeper-ensemble.ts'

const SESSION = ['--session-timeout-ms', '4000']

/**
 * A ZooKeeper ensemble; instances a and b, each registered by its agent; a proxy following them, with both
 * up. `up()` counts the instances the proxy has up.
 */
async function ensembleFleet (t: Test, service: string, options: { leaderServes?: boolean } = {}) {
  const ensemble = await startEnsemble(3, options)
  t.teardown(() => ensemble.close())
  const [a, b] = await Promise.all(['a', 'b'].map(name => startHealthBackend(t, name)))
  const agents = await Promise.all([a!, b!].map(backend => startAgent(t, { zookeeper: ensemble.connectString, service, port: backend.port, args: SESSION })))
  const proxy = await startProxy(t, ['--zookeeper', ensemble.connectString, '--service', service, ...SESSION])
  const up = async (): Promise<number> => (await proxy.status()).instances.filter(i => i.state === 'up').length
  await eventually(async () => await up() === 2, { timeoutMs: 20_000, message: 'both instances up' })
  return { ensemble, a: a!, b: b!, agents, proxy, up }
}

t.test('each ZooKeeper server killed in turn, the leader too: clients move on with their sessions, and every change is followed', async t => {
  const { ensemble, b, agents, proxy, up } = await ensembleFleet(t, 'ensemble')

  const reader = await zkClient(t, ensemble.connectString)
  /** Each registration's znode and the session that holds it. */
  const owners = async (): Promise<Record<string, string | undefined>> => Object.fromEntries(await Promise.all(
    (await children(reader, '/services/ensemble')).map(async id => [id, (await readNode(reader, `/services/ensemble/${id}`))?.stat.ephemeralOwner.toString('hex')]),
  ))
  const before = await owners()
  t.equal(Object.keys(before).length, 2)

  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 150_000, pauseMs: 2 })
  t.teardown(() => load.stop())
  const leader = await ensemble.leader()
  // The leader first; then the others, one of which the proxy is on, whichever it picked.
  for (const member of [leader, ...ensemble.members.filter(m => m !== leader)]) {
    await member.kill()
    // A change while the server is down goes through the two left: b fails its check and leaves, then
    // passes and comes back.
    b.healthy = false
    await eventually(async () => (await proxy.status()).instances.length === 1, { timeoutMs: 20_000, message: `b's leaving followed with server ${member.id} down` })
    b.healthy = true
    await eventually(async () => await up() === 2, { timeoutMs: 20_000, message: `b's return followed with server ${member.id} down` })
    await member.start()
  }

  t.same(await owners(), before, 'every registration is held by the session it began with: none expired')
  t.equal(sample(await proxy.metrics(), 'fleetgate_zookeeper_session_expirations_total'), 0, 'the proxy kept its session')
  for (const agent of agents) {
    t.equal(sample(await agent.metrics(), 'fleetgate_zookeeper_session_expirations_total'), 0, 'and each agent its own')
  }
  t.notOk((await proxy.status()).source.stale, 'the proxy follows the ensemble')
  await expectPoolNeverEmpty(t, proxy, load, 'after three servers were killed in turn')
})

t.test('the server each client is on hung (SIGSTOP) past the session timeout: the client resumes its session on another, and the pool never empties', async t => {
  // Clients on followers only: a hung leader would stop the whole ensemble, as a lost quorum does (below).
  const { ensemble, b, agents, proxy, up } = await ensembleFleet(t, 'hung', { leaderServes: false })
  const sessions = async (): Promise<Array<string | undefined>> => await Promise.all(agents.map(async agent => (await agent.status()).registration.session))
  const before = await sessions()
  const proxySession = [...proxy.output().matchAll(/"sessionId":"([0-9a-f]+)"/g)].at(-1)![1]!
  const watchdog = /zookeeper watchdog fired: trying the next server with the same session/g

  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 150_000, pauseMs: 2 })
  t.teardown(() => load.stop())
  const clients = [{ name: 'the proxy', session: proxySession, process: proxy }, ...agents.map((agent, i) => ({ name: `agent ${i + 1}`, session: before[i]!, process: agent }))]
  for (const client of clients) {
    const member = await ensemble.holding(client.session)
    const fired = client.process.output().match(watchdog)?.length ?? 0
    member.pause()
    t.teardown(() => member.resume())
    const hungAt = Date.now()
    await eventually(() => (client.process.output().match(watchdog)?.length ?? 0) > fired, { message: `${client.name}'s watchdog fired on server ${member.id}` })
    // A change while the server is hung: b fails its check and leaves, then passes and comes back.
    b.healthy = false
    await eventually(async () => (await proxy.status()).instances.length === 1, { timeoutMs: 20_000, message: `b's leaving followed with server ${member.id} hung` })
    b.healthy = true
    await eventually(async () => await up() === 2, { timeoutMs: 20_000, message: `b's return followed with server ${member.id} hung` })
    // Longer than the sessions' timeout: a client still waiting on the hung server would have lost its session.
    await eventually(() => Date.now() - hungAt >= 6_000, { timeoutMs: 10_000, intervalMs: 200 })
    member.resume()
    await eventually(async () => (await member.mode()) !== undefined, { timeoutMs: 20_000, message: `server ${member.id} serving again` })
  }
  await eventually(async () => await up() === 2 && !(await proxy.status()).source.stale, { timeoutMs: 20_000, message: 'both up, and the proxy following' })
  t.notMatch(proxy.output(), /zookeeper session lost/, 'the proxy kept its session')
  t.same(await sessions(), before, 'each agent kept its session, and its znode')
  t.equal(sample(await proxy.metrics(), 'fleetgate_zookeeper_session_expirations_total'), 0)
  await expectPoolNeverEmpty(t, proxy, load, 'after the server of each client hung')
})

t.test('the ensemble loses its quorum: the proxy serves on its last membership, then follows changes again', async t => {
  const { ensemble, a, proxy, up } = await ensembleFleet(t, 'quorum')
  const c = await startHealthBackend(t, 'c')

  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 120_000, pauseMs: 2 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok > 100)
  // Two of three down: the last one stops serving, and every client loses its connection.
  const [first, second] = ensemble.members
  await first!.kill()
  await second!.kill()
  await eventually(async () => (await proxy.status()).source.stale, { timeoutMs: 20_000, message: 'the proxy sees its membership go stale' })
  // Longer than the sessions' timeout: no server can expire them without a quorum, and the pool stays.
  const lost = Date.now()
  await eventually(() => Date.now() - lost >= 6_000, { timeoutMs: 10_000, intervalMs: 200 })
  const status = await proxy.status()
  t.same(status.instances.map(i => i.state), ['up', 'up'], 'the last membership serves while there is no quorum')

  await first!.start()
  await second!.start()
  await eventually(async () => !(await proxy.status()).source.stale, { timeoutMs: 30_000, message: 'fresh once the quorum is back' })
  // Registered again (or never lost) and followed: a new instance joins, and one leaves.
  await startAgent(t, { zookeeper: ensemble.connectString, service: 'quorum', port: c.port, args: SESSION })
  await eventually(async () => await up() === 3, { timeoutMs: 20_000, message: 'c joins after the quorum is back' })
  a.healthy = false
  await eventually(async () => (await proxy.status()).instances.length === 2, { timeoutMs: 20_000, message: 'a leaves after the quorum is back' })
  await expectPoolNeverEmpty(t, proxy, load, 'through the loss of the quorum')
})
