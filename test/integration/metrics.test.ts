// The proxy's /metrics, end to end: the real `fleetgate proxy` process, a real ZooKeeper, real backends.
// Counts must match what was sent, upgrades and refusals included, and discovery trouble shows.
// (Churning instances: metrics-churn.test.ts.)

import { readFileSync } from 'node:fs'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { connect, createServer, type Socket } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import WebSocket, { WebSocketServer } from 'ws'
import { eventually } from '../helpers/eventually.ts'
import {
  createChild, registerCurator, removeNode, sample, startBackend, startProxy, zkClient, type Backend,
} from '../helpers/fleet.ts'
import { freePort, startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

/** Opens a WebSocket to /ws through the proxy and closes it: 101, the status of a refusal, or 0 for no answer. */
async function openWebSocket (proxyUrl: string): Promise<number> {
  return await new Promise<number>(resolve => {
    const ws = new WebSocket(`${proxyUrl.replace('http', 'ws')}/ws`)
    ws.once('open', () => { ws.terminate(); resolve(101) })
    ws.once('unexpected-response', (_req, res) => { res.resume(); ws.terminate(); resolve(res.statusCode ?? 0) })
    ws.once('error', () => resolve(0))
  })
}

/** Answers the status code in the path (`/code/404`), 200 otherwise, and tallies what it answered. */
function answerCodes (backend: Backend): Map<string, number> {
  const answered = new Map<string, number>()
  backend.handle((req: IncomingMessage, res: ServerResponse) => {
    const code = Number(/^\/code\/(\d{3})/.exec(req.url ?? '')?.[1] ?? 200)
    req.resume()
    req.on('end', () => {
      const key = `${req.method} ${code}`
      answered.set(key, (answered.get(key) ?? 0) + 1)
      res.statusCode = code
      res.end()
    })
  })
  return answered
}

for (const workers of [1, 2]) {
  t.test(`N requests over 3 instances: requests_total sums to N, split by instance, method and code as sent (--workers ${workers})`, async t => {
    const client = await zkClient(t, server.connectString)
    const backends = await Promise.all(['a', 'b', 'c'].map(n => startBackend(t, n)))
    const answered = backends.map(answerCodes)
    const service = `counting-${workers}`
    for (const b of backends) await registerCurator(client, { service, id: b.name, port: b.port })
    // With workers, /metrics is the primary's rendering of every worker's traffic report.
    const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', service, '--workers', String(workers)])
    await eventually(async () => (await proxy.status()).instances.length === 3, { message: '3 instances in the pool' })

    const N = 600
    const plan = (i: number): { method: string, path: string } => ({
      method: i % 4 === 3 ? 'POST' : 'GET',
      path: i % 10 === 0 ? '/code/500' : i % 7 === 0 ? '/code/404' : i % 13 === 0 ? '/code/503' : `/ok/${i}`,
    })
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < N) {
        const { method, path } = plan(next++)
        const res = await request(`${proxy.url}${path}`, { method, body: method === 'POST' ? 'x=1' : null })
        await res.body.dump()
      }
    }
    await Promise.all(Array.from({ length: 8 }, worker))

    const metrics = await proxy.metrics()
    t.equal(sample(metrics, 'fleetgate_requests_total', { service }), N, 'requests_total sums to N')
    for (const [i, backend] of backends.entries()) {
      const instance = `127.0.0.1:${backend.port}`
      for (const [key, count] of answered[i]!) {
        const [method, code] = key.split(' ') as [string, string]
        t.equal(sample(metrics, 'fleetgate_requests_total', { instance, method, code }), count, `${backend.name} ${method} ${code}`)
      }
      const sent = [...answered[i]!.values()].reduce((a, b) => a + b, 0)
      t.equal(sample(metrics, 'fleetgate_requests_total', { instance }), sent, `${backend.name}: ${sent} in all`)
      t.equal(sample(metrics, 'fleetgate_request_duration_seconds_count', { instance }), sent, `${backend.name}: one duration each`)
      t.equal(sample(metrics, 'fleetgate_in_flight_requests', { instance }), 0, `${backend.name}: nothing in flight`)
      t.equal(sample(metrics, 'fleetgate_instance_state', { instance, state: 'up' }), 1, `${backend.name} is up`)
    }
    const sentCodes = new Set(Array.from({ length: N }, (_, i) => plan(i).path).map(p => p.startsWith('/code/') ? p.slice(6) : '200'))
    t.same([...sentCodes].sort(), ['200', '404', '500', '503'], 'the plan covers 4 codes')
    t.equal(sample(metrics, 'fleetgate_instances', { service, state: 'up' }), 3)
    // Counters of rare events are there from 0: one that first shows at 1 is no increase() to Prometheus.
    t.match(metrics, new RegExp(`^fleetgate_zookeeper_session_expirations_total\\{service="${service}"\\} 0$`, 'm'), 'session expirations from 0')
    for (const reason of ['not_json', 'unknown_format', 'no_host', 'bad_port', 'too_large', 'unreadable']) {
      t.match(metrics, new RegExp(`^fleetgate_invalid_registrations_total\\{service="${service}",reason="${reason}"\\} 0$`, 'm'), `invalid registrations (${reason}) from 0`)
    }
  })
}

t.test('WebSocket upgrades are counted like requests: 101 by instance, 503 with the pool empty', async t => {
  const client = await zkClient(t, server.connectString)
  const service = 'ws-metrics'
  const a = await startBackend(t, 'ws-a')
  const wss = new WebSocketServer({ server: a.server })
  t.teardown(() => wss.close())
  const path = await registerCurator(client, { service, id: 'a', port: a.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', service])
  await eventually(async () => (await proxy.status()).instances.length === 1, { message: 'one instance' })
  for (let i = 0; i < 3; i++) t.equal(await openWebSocket(proxy.url), 101)
  let metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { instance: `127.0.0.1:${a.port}`, method: 'GET', code: '101' }), 3, 'three upgrades counted for the instance')
  t.equal(sample(metrics, 'fleetgate_request_duration_seconds_count', { instance: `127.0.0.1:${a.port}` }), 3)

  await removeNode(client, path)
  await eventually(async () => (await proxy.status()).instances.length === 0, { message: 'the pool is empty' })
  t.equal(await openWebSocket(proxy.url), 503, 'an upgrade with no live instance gets 503')
  metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { instance: 'none', code: '503' }), 1, 'and is counted in requests_total')
  t.equal(sample(metrics, 'fleetgate_no_live_instance_total', { service }), 1, 'and in no_live_instance_total')
})

t.test('an upgrade sent on after a refused connect counts in retries_total, as a request does', async t => {
  const a = await startBackend(t, 'ws-a')
  const wss = new WebSocketServer({ server: a.server })
  t.teardown(() => wss.close())
  // Two instances that refuse every connect, back after 1 ms: an upgrade may meet both before `a`.
  const refusing = [await freePort(), await freePort()]
  const proxy = await startProxy(t, ['--static', [...refusing, a.port].map(port => `http://127.0.0.1:${port}`).join(','),
    '--eject-base-ms', '1', '--eject-max-ms', '1', '--panic-threshold-percent', '0'])
  await eventually(async () => (await proxy.status()).instances.length === 3, { message: 'three instances' })
  for (let i = 0; i < 6; i++) t.equal(await openWebSocket(proxy.url), 101, 'the upgrade reaches the instance that accepts')
  const metrics = await proxy.metrics()
  const failed = refusing.reduce((sum, port) => sum + sample(metrics, 'fleetgate_upstream_connect_failures_total', { instance: `127.0.0.1:${port}` }), 0)
  t.ok(failed > 0, `connects were refused (${failed})`)
  // Each refused connect was followed by a try elsewhere, the last of which succeeded.
  t.equal(sample(metrics, 'fleetgate_retries_total', { reason: 'connect_failure' }), failed, 'one retry per refused connect')
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '101' }), 6, 'each upgrade counted once')
})

t.test('an upgrade counts as the instance answered it: a refusal, a hang-up, silence past the headers timeout', async t => {
  const client = await zkClient(t, server.connectString)
  const open = async (url: string): Promise<{ status: number, body: string }> => await new Promise(resolve => {
    const ws = new WebSocket(`${url.replace('http', 'ws')}/ws`)
    ws.once('open', () => { ws.terminate(); resolve({ status: 101, body: '' }) })
    ws.once('unexpected-response', (_req, res) => {
      let body = ''
      res.setEncoding('utf8').on('data', (s: string) => { body += s }).on('end', () => { ws.terminate(); resolve({ status: res.statusCode ?? 0, body }) })
    })
    ws.once('error', () => resolve({ status: 0, body: '' }))
  })

  // Superset refuses a socket without a session: the client gets that answer, and it is what counts.
  const refusing = await startBackend(t, 'refusing')
  refusing.handle((_req, res) => { res.statusCode = 403; res.end('no session') })
  await registerCurator(client, { service: 'ws-refused', id: 'a', port: refusing.port })
  const refused = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'ws-refused'])
  await eventually(async () => (await refused.status()).instances.length === 1)
  t.same(await open(refused.url), { status: 403, body: 'no session' })
  const metrics = await refused.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { service: 'ws-refused', code: '403' }), 1, 'counted as 403')
  t.equal(sample(metrics, 'fleetgate_requests_total', { service: 'ws-refused', code: '101' }), 0, 'not as 101')
  // Whatever the client sends after the refusal does not reach the instance past the proxy.
  const after = connect(Number(new URL(refused.url).port), '127.0.0.1')
  t.teardown(() => after.destroy())
  let text = ''
  after.setEncoding('latin1').on('data', (s: string) => { text += s })
  after.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
  await eventually(() => text.endsWith('no session'), { message: 'the refusal' })
  const hits = refusing.hits
  after.write('GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n')
  await eventually(() => after.destroyed || after.readableEnded, { message: 'the connection ends after the refusal' })
  t.equal(refusing.hits, hits, 'the request sent after it never reached the instance')
  // Nor does one sent in the same packet as the handshake, before any answer.
  const together = connect(Number(new URL(refused.url).port), '127.0.0.1')
  t.teardown(() => together.destroy())
  let answer = ''
  together.setEncoding('latin1').on('data', (s: string) => { answer += s })
  together.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n' +
    'GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n')
  await eventually(() => answer.endsWith('no session') && (together.destroyed || together.readableEnded), { message: 'the refusal, then the end' })
  t.equal(refusing.hits, hits + 1, 'only the handshake reached the instance, not the request behind it')
  t.notMatch(answer, /no session[^]*no session/, 'and only one answer came back')

  // Instances that take the connection, then hang up at once or never answer.
  const sockets = new Set<Socket>()
  const raw = async (onHandshake: (socket: Socket) => void): Promise<number> => {
    const listener = createServer(socket => { sockets.add(socket); socket.once('data', () => onHandshake(socket)) })
    t.teardown(() => { for (const socket of sockets) socket.destroy(); listener.close() })
    await new Promise<void>(resolve => listener.listen(0, '127.0.0.1', resolve))
    return (listener.address() as { port: number }).port
  }
  await registerCurator(client, { service: 'ws-hangup', id: 'a', port: await raw(socket => socket.destroy()) })
  await registerCurator(client, { service: 'ws-silent', id: 'a', port: await raw(() => {}) })
  for (const [service, status, error] of [['ws-hangup', 502, 'FLEETGATE_ERR_UPSTREAM_RESET'], ['ws-silent', 504, 'FLEETGATE_ERR_UPSTREAM_TIMEOUT']] as const) {
    const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', service, '--headers-timeout-ms', '500'])
    await eventually(async () => (await proxy.status()).instances.length === 1)
    const answer = await open(proxy.url)
    t.equal(answer.status, status, `${service}: ${status}`)
    t.equal(JSON.parse(answer.body).error, error)
    const metrics = await proxy.metrics()
    t.equal(sample(metrics, 'fleetgate_requests_total', { service, code: String(status) }), 1, `${service}: counted as ${status}`)
    t.equal(sample(metrics, 'fleetgate_in_flight_requests', { service }), 0, `${service}: its connection slot is free`)
    if (service !== 'ws-silent') continue
    // A client that sent more behind its handshake and keeps its side open: the proxy closes the
    // connection once its answer is out, rather than leave it half open with the bytes unread.
    const proxyPort = Number(new URL(proxy.url).port)
    const lingering = connect({ port: proxyPort, host: '127.0.0.1', allowHalfOpen: true })
    t.teardown(() => lingering.destroy())
    let text = ''
    lingering.on('error', () => {}).setEncoding('latin1').on('data', (s: string) => { text += s })
    await new Promise(resolve => lingering.once('connect', resolve))
    lingering.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
    await eventually(async () => sample(await proxy.metrics(), 'fleetgate_in_flight_requests', { service }) === 1, { message: 'the handshake is with the instance' })
    lingering.write('more, before any answer')
    await eventually(() => text.includes('504'), { message: 'the 504' })
    // Its socket in /proc/net/tcp: a process that still holds it shows its inode; a closed one shows 0.
    const hex = (port: number): string => `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`
    const held = (): boolean => readFileSync('/proc/net/tcp', 'utf8').split('\n').some(line => {
      const fields = line.trim().split(/\s+/)
      return fields[1] === hex(proxyPort) && fields[2] === hex(lingering.localPort!) && fields[9] !== '0'
    })
    await eventually(() => !held(), { message: 'the proxy closed its side of the connection', timeoutMs: 10_000 })
  }
})

t.test('invalid registrations are counted once each, by reason, and the valid ones still serve', async t => {
  const client = await zkClient(t, server.connectString)
  const service = 'invalid'
  const parent = `/services/${service}`
  const good = await startBackend(t, 'good')
  await registerCurator(client, { service, id: 'good', port: good.port })
  await createChild(client, parent, 'not-json', 'this is not JSON')
  await createChild(client, parent, 'unknown', JSON.stringify({ hello: 'world' }))
  await createChild(client, parent, 'no-host', JSON.stringify({ host: '', port: 8088 }))
  await createChild(client, parent, 'bad-port', JSON.stringify({ host: '127.0.0.1', port: 70000 }))
  await createChild(client, parent, 'bad-port-2', JSON.stringify({ serviceEndpoint: { host: '127.0.0.1', port: 0 }, status: 'ALIVE' }))
  await createChild(client, parent, 'too-large', JSON.stringify({ host: '127.0.0.1', port: 8088, pad: 'x'.repeat(70 * 1024) }))
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', service])
  await eventually(async () => (await proxy.status()).instances.length === 1, { message: 'the valid instance' })

  const expected = { not_json: 1, unknown_format: 1, no_host: 1, bad_port: 2, too_large: 1 }
  const counted = async (): Promise<Record<string, number>> => {
    const metrics = await proxy.metrics()
    return Object.fromEntries(Object.keys(expected).map(reason => [reason, sample(metrics, 'fleetgate_invalid_registrations_total', { service, reason })]))
  }
  t.same(await eventually(async () => {
    const c = await counted()
    return Object.values(c).reduce((a, b) => a + b, 0) === 6 ? c : undefined
  }, { message: 'six invalid registrations counted' }), expected)

  // A new invalid one is counted; the ones already counted are not counted again.
  await createChild(client, parent, 'not-json-2', '{')
  await eventually(async () => (await counted()).not_json === 2, { message: 'the second not_json' })
  t.same(await counted(), { ...expected, not_json: 2 })
  const res = await request(proxy.url)
  await res.body.dump()
  t.equal(res.headers['x-served-by'], 'good', 'the valid instance serves')
})

t.test('discovery_stale goes to 1 when ZooKeeper stops, the last membership keeps serving, and back to 0', async t => {
  const own = await startZooKeeper()
  t.teardown(() => own.close())
  const client = await zkClient(t, own.connectString)
  const a = await startBackend(t, 'a')
  // Persistent, so the registration does not depend on this client's session surviving the outage.
  await createChild(client, '/services/stale', 'a', JSON.stringify({ host: '127.0.0.1', port: a.port }), false)
  const proxy = await startProxy(t, ['--zookeeper', own.connectString, '--service', 'stale'])
  const gauge = async (name: string): Promise<number> => sample(await proxy.metrics(), name, { service: 'stale', source: 'zookeeper' })
  await eventually(async () => (await proxy.status()).instances.length === 1 && await gauge('fleetgate_discovery_stale') === 0, { message: 'fresh membership' })
  t.equal(await gauge('fleetgate_discovery_connected'), 1)

  await own.stop()
  await eventually(async () => await gauge('fleetgate_discovery_stale') === 1, { message: 'stale after ZooKeeper stopped', timeoutMs: 15_000 })
  t.equal(await gauge('fleetgate_discovery_connected'), 0, 'not connected')
  t.equal((await proxy.status()).source.stale, true, '/status says stale too')
  const res = await request(proxy.url)
  await res.body.dump()
  t.equal(res.headers['x-served-by'], 'a', 'the last known instance still serves')

  await own.start()
  await eventually(async () => await gauge('fleetgate_discovery_stale') === 0, { message: 'fresh again after ZooKeeper came back', timeoutMs: 30_000 })
  t.equal(await gauge('fleetgate_discovery_connected'), 1)
})
