// End to end: the real `fleetgate agent` registers a real backend in a real ZooKeeper, and the real
// `fleetgate proxy` routes by it. Registration, health transitions, maintenance, format and bad starts.

import http from 'node:http'
import { connect, type AddressInfo, type Socket } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { decodeRegistration } from '../../src/membership/instance.ts'
import { createdAtMs, readNode, startAgent, startHealthBackend } from '../helpers/agent.ts'
import { eventually } from '../helpers/eventually.ts'
import { get, registerCurator, runFleetgate, sample, startBackend, startProxy, zkClient } from '../helpers/fleet.ts'
import { startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

t.test('a healthy backend is registered and the proxy routes to it as soon as its znode appears', async t => {
  const client = await zkClient(t, server.connectString)
  // Another instance keeps the pool non-empty, so every probe below is an answered request.
  const other = await startBackend(t, 'other')
  await registerCurator(client, { service: 'join', id: 'other', port: other.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'join'])
  await eventually(() => proxy.ready(), { timeoutMs: 30_000, message: 'proxy ready' })

  const backend = await startHealthBackend(t, 'a')
  const path = `/services/join/127.0.0.1-${backend.port}`
  // Requests one after another from before the agent starts; the first to reach `a` marks the moment.
  let probing = true
  const probes = (async () => {
    const deadline = Date.now() + 60_000
    while (probing && backend.arrivals.length === 0 && Date.now() < deadline) await get(proxy.url)
  })()
  t.teardown(() => { probing = false })
  await startAgent(t, { zookeeper: server.connectString, service: 'join', port: backend.port })
  await probes
  const node = await readNode(client, path)
  t.ok(node && backend.arrivals.length > 0, 'registered and routed')
  // Both clocks are this machine's: ZooKeeper's ctime of the znode, and the backend's arrival time.
  const routedMs = backend.arrivals[0]!.arrivedAt - createdAtMs(node!.stat)
  t.comment(`znode created -> first request through the proxy reaches the new instance: ${routedMs} ms`)
  // No batching window on the way; how fast it is, the bench measures.
  t.ok(routedMs < 1000, `routed ${routedMs} ms after the znode appeared`)
})

t.test('the znode is Curator JSON with every field, and both the proxy decoder and plain JSON read it', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startHealthBackend(t, 'fmt')
  await startAgent(t, { zookeeper: server.connectString, service: 'format', port: backend.port, args: ['--weight', '3', '--labels', 'zone=a,tier=web', '--id', 'fmt-1'] })
  const node = (await eventually(() => readNode(client, '/services/format/fmt-1'), { message: 'znode' }))!
  t.ok(node.stat.ephemeralOwner.some(byte => byte !== 0), 'EPHEMERAL')

  const doc = JSON.parse(node.data.toString()) as Record<string, unknown>
  for (const field of ['name', 'id', 'address', 'port', 'sslPort', 'payload', 'registrationTimeUTC', 'serviceType', 'uriSpec']) {
    t.ok(field in doc, `Curator field ${field}`)
  }
  t.match(doc, {
    name: 'format', id: 'fmt-1', address: '127.0.0.1', port: backend.port, sslPort: null, serviceType: 'DYNAMIC',
    payload: { state: 'up', weight: 3, labels: { zone: 'a', tier: 'web' } },
  })
  t.type(doc.registrationTimeUTC, 'number')
  t.ok(Math.abs(Date.now() - (doc.registrationTimeUTC as number)) < 60_000, 'registrationTimeUTC is epoch ms')

  const decoded = decodeRegistration('fmt-1', node.data)
  t.ok(decoded.ok, JSON.stringify(decoded))
  if (decoded.ok) {
    t.equal(decoded.format, 'curator')
    t.match(decoded.instance, { id: 'fmt-1', host: '127.0.0.1', port: backend.port, state: 'up', weight: 3, labels: { zone: 'a', tier: 'web' } })
  }
})

t.test('an IPv6 address without brackets (Kubernetes\' status.podIP) is advertised, and the proxy routes to it', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = http.createServer((req, res) => res.end(req.url === '/health' ? 'ok' : 'over ::1'))
  await new Promise<void>(resolve => backend.listen(0, '::1', resolve))
  t.teardown(() => new Promise<void>(resolve => { backend.closeAllConnections(); backend.close(() => resolve()) }))
  const { port } = backend.address() as AddressInfo
  await startAgent(t, { zookeeper: server.connectString, service: 'six', port, args: ['--advertise', `::1:${port}`, '--target', `http://[::1]:${port}`] })
  const node = (await eventually(() => readNode(client, `/services/six/__1-${port}`), { message: 'znode under the id made of the address' }))!
  t.match(JSON.parse(node.data.toString()), { address: '::1', port }, 'the address without brackets, the port apart, as Curator writes them')
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'six'])
  await eventually(() => proxy.ready(), { timeoutMs: 30_000, message: 'proxy ready' })
  const res = await request(proxy.url)
  t.same([res.statusCode, await res.body.text()], [200, 'over ::1'])
})

t.test('failing /health: znode gone after the fall threshold, back after the rise threshold; traffic follows', async t => {
  const client = await zkClient(t, server.connectString)
  const stay = await startBackend(t, 'stay')
  await registerCurator(client, { service: 'health', id: 'stay', port: stay.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'health'])
  const backend = await startHealthBackend(t, 'flaky')
  const path = `/services/health/127.0.0.1-${backend.port}`
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'health', port: backend.port, args: ['--rise', '2', '--fall', '3'] })
  await eventually(async () => (await get(proxy.url)).servedBy === 'flaky', { message: 'flaky gets traffic' })

  backend.healthy = false
  const failedAt = Date.now()
  await eventually(async () => (await readNode(client, path)) === undefined, { message: 'znode deleted' })
  const goneMs = Date.now() - failedAt
  const status = await agent.status()
  t.equal(status.health, 'unhealthy')
  t.ok(status.streak.failures >= 3, `deregistered after ${status.streak.failures} failures in a row`)
  await eventually(async () => {
    for (let i = 0; i < 6; i++) if ((await get(proxy.url)).servedBy !== 'stay') return false
    return true
  }, { message: 'traffic stopped' })

  backend.healthy = true
  const recoveredAt = Date.now()
  await eventually(() => readNode(client, path), { message: 'znode back' })
  const backMs = Date.now() - recoveredAt
  t.ok((await agent.status()).streak.passes >= 2, 're-registered after two passes in a row')
  await eventually(async () => (await get(proxy.url)).servedBy === 'flaky', { message: 'traffic back' })
  t.comment(`/health failing -> znode gone: ${goneMs} ms (fall 3 x 100 ms); passing -> znode back: ${backMs} ms (rise 2 x 100 ms)`)
  // The first failing check may have been sent just before /health turned, so three failures take at
  // least two intervals less that one; the exact thresholds are the unit tests' (agent-rise-fall).
  t.ok(goneMs >= 100, `not on the first failure (${goneMs} ms)`)

  const metrics = await agent.metrics()
  t.equal(sample(metrics, 'fleetgate_agent_transitions_total', { to: 'unhealthy' }), 1)
  t.equal(sample(metrics, 'fleetgate_agent_transitions_total', { to: 'healthy' }), 2)
  t.equal(sample(metrics, 'fleetgate_agent_registered'), 1)
  t.ok(sample(metrics, 'fleetgate_agent_health_checks_total', { result: 'fail' }) >= 3)
})

t.test('maintenance: PUT drains without stopping (no new requests), DELETE brings it back', async t => {
  const client = await zkClient(t, server.connectString)
  const stay = await startBackend(t, 'stay')
  await registerCurator(client, { service: 'maint', id: 'stay', port: stay.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'maint'])
  const backend = await startHealthBackend(t, 'm')
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'maint', port: backend.port })
  await eventually(async () => (await get(proxy.url)).servedBy === 'm')

  // A web page whose name was pointed at 127.0.0.1 cannot drain it (DNS rebinding).
  const rebound = await request(`${agent.adminUrl}/maintenance`, { method: 'PUT', headers: { host: 'attacker.example:9902' } })
  t.equal(rebound.statusCode, 403)
  t.match(await rebound.body.json(), { error: 'FLEETGATE_ERR_AGENT_MAINTENANCE_FORBIDDEN' })
  t.match(await agent.status(), { maintenance: false, registration: { state: 'up' } }, 'still up')

  t.equal(await agent.maintenance(true), 200)
  t.match(await agent.status(), { maintenance: true, registration: { registered: true, state: 'draining' } })
  await eventually(async () => (await proxy.status()).instances.some(i => i.id.startsWith('127.0.0.1-') && i.state === 'draining'))
  const before = backend.arrivals.length
  for (let i = 0; i < 20; i++) t.equal((await get(proxy.url)).servedBy, 'stay', `request ${i} avoids the draining instance`)
  t.equal(backend.arrivals.length, before)
  t.equal(sample(await agent.metrics(), 'fleetgate_agent_draining'), 1)

  t.equal(await agent.maintenance(false), 200)
  await eventually(async () => (await get(proxy.url)).servedBy === 'm', { message: 'back in rotation' })
  t.match(await agent.status(), { maintenance: false, registration: { state: 'up' } })
})

t.test('bad flags: a clear error naming the flag, and exit code 2', async t => {
  const cases: Array<[string[], RegExp]> = [
    [['agent', '--zookeeper', server.connectString], /--advertise is required: expected HOST:PORT/],
    [['agent', '--zookeeper', server.connectString, '--advertise', '127.0.0.1:1', '--fall', 'lots'], /--fall = "lots": expected an integer from 1 to 100/],
    [['agent', '--zookeeper', server.connectString, '--advertise', '127.0.0.1:1', '--no-such-flag'], /Unknown option '--no-such-flag'/],
    [['agent', '--advertise', '127.0.0.1:1'], /--zookeeper is required/],
    [['agent', '--zookeeper', server.connectString, '--advertise', '127.0.0.1:1', '--labels', 'a=1,a=2'], /key "a" is given twice/],
    [['agent', '--zookeeper', server.connectString, '--advertise', '127.0.0.1:1', '--admin-listen', '127.0.0.1:0', '--', '/nonexistent/superset'], /FLEETGATE_ERR_AGENT_COMMAND: .*\/nonexistent\/superset: ENOENT/],
    // ZooKeeper's own port: one in use.
    [['agent', '--zookeeper', server.connectString, '--advertise', '127.0.0.1:1', '--admin-listen', `127.0.0.1:${server.port}`], /FLEETGATE_ERR_LISTEN: Cannot listen: --admin-listen: listen EADDRINUSE/],
  ]
  await Promise.all(cases.map(async ([args, message]) => {
    const proc = runFleetgate(t, args)
    const { code } = await proc.exited
    t.equal(code, 2, args.join(' '))
    t.match(proc.output(), message)
  }))
})

t.test('an unreachable target is not registered nor counted as a transition, and SIGTERM still exits promptly', async t => {
  const client = await zkClient(t, server.connectString)
  const gone = await startBackend(t, 'gone')
  const port = gone.port
  await gone.close()
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'unreachable', port, args: ['--drain-ms', '30000'] })
  await eventually(async () => (await agent.status()).health === 'unhealthy', { message: 'unhealthy after the fall threshold' })
  t.equal(await readNode(client, `/services/unreachable/127.0.0.1-${port}`), undefined)
  t.match((await agent.status()).lastCheck, { ok: false, detail: 'ECONNREFUSED' })
  // Never healthy, as a Superset still booting: where it starts, not a transition to alert on.
  const metrics = await agent.metrics()
  t.equal(sample(metrics, 'fleetgate_agent_transitions_total'), 0, 'no transition counted')
  // Yet every counter is there from 0, so that increase() sees its first event (the first fall from healthy).
  for (const to of ['healthy', 'unhealthy']) t.match(metrics, new RegExp(`^fleetgate_agent_transitions_total\\{[^}]*to="${to}"\\} 0$`, 'm'), `transitions to ${to} from 0`)
  t.match(metrics, /^fleetgate_agent_health_checks_total\{[^}]*result="pass"\} 0$/m, 'passed checks from 0')
  t.match(metrics, /^fleetgate_zookeeper_session_expirations_total\{service="unreachable"\} 0$/m, 'session expirations from 0')
  t.equal(agent.logLines('instance unhealthy: deregistering'), 0, 'no warning')
  t.equal(agent.logLines('instance not healthy yet: not registering'), 1)
  const { code, ms } = await agent.stop()
  t.equal(code, 0)
  t.ok(ms < 2000, `exited in ${ms} ms, not after the 30 s drain`)
})

t.test('a client holding a connection to the admin listener does not keep the stopped agent from exiting', async t => {
  const backend = await startBackend(t, 'held')
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'held', port: backend.port, args: ['--drain-ms', '0'] })
  const { port } = new URL(agent.adminUrl)
  // A TCP check that stays connected, and a scrape whose request never ends: neither is a whole request.
  const sockets = await Promise.all(['', 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n'].map(head => new Promise<Socket>((resolve, reject) => {
    const socket = connect(Number(port), '127.0.0.1', () => { socket.write(head); resolve(socket) })
    socket.on('error', reject)
  })))
  t.teardown(() => { for (const socket of sockets) socket.destroy() })
  const closed = sockets.map(socket => new Promise(resolve => socket.once('close', resolve)))
  let timer: NodeJS.Timeout | undefined
  const { code, ms } = await Promise.race([
    agent.stop(),
    new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('the agent has not exited 5 s after SIGTERM')), 5_000) }),
  ]).finally(() => clearTimeout(timer))
  t.equal(code, 0)
  t.ok(ms < 5_000, `exited in ${ms} ms`)
  await Promise.all(closed)
})

t.test('without a command, SIGHUP and SIGUSR1 are logged and ignored: the inspector stays closed', async t => {
  const backend = await startBackend(t, 'usr1')
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'usr1', port: backend.port })
  for (const signal of ['SIGHUP', 'SIGUSR1'] as const) {
    agent.kill(signal)
    await agent.waitForOutput(new RegExp(`"msg":"${signal} ignored`))
  }
  t.notMatch(agent.output(), /Debugger listening|inspector/i, 'no inspector opened')
  t.equal(agent.child.exitCode, null, 'the agent keeps running')
  agent.kill('SIGTERM')
  t.equal((await agent.exited).code, 0)
})
