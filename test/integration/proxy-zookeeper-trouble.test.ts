// End to end: ZooKeeper outages, hung servers, expired sessions and a late ZooKeeper never empty the pool.

import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { connect as connectTcp, createServer, type AddressInfo, type Socket } from 'node:net'
import t from 'tap'
import { expiredSessions, startAgent, startHealthBackend } from '../helpers/agent.ts'
import { eventually } from '../helpers/eventually.ts'
import { createChild, curatorData, expectPoolNeverEmpty, get, loadLoop, registerCurator, removeNode, sample, startBackend, startProxy, zk, zkClient } from '../helpers/fleet.ts'
import { startRelay } from '../helpers/tcp-relay.ts'
import { startZooKeeper } from '../helpers/zookeeper.ts'

t.test('ZooKeeper stopped for 10 s under traffic: every request succeeds on the last membership', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const writer = await zkClient(t, server.connectString, 30_000)
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map(n => startBackend(t, n)))
  // Persistent znodes: the outage must not change the registry itself, only the proxy's view of it.
  for (const [id, backend] of [['a', a!], ['b', b!]] as const) {
    await createChild(writer, '/services/outage', id, curatorData({ service: 'outage', id, port: backend.port }), false)
  }
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'outage', '--session-timeout-ms', '2000'])
  await eventually(async () => (await proxy.status()).instances.length === 2)

  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 60_000, pauseMs: 1 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok > 100)
  await server.stop()
  const outageStarted = Date.now()
  await eventually(async () => (await proxy.status()).source.stale, { message: 'stale while ZooKeeper is down' })
  const metricsDuringOutage = await proxy.metrics()
  t.equal(sample(metricsDuringOutage, 'fleetgate_discovery_stale'), 1)
  t.equal(sample(metricsDuringOutage, 'fleetgate_discovery_connected'), 0)
  await eventually(() => Date.now() - outageStarted >= 10_000, { timeoutMs: 15_000, intervalMs: 200 })
  const during = { ...load.result }
  t.equal((await proxy.status()).instances.length, 2, 'membership kept through the outage')
  await server.start()

  await eventually(async () => !(await proxy.status()).source.stale, { timeoutMs: 20_000, message: 'fresh again after restart' })
  const writerAfter = await zkClient(t, server.connectString)
  await registerCurator(writerAfter, { service: 'outage', id: 'c', port: c!.port })
  await eventually(async () => (await get(proxy.url)).servedBy === 'c', { message: 'a change after the restart is followed' })
  const result = await load.stop()
  t.equal(result.failed, 0, `no failed request (${result.errors.join('; ')})`)
  t.ok(result.ok > during.ok, 'traffic flowed through the outage')
  t.comment(`${result.ok} requests, ${during.ok} of them before the restart, 0 failed`)
})

t.test("the proxy's own session expires: it gets a new one and keeps following changes", async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const writer = await zkClient(t, server.connectString, 30_000)
  const [a, b] = await Promise.all(['a', 'b'].map(n => startBackend(t, n)))
  await registerCurator(writer, { service: 'expiry', id: 'a', port: a!.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'expiry', '--session-timeout-ms', '2000'])
  await eventually(async () => (await proxy.status()).instances.length === 1)

  // A stopped process sends no heartbeats: ZooKeeper expires its session after the 2 s timeout.
  const expiredBefore = await expiredSessions(server.port)
  proxy.kill('SIGSTOP')
  await eventually(async () => await expiredSessions(server.port) > expiredBefore, { timeoutMs: 10_000, intervalMs: 200, message: 'ZooKeeper expired the stopped proxy\'s session' })
  proxy.kill('SIGCONT')

  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_zookeeper_session_expirations_total') >= 1, { message: 'expiry counted' })
  t.equal((await proxy.status()).instances.length, 1, 'membership kept across the expiry')
  await registerCurator(writer, { service: 'expiry', id: 'b', port: b!.port })
  await eventually(async () => (await get(proxy.url)).servedBy === 'b', { message: 'follows an add on the new session' })
  await removeNode(writer, '/services/expiry/a')
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === 'b', { message: 'follows a remove' })
})

t.test('a hung ZooKeeper (SIGSTOP) is detected by the watchdog; membership is kept and then resynced', async t => {
  const server = await startZooKeeper()
  t.teardown(async () => { server.resume(); await server.close() })
  const writer = await zkClient(t, server.connectString, 30_000)
  const a = await startBackend(t, 'a')
  await registerCurator(writer, { service: 'hung', id: 'a', port: a.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'hung', '--session-timeout-ms', '2000'])
  await eventually(async () => (await proxy.status()).instances.length === 1)

  server.pause()
  await eventually(async () => (await proxy.status()).source.stale, { timeoutMs: 5_000, message: 'stale within the session timeout' })
  // The log comes through a pipe: it may land just after /status shows the state.
  t.ok(await eventually(() => /zookeeper watchdog fired/.test(proxy.output()), { message: 'the watchdog logged' }), 'the watchdog fired')
  t.equal((await get(proxy.url)).servedBy, 'a', 'still serving the last membership')
  // The new client's connection is taken by the stopped server's kernel; the old one's is let go,
  // although the stopped server never answers its closeSession.
  await eventually(() => connectionsTo(proxy.pid, server.port) === 1, { timeoutMs: 5_000, message: 'one connection to the hung server, not one per client' })
  server.resume()
  await eventually(async () => !(await proxy.status()).source.stale, { timeoutMs: 15_000 })
})

t.test('ZooKeeper unreachable at start: not ready until it comes up', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const writer = await zkClient(t, server.connectString)
  const a = await startBackend(t, 'a')
  // PERSISTENT: the instance must still be registered when ZooKeeper comes back.
  await createChild(writer, '/services/late', 'a', curatorData({ service: 'late', id: 'a', port: a.port }), false)
  writer.close()
  await server.stop()

  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'late', '--session-timeout-ms', '2000'])
  t.equal(await proxy.ready(), false, '/readyz is 503 before the first membership')
  const res = await get(proxy.url)
  t.equal(res.status, 503, 'requests get a fast 503 meanwhile')
  t.equal((await proxy.status()).source.status === 'connected', false)
  await server.start()
  await eventually(() => proxy.ready(), { timeoutMs: 20_000, message: 'ready once ZooKeeper is up' })
  t.equal((await get(proxy.url)).servedBy, 'a')
})

/** The proxy's established TCP connections to a local port, from /proc. */
function connectionsTo (pid: number, port: number): number {
  const inodes = new Set<string>()
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))?.[1]
      if (inode) inodes.add(inode)
    } catch {} // closed meanwhile
  }
  let count = 0
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const fields = line.trim().split(/\s+/)
      if (fields.length < 10) continue
      const established = fields[3] === '01'
      if (established && parseInt(fields[2]!.split(':')[1]!, 16) === port && inodes.has(fields[9]!)) count++
    }
  }
  return count
}

t.test('a reconnect with more watches than one ZooKeeper packet holds keeps the session and resyncs', async t => {
  // 3,000 children with 100-character names: about 350 KB of watched paths, over a server limit of 256 KB
  // (jute.maxbuffer; 1 MB by default, which about 17,800 UUID-named children exceed).
  const server = await startZooKeeper({ javaOptions: ['-Djute.maxbuffer=262144'] })
  t.teardown(() => server.close())
  const relay = await startRelay(server.port)
  t.teardown(() => relay.close())
  const writer = await zkClient(t, server.connectString, 30_000)
  const name = (i: number): string => `instance-${String(i).padStart(5, '0')}-`.padEnd(100, 'x')
  await createChild(writer, '/services/big', name(0), curatorData({ service: 'big', id: name(0), port: 20_000 }), false)
  for (let from = 1; from < 3_000; from += 500) {
    await Promise.all(Array.from({ length: Math.min(500, 3_000 - from) }, (_, k) => createChild(writer, '/services/big', name(from + k), curatorData({ service: 'big', id: name(from + k), port: 20_000 + from + k }), false)))
  }
  // No periodic resync within the test: what changes after the reconnect is seen through watches alone.
  const proxy = await startProxy(t, ['--zookeeper', `127.0.0.1:${relay.port}`, '--service', 'big', '--session-timeout-ms', '8000', '--resync-interval-ms', '600000'])
  await eventually(async () => (await proxy.status()).instances.length === 3_000, { timeoutMs: 30_000, intervalMs: 200 })

  // Cut off briefly: the client reconnects within its session and sends its watches again.
  await relay.down()
  await relay.up()
  await removeNode(writer, `/services/big/${name(0)}`)
  await eventually(async () => {
    const status = await proxy.status()
    return !status.source.stale && status.instances.length === 2_999
  }, { timeoutMs: 15_000, intervalMs: 200, message: 'fresh again, and the removal followed' })
  // Known children are not read again after a reconnect: only their data watches, sent again in one
  // packet or another, say that these 30 moved.
  const moved = Array.from({ length: 30 }, (_, k) => 100 * k + 99)
  await Promise.all(moved.map(i => zk(cb => writer.setData(`/services/big/${name(i)}`, curatorData({ service: 'big', id: name(i), port: 40_000 + i }), -1, cb))))
  await eventually(async () => {
    const ports = new Map((await proxy.status()).instances.map(instance => [instance.id, instance.address]))
    return moved.every(i => ports.get(name(i)) === `127.0.0.1:${40_000 + i}`)
  }, { timeoutMs: 15_000, intervalMs: 200, message: 'the data changes followed through the watches set again' })
  t.equal(sample(await proxy.metrics(), 'fleetgate_zookeeper_session_expirations_total'), 0, 'on the same session')
  const reconnects = proxy.logLines('zookeeper connected')
  t.ok(reconnects <= 3, `connected ${reconnects} times: the first connect and the reconnect, not a loop`)
  t.notMatch(server.logTail(200), /Len error/, 'no packet over the server\'s limit')
})

t.test('a server that drops every connection right after its handshake gets the client rebuilt after the session timeout', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const writer = await zkClient(t, server.connectString, 30_000)
  await registerCurator(writer, { service: 'flaky', id: 'a', port: 20_001 })
  // In front of ZooKeeper: while `dropping`, a connection gets the server's handshake answer, then is closed.
  let dropping = false
  const connections = new Set<Socket>()
  const relay = createServer(client => {
    const upstream = connectTcp(server.port, '127.0.0.1')
    for (const socket of [client, upstream]) {
      connections.add(socket)
      socket.once('close', () => { connections.delete(socket); client.destroy(); upstream.destroy() })
      socket.on('error', () => socket.destroy())
    }
    client.pipe(upstream)
    upstream.on('data', (chunk: Buffer) => {
      client.write(chunk)
      if (dropping) client.end(() => upstream.destroy())
    })
  })
  await new Promise<void>(resolve => relay.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { relay.close(); for (const socket of connections) socket.destroy() })
  const proxy = await startProxy(t, ['--zookeeper', `127.0.0.1:${(relay.address() as AddressInfo).port}`, '--service', 'flaky', '--session-timeout-ms', '3000'])
  await eventually(async () => (await proxy.status()).instances.length === 1)

  dropping = true
  for (const socket of connections) socket.destroy()
  await eventually(() => proxy.logLines('zookeeper connected') >= 3, { message: 'reconnects, each dropped' })
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_zookeeper_session_expirations_total') >= 1, { timeoutMs: 10_000, intervalMs: 200, message: 'the client rebuilt once the session timeout passed with no connection that worked' })
  t.equal((await proxy.status()).instances.length, 1, 'the membership kept meanwhile')

  dropping = false
  await registerCurator(writer, { service: 'flaky', id: 'b', port: 20_002 })
  await eventually(async () => {
    const status = await proxy.status()
    return !status.source.stale && status.instances.length === 2
  }, { timeoutMs: 15_000, intervalMs: 200, message: 'fresh again once connections hold, and the change followed' })
})

t.test('ZooKeeper restarted with an empty dataDir: the last membership is kept, stale, until the agents register again', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const backend = await startHealthBackend(t, 'a')
  // A wiped server refuses to resume any session (it has seen less than its clients), so each client
  // builds a new one once its session timeout has passed: the agent's shorter one brings it back within
  // the proxy's, counted from when it noticed the outage.
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'wiped', port: backend.port, args: ['--session-timeout-ms', '2000'] })
  t.teardown(() => { try { process.kill(agent.pid, 'SIGCONT') } catch {} })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'wiped', '--session-timeout-ms', '5000'])
  await eventually(async () => (await proxy.status()).instances.length === 1, { message: 'the proxy follows the agent\'s instance' })
  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 60_000, pauseMs: 2 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok > 50, { message: 'traffic flows' })

  /** Every znode and session gone. The agent is held meanwhile: it comes back after the proxy, as an agent with a longer session timeout, or one whose first handshakes hung, would. */
  const wipe = async (): Promise<void> => {
    process.kill(agent.pid, 'SIGSTOP')
    await server.stop()
    await rm(server.dataDir, { recursive: true })
    await mkdir(server.dataDir)
    await server.start()
  }
  const heldOrPublished = /"msg":"zookeeper lists no instance right after a new session|"instances":0,"msg":"membership changed"/g
  const seen = (): number => proxy.output().match(heldOrPublished)?.length ?? 0

  await wipe()
  await eventually(() => seen() >= 1, { timeoutMs: 20_000, message: 'the proxy, on a new session, read the service empty' })
  const status = await proxy.status()
  t.equal(status.instances.length, 1, 'the last membership kept')
  t.ok(status.source.stale, 'and marked stale')
  t.equal(sample(await proxy.metrics(), 'fleetgate_discovery_stale'), 1)
  t.ok(await proxy.ready(), 'still ready')
  process.kill(agent.pid, 'SIGCONT')
  await eventually(async () => {
    const s = await proxy.status()
    return !s.source.stale && s.instances.length === 1
  }, { timeoutMs: 20_000, message: 'fresh again once the agent registered again' })
  await expectPoolNeverEmpty(t, proxy, load, 'after the agent is back')

  // The hold is bounded: with no agent back within the session timeout, the empty service is published.
  await wipe()
  await eventually(() => /"instances":0,"msg":"membership changed"/.test(proxy.output()), { timeoutMs: 20_000, message: 'the empty service published once the hold ended' })
  t.notOk((await proxy.status()).source.stale, 'and it is current')
  t.equal((await get(proxy.url)).status, 503, 'requests get 503')
})
