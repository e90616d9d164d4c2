// End to end: ZooKeeper trouble. The agent's znode comes back after an outage and after a forced session
// expiry, an agent started while ZooKeeper is down waits for it and says so, and a hung ZooKeeper is named as such.

import { createServer, type AddressInfo, type Socket } from 'node:net'
import t from 'tap'
import { children, readNode, startAgent, startHealthBackend } from '../helpers/agent.ts'
import { eventually } from '../helpers/eventually.ts'
import { expectPoolNeverEmpty, loadLoop, sample, startProxy, zk, zkClient } from '../helpers/fleet.ts'
import { fourLetterWord, freePort, startZooKeeper } from '../helpers/zookeeper.ts'

t.test('after a 10 s ZooKeeper outage the znode is present again', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const backend = await startHealthBackend(t, 'o')
  const path = `/services/outage/127.0.0.1-${backend.port}`
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'outage', port: backend.port })
  {
    const client = await zkClient(t, server.connectString)
    await eventually(() => readNode(client, path), { message: 'registered' })
    client.close()
  }

  await server.stop()
  const stoppedAt = Date.now()
  // The outage lasts 10 s; meanwhile the agent must notice it and keep trying.
  await eventually(async () => {
    const status = await agent.status()
    return !status.registration.connected && Date.now() - stoppedAt >= 10_000
  }, { timeoutMs: 15_000, intervalMs: 250, message: '10 s of outage' })
  t.equal(sample(await agent.metrics(), 'fleetgate_agent_registry_connected'), 0)
  t.match(agent.output(), /"lastError":"connect ECONNREFUSED 127\.0\.0\.1:\d+","msg":"waiting for ZooKeeper; still trying"/, 'the log says why')
  t.match((await agent.status()).registration.lastError, /ECONNREFUSED/, 'and so does /status')

  await server.start()
  const backAt = Date.now()
  const client = await zkClient(t, server.connectString)
  const node = (await eventually(() => readNode(client, path), { timeoutMs: 15_000, message: 'znode back after the outage' }))!
  t.comment(`ZooKeeper back -> znode present: ${Date.now() - backAt} ms`)
  // It may first be the old session's node, reloaded by the server; it must end up held by the agent's session.
  await eventually(async () => {
    const [status, current] = [await agent.status(), await readNode(client, path)]
    return status.registration.registered && current?.stat.ephemeralOwner.toString('hex') === status.registration.session
  }, { timeoutMs: 15_000, message: 'znode held by the agent\'s current session' })
  t.comment(`ZooKeeper back -> znode held by the agent's current session: ${Date.now() - backAt} ms`)
  t.equal(JSON.parse(node.data.toString()).payload.state, 'up')
  t.same(await children(client, '/services/outage'), [`127.0.0.1-${backend.port}`])
  await eventually(async () => sample(await agent.metrics(), 'fleetgate_agent_registry_connected') === 1)
  t.equal((await agent.status()).registration.lastError, undefined, 'connected, the reason is gone')
})

t.test('after a forced session expiry (agent stopped past its session timeout) the znode is back within 2 s', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const client = await zkClient(t, server.connectString)
  const backend = await startHealthBackend(t, 'x')
  const path = `/services/expiry/127.0.0.1-${backend.port}`
  // 4 s, not 2: the new session's handshake must fit in the session timeout even when ZooKeeper's fsync is slow.
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'expiry', port: backend.port, args: ['--session-timeout-ms', '4000'] })
  const before = (await eventually(() => readNode(client, path), { message: 'registered' }))!

  process.kill(agent.pid, 'SIGSTOP')
  t.teardown(() => { try { process.kill(agent.pid, 'SIGCONT') } catch {} })
  // ZooKeeper expires the silent session and its znode with it.
  await eventually(async () => (await readNode(client, path)) === undefined, { timeoutMs: 15_000, intervalMs: 50, message: 'session expired' })
  process.kill(agent.pid, 'SIGCONT')
  const resumedAt = Date.now()

  const after = (await eventually(() => readNode(client, path), { timeoutMs: 10_000, intervalMs: 10, message: 're-registered' }))!
  const backMs = Date.now() - resumedAt
  t.comment(`agent resumed after its session expired -> znode re-created: ${backMs} ms`)
  t.ok(backMs < 2000, `re-created ${backMs} ms after the agent could reconnect`)
  t.notOk(after.stat.ephemeralOwner.equals(before.stat.ephemeralOwner), 'owned by a new session')
  t.equal(after.stat.ephemeralOwner.toString('hex'), (await agent.status()).registration.session, 'the agent\'s current one')
  t.same(await children(client, '/services/expiry'), [`127.0.0.1-${backend.port}`])
  await eventually(async () => sample(await agent.metrics(), 'fleetgate_zookeeper_session_expirations_total') >= 1, { message: 'expiry counted' })
})

t.test('ZooKeeper down at start: the agent waits, says so, and registers once ZooKeeper comes up', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  await server.stop()
  const backend = await startHealthBackend(t, 'late')
  const path = `/services/late/127.0.0.1-${backend.port}`
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'late', port: backend.port })
  await agent.waitForOutput(/waiting for ZooKeeper; still trying/)
  t.equal((await agent.status()).health, 'healthy', 'health checks run meanwhile')

  await server.start()
  const client = await zkClient(t, server.connectString)
  // Within a session timeout (10 s) even if the first handshake was caught by the restart and abandoned.
  await eventually(() => readNode(client, path), { timeoutMs: 30_000, message: 'registered once ZooKeeper is up' })
  agent.kill('SIGTERM')
  t.equal((await agent.exited).code, 0)
})

t.test('a chroot that does not exist: the agent says so, backs off, and registers once it is made', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const backend = await startHealthBackend(t, 'rooted')
  const packets = async (): Promise<number> => Number(/zk_packets_received\s+(\d+)/.exec(await fourLetterWord(server.port, 'mntr'))?.[1])
  const agent = await startAgent(t, { zookeeper: `${server.connectString}/prod`, service: 'rooted', port: backend.port })
  await agent.waitForOutput(/"retryMs":250,.*"registration write failed; will retry"/, 30_000)
  const atFirstFailure = await packets()
  // Each retry waits twice as long as the one before: 250, 500, 1000, then 2000 ms; the agent's checks
  // of its znode (every 100 ms here) wait for the retry.
  await agent.waitForOutput(/"retryMs":2000,.*"registration write failed; will retry"/, 30_000)
  const spent = await packets() - atFirstFailure
  t.ok(spent < 60, `${spent} ZooKeeper requests over three retries, not a loop`)
  const failures = agent.output().split('\n').filter(line => line.includes('"registration write failed; will retry"')).map(line => JSON.parse(line) as { time: number, retryMs: number })
  t.same(failures.slice(0, 4).map(f => f.retryMs), [250, 500, 1000, 2000])
  t.ok(failures[3]!.time - failures[0]!.time >= 1_700, `the fourth try came ${failures[3]!.time - failures[0]!.time} ms after the first: the back-off held`)
  t.match(agent.output(), /a node above it is missing \(the connect string's chroot\?\)/, 'the log names the likely cause')
  t.match((await agent.status()).registration.lastError, /chroot/, 'and so does /status')

  const client = await zkClient(t, server.connectString)
  await zk<string>(cb => client.create('/prod', cb))
  const path = `/prod/services/rooted/127.0.0.1-${backend.port}`
  // The back-off is at most 10 s.
  await eventually(() => readNode(client, path), { timeoutMs: 30_000, message: 'registered once the chroot exists' })
  await eventually(async () => (await agent.status()).registration.lastError === undefined, { message: 'lastError cleared' })
  agent.kill('SIGTERM')
  t.equal((await agent.exited).code, 0)
})

t.test('two agents with one id: the second says so and leaves the first one\'s znode alone', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const client = await zkClient(t, server.connectString)
  const [serving, failing] = await Promise.all([startHealthBackend(t, 'twin-up'), startHealthBackend(t, 'twin-down')])
  failing.healthy = false
  const path = '/services/twins/twin'
  await startAgent(t, { zookeeper: server.connectString, service: 'twins', port: serving.port, args: ['--id', 'twin'] })
  await eventually(() => readNode(client, path), { message: 'the first agent registered' })

  // The second one's instance fails its checks: it wants no registration, and finds the first one's node.
  const second = await startAgent(t, { zookeeper: server.connectString, service: 'twins', port: failing.port, args: ['--id', 'twin'] })
  await second.waitForOutput(/another agent holds this instance id/, 15_000)
  const settled = (await readNode(client, path))!
  const checks = async (): Promise<number> => sample(await second.metrics(), 'fleetgate_agent_health_checks_total')
  const before = await checks()
  await eventually(async () => await checks() >= before + 5, { message: 'five more checks of the failing instance' })
  const after = await readNode(client, path)
  t.ok(after, 'the first agent\'s znode is there')
  t.equal(after!.stat.czxid.toString('hex'), settled.stat.czxid.toString('hex'), 'and was not deleted and created again meanwhile')
  t.equal(JSON.parse(after!.data.toString()).port, serving.port, 'it is the serving instance\'s')
})

t.test('ZooKeeper out of reach, so nothing registered: SIGTERM exits at once, without a drain', async t => {
  const nothing = await freePort()
  const backend = await startHealthBackend(t, 'unreached')
  const agent = await startAgent(t, { zookeeper: `127.0.0.1:${nothing}`, service: 'unreached', port: backend.port, args: ['--drain-ms', '30000'] })
  await eventually(async () => {
    const status = await agent.status()
    return status.health === 'healthy' && status.registration.desired.kind === 'registered'
  }, { message: 'healthy, and its registration asked for' })
  t.equal((await agent.status()).registration.registered, false, 'but not registered')
  const { code, ms } = await agent.stop()
  t.equal(code, 0)
  t.ok(ms < 5000, `exited in ${ms} ms, not after the 30 s drain`)
  t.equal(agent.logLines('not registered: nothing to drain'), 1)
  t.equal(agent.logLines('draining: no new requests; in-flight ones finish'), 0)
})

t.test('registered, then ZooKeeper out of reach: SIGTERM says the draining state was not written, rather than claim a drain', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const backend = await startHealthBackend(t, 'unwritten')
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'unwritten', port: backend.port, args: ['--drain-ms', '500'] })
  await eventually(async () => (await agent.status()).registration.registered, { message: 'registered' })
  await server.stop()
  await eventually(async () => !(await agent.status()).registration.connected, { message: 'the agent sees ZooKeeper gone' })
  const { code } = await agent.stop()
  t.equal(code, 0)
  t.equal(agent.logLines('draining: no new requests; in-flight ones finish'), 0, 'no drain claimed')
  t.equal(agent.logLines('draining not written: the registry still says up; waiting the drain anyway'), 1)
  // Refused, or reset while the server was going: whichever the last try met.
  t.match(agent.output(), /"connected":false,"lastError":"connect (ECONNREFUSED|ECONNRESET) [^"]*","msg":"draining not written/, 'with why')
})

t.test('a ZooKeeper that takes connections and never answers: the agent says its handshake got no answer', async t => {
  // Hung as a stopped server is, with its port open: the connection opens, the handshake is never answered.
  const sockets = new Set<Socket>()
  const hung = createServer(socket => { sockets.add(socket) })
  t.teardown(() => { for (const socket of sockets) socket.destroy(); hung.close() })
  await new Promise<void>(resolve => hung.listen(0, '127.0.0.1', resolve))
  const backend = await startHealthBackend(t, 'hung-zk')
  const agent = await startAgent(t, {
    zookeeper: `127.0.0.1:${(hung.address() as AddressInfo).port}`, service: 'hung-zk', port: backend.port,
    args: ['--session-timeout-ms', '2000'],
  })
  // One host: each handshake may take the whole session timeout, then the host is tried again.
  await eventually(async () => /^no answer to the handshake within 2000 ms$/.test((await agent.status()).registration.lastError ?? ''),
    { timeoutMs: 15_000, message: '/status says why' })
  await eventually(() => sockets.size >= 2, { timeoutMs: 10_000, message: 'the host is tried again after a silent handshake' })
  t.equal((await agent.stop()).code, 0)
})

t.test('ZooKeeper hung past the agent\'s watchdog deadline but not its session: the registration never leaves the membership', async t => {
  const server = await startZooKeeper()
  t.teardown(async () => { if (server.running) server.resume(); await server.close() })
  const backend = await startHealthBackend(t, 'h')
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'hung', port: backend.port, args: ['--session-timeout-ms', '2000'] })
  // The proxy keeps its session (10 s) through the hang, so it sees every change the agent's brings.
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'hung'])
  await eventually(async () => (await proxy.status()).instances.length === 1, { message: 'the proxy follows the instance' })
  const before = (await agent.status()).registration.session
  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 30_000, pauseMs: 2 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok > 50, { message: 'traffic flows' })

  server.pause()
  await agent.waitForOutput(/zookeeper watchdog fired: trying the next server with the same session/, 10_000)
  server.resume()
  // The only server wakes before the session's timeout: the client, trying it again, resumes the session.
  await eventually(async () => {
    const { registration } = await agent.status()
    return registration.registered && registration.session === before
  }, { timeoutMs: 15_000, message: 'registered on the same session' })
  t.notMatch(agent.output(), /zookeeper session lost/, 'no new session was built')
  await expectPoolNeverEmpty(t, proxy, load, 'after the hang')
})
