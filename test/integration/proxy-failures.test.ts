// End to end: crashed instances, malformed registrations and unanswered requests, on a real ZooKeeper.

import { spawn } from 'node:child_process'
import { createServer, type ServerResponse } from 'node:http'
import { connect, type Socket } from 'node:net'
import { Readable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { ACL, CreateMode, Id, Permission } from 'node-zookeeper-client'
import t from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { createChild, curatorData, get, loadLoop, raw, registerCurator, removeNode, sample, startBackend, startProxy, zk, zkClient } from '../helpers/fleet.ts'
import { isRunning, track } from '../helpers/reaper.ts'
import { freePort, startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

const REGISTERED_BACKEND = fileURLToPath(new URL('../fixtures/registered-backend.mjs', import.meta.url))

t.test('a crashed instance is skipped without a failed request', async t => {
  const backends = ['a', 'b', 'c'].map(name => {
    const child = spawn(process.execPath, [REGISTERED_BACKEND, server.connectString, 'crash', name, '2000'], { stdio: ['ignore', 'pipe', 'inherit'] })
    track(child)
    t.teardown(() => { if (isRunning(child)) child.kill('SIGKILL') })
    let out = ''
    child.stdout!.setEncoding('utf8').on('data', (s: string) => { out += s })
    return { name, child, registered: () => out.includes('registered') }
  })
  await eventually(() => backends.every(b => b.registered()))
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'crash'])
  await eventually(async () => (await proxy.status()).instances.length === 3)

  const load = loadLoop(proxy.url, { concurrency: 8, maxMs: 30_000 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok > 200)
  backends[1]!.child.kill('SIGKILL')
  // The session times out after 2 s; until then the dead port is skipped by retries and ejection.
  await eventually(async () => (await proxy.status()).instances.length === 2, { timeoutMs: 15_000 })
  const okAtRemoval = load.result.ok
  await eventually(() => load.result.ok > okAtRemoval + 200)
  const result = await load.stop()
  t.equal(result.failed, 0, `no failed GET (${result.errors.join('; ')})`)
  t.ok((result.byInstance.a ?? 0) > 0 && (result.byInstance.c ?? 0) > 0)
  const metrics = await proxy.metrics()
  t.ok(sample(metrics, 'fleetgate_retries_total') >= 1, 'requests that hit the dead port were retried')
  t.comment(`${result.ok} GETs, ${sample(metrics, 'fleetgate_retries_total')} retried, 0 failed`)
})

t.test('an instance that dies carrying most of the requests in flight has every GET retried elsewhere', async t => {
  const client = await zkClient(t, server.connectString)
  const heavy = await startBackend(t, 'heavy')
  const held: ServerResponse[] = []
  heavy.handle((_req, res) => { held.push(res) })
  const light = [await startBackend(t, 'light-1'), await startBackend(t, 'light-2')]
  await registerCurator(client, { service: 'die-heavy', id: 'heavy', port: heavy.port, weight: 3 })
  for (const backend of light) await registerCurator(client, { service: 'die-heavy', id: backend.name, port: backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'die-heavy'])
  await eventually(async () => (await proxy.status()).instances.length === 3)

  // Weighted 3:1:1, so the heavy instance holds about 60 of 100 requests: far more than the shared
  // retry budget (10, or 20 % of those in flight) and than an equal share of the fleet.
  const answers = Array.from({ length: 100 }, async () => {
    const res = await request(`${proxy.url}/work`)
    await res.body.text()
    return { status: res.statusCode, servedBy: res.headers['x-served-by'] }
  })
  // Every request has reached an instance, and the heavy one holds its share.
  await eventually(() => heavy.hits + light[0]!.hits + light[1]!.hits === 100 && held.length >= 55)
  const carried = held.length
  heavy.server.closeAllConnections()
  const results = await Promise.all(answers)
  t.same(results.filter(r => r.status !== 200), [], 'no GET failed')
  t.equal(results.filter(r => r.servedBy === 'heavy').length, 0)
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_retries_total', { reason: 'reset_before_response' }), carried, `all ${carried} requests it carried were retried`)
})

t.test('malformed children are skipped and counted; good instances keep their traffic', async t => {
  const client = await zkClient(t, server.connectString)
  const good = await startBackend(t, 'good')
  await registerCurator(client, { service: 'malformed', id: 'good', port: good.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'malformed'])
  await eventually(async () => (await get(proxy.url)).servedBy === 'good')

  const parent = '/services/malformed'
  const curator = (extra: object) => JSON.stringify({ name: 'malformed', id: 'x', address: '127.0.0.1', port: good.port, serviceType: 'DYNAMIC', ...extra })
  await createChild(client, parent, 'not-json', '{"address": "127.0.0.1", port')
  await createChild(client, parent, 'no-port', curator({ port: null }))
  await createChild(client, parent, 'port-99999', curator({ port: 99999 }))
  await createChild(client, parent, 'garbage-1mb', Buffer.alloc(1_000_000, 'x'))
  // Hosts the URL parser refuses: no connection pool could be made for them.
  await createChild(client, parent, 'ipv6-zone', JSON.stringify({ host: 'fe80::1%lo', port: good.port }))
  await createChild(client, parent, 'ipv4-256', curator({ address: '10.0.0.256' }))
  // The unspecified address (a registrar's bind address) names no instance; Linux would connect it to the proxy's own host.
  await createChild(client, parent, 'bind-address', curator({ address: '0.0.0.0' }))
  // Under the 64 KB limit, so parsed: the log shows the start of the host, not all of it.
  await createChild(client, parent, 'host-60kb', curator({ address: 'h'.repeat(60_000) }))

  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_invalid_registrations_total') === 8)
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_invalid_registrations_total', { reason: 'no_host' }), 4)
  const warning = proxy.output().split('\n').find(line => line.includes('"child":"host-60kb"'))
  t.ok(warning !== undefined && warning.length < 1000, `the warning about it is short (${warning?.length} characters)`)
  t.equal(sample(metrics, 'fleetgate_invalid_registrations_total', { reason: 'not_json' }), 1)
  t.equal(sample(metrics, 'fleetgate_invalid_registrations_total', { reason: 'bad_port' }), 2)
  t.equal(sample(metrics, 'fleetgate_invalid_registrations_total', { reason: 'too_large' }), 1)
  const status = await proxy.status()
  t.same(status.instances.map(i => i.id), ['good'])
  for (let i = 0; i < 10; i++) t.equal((await get(proxy.url)).servedBy, 'good')
  t.match(proxy.output(), /skipping invalid registration/)
})

t.test('a registration rewritten with data that does not read keeps its last valid one: a one-instance service keeps serving', async t => {
  const client = await zkClient(t, server.connectString)
  const a = await startBackend(t, 'a')
  const path = await registerCurator(client, { service: 'rewritten', id: 'a', port: a.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'rewritten'])
  await eventually(async () => (await get(proxy.url)).servedBy === 'a')

  // A write cut short, then one of an agent that writes another format: each is counted once.
  await zk(cb => client.setData(path, Buffer.from('{"name":"rewritten","id":"a","addr'), -1, cb))
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_invalid_registrations_total', { reason: 'not_json' }) === 1, { message: 'the bad write counted' })
  await zk(cb => client.setData(path, Buffer.from('{"endpoint":"127.0.0.1"}'), -1, cb))
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_invalid_registrations_total', { reason: 'unknown_format' }) === 1, { message: 'the second counted' })
  t.same((await proxy.status()).instances.map(i => i.id), ['a'], 'the instance kept')
  t.equal((await get(proxy.url)).servedBy, 'a', 'and served')
  // The log comes through a pipe: it may land just after the metrics did.
  await proxy.waitForOutput(/"child":"a","reason":"not_json".*keeping its last valid one/)

  // Valid again, with a change: followed.
  const b = await startBackend(t, 'b')
  await zk(cb => client.setData(path, curatorData({ service: 'rewritten', id: 'a', port: b.port }), -1, cb))
  await eventually(async () => (await get(proxy.url)).servedBy === 'b', { message: 'the valid rewrite followed' })
  // Deleted: gone, as ever.
  await removeNode(client, path)
  await eventually(async () => (await proxy.status()).instances.length === 0, { message: 'the deletion followed' })
})

t.test('a child fleetgate may not read (its ACL) is skipped and counted; changes after it still arrive', async t => {
  const client = await zkClient(t, server.connectString)
  const [a, hidden, c] = [await startBackend(t, 'a'), await startBackend(t, 'hidden'), await startBackend(t, 'c')]
  await registerCurator(client, { service: 'locked', id: 'a', port: a.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'locked'])
  await eventually(async () => (await get(proxy.url)).servedBy === 'a')

  // Anyone may write or delete it, no one may read it: getData answers NO_AUTH.
  const noRead = [new ACL(Permission.WRITE | Permission.DELETE | Permission.ADMIN, new Id('world', 'anyone'))]
  await zk(cb => client.create('/services/locked/hidden', curatorData({ service: 'locked', id: 'hidden', port: hidden.port }), noRead, CreateMode.EPHEMERAL, cb))
  await registerCurator(client, { service: 'locked', id: 'c', port: c.port })
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === 'a,c', { message: 'c joins despite the unreadable child' })
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_invalid_registrations_total', { reason: 'unreadable' }), 1)
  for (let i = 0; i < 6; i++) t.not((await get(proxy.url)).servedBy, 'hidden')
  t.equal(hidden.hits, 0)
})

t.test('a service node fleetgate may not list (its ACL): the last membership is kept and the list retried ever less often', async t => {
  const client = await zkClient(t, server.connectString)
  const [a, b] = [await startBackend(t, 'a'), await startBackend(t, 'b')]
  await registerCurator(client, { service: 'sealed', id: 'a', port: a.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'sealed'])
  await eventually(async () => (await get(proxy.url)).servedBy === 'a')

  const acl = (permissions: number) => zk(cb => client.setACL('/services/sealed', [new ACL(permissions, new Id('world', 'anyone'))], -1, cb))
  await acl(Permission.WRITE | Permission.CREATE | Permission.DELETE | Permission.ADMIN)
  // ZooKeeper tells no one who may not read the node that a child came; a's data watch still fires,
  // and the sync it brings answers NO_AUTH when it lists the children.
  await registerCurator(client, { service: 'sealed', id: 'b', port: b.port })
  await zk(cb => client.setData('/services/sealed/a', curatorData({ service: 'sealed', id: 'a', port: a.port }), -1, cb))
  await proxy.waitForOutput(/"retryMs":2000,.*"zookeeper sync failed; keeping the last membership"/, 30_000)
  const failures = proxy.output().split('\n').filter(line => line.includes('"zookeeper sync failed')).map(line => JSON.parse(line) as { time: number, retryMs: number })
  t.same(failures.slice(0, 4).map(f => f.retryMs), [250, 500, 1000, 2000], 'each retry waits twice as long')
  t.ok(failures[3]!.time - failures[0]!.time >= 1_700, `the fourth try came ${failures[3]!.time - failures[0]!.time} ms after the first`)
  t.equal((await get(proxy.url)).servedBy, 'a', 'the last membership still serves')
  t.ok((await proxy.status()).source.stale, 'and /status says it may lag the registry')
  t.equal(sample(await proxy.metrics(), 'fleetgate_discovery_stale'), 1, 'and so does fleetgate_discovery_stale')

  await acl(Permission.ALL)
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === 'a,b', { timeoutMs: 30_000, message: 'b joins once the list may be read' })
  await eventually(async () => !(await proxy.status()).source.stale, { message: 'current again' })
  t.equal(sample(await proxy.metrics(), 'fleetgate_discovery_stale'), 0)
})

t.test('retries go to a different instance; with none left the answer is 503, as Envoy and HAProxy answer it', async t => {
  const client = await zkClient(t, server.connectString)
  const deadPorts = [await freePort(), await freePort()]
  for (const [i, port] of deadPorts.entries()) await registerCurator(client, { service: 'dead', id: `dead-${i}`, port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'dead'])
  await eventually(async () => (await proxy.status()).instances.length === 2)
  const res = await get(proxy.url)
  t.equal(res.status, 503)
  t.equal(JSON.parse(res.body).error, 'FLEETGATE_ERR_UPSTREAM_CONNECT')
  t.equal(res.headers['retry-after'], '1', 'nothing was sent: the client may try again shortly')
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_retries_total', { reason: 'connect_failure' }), 1, 'one retry was sent; the third try had no instance left')
  t.equal(sample(metrics, 'fleetgate_upstream_connect_failures_total'), 2, 'a refused connect on each')
  t.same((await proxy.status()).instances.map(i => [i.requests, i.errors]), [[1, 1], [1, 1]], 'each tried once, each an error once: the 503 is not a second')
  const upgrade = await raw(proxy.url, 'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
  t.match(upgrade, /^HTTP\/1\.1 503 [^]*"error":"FLEETGATE_ERR_UPSTREAM_CONNECT"/, 'a WebSocket upgrade likewise')
  t.same((await proxy.status()).instances.map(i => [i.requests, i.errors]), [[2, 2], [2, 2]], 'and it too counts each refused connect once')
  const alive = await startBackend(t, 'alive')
  await registerCurator(client, { service: 'dead', id: 'alive', port: alive.port })
  await eventually(async () => (await proxy.status()).instances.length === 3)
  for (let i = 0; i < 9; i++) {
    const r = await get(proxy.url, '/', 'POST')
    t.equal(r.servedBy, 'alive', 'a refused connect is retried elsewhere, POST included (nothing was sent)')
  }
  const states = (await proxy.status()).instances.filter(i => i.id.startsWith('dead')).map(i => i.state)
  t.same(states, ['ejected', 'ejected'], 'instances that refused are ejected')
})

t.test('a reset is an error of the instance that reset, on the status page, whether the GET is retried elsewhere or a POST gets 502', async t => {
  const [reset, ok] = await Promise.all([startBackend(t, 'reset'), startBackend(t, 'ok')])
  reset.handle(req => { req.socket.destroy() })
  const proxy = await startProxy(t, ['--static', [reset, ok].map(b => `http://127.0.0.1:${b.port}`).join(',')])
  await eventually(async () => (await proxy.status()).instances.length === 2)
  const statuses: number[] = []
  for (let i = 0; i < 6; i++) statuses.push((await get(proxy.url)).status)
  for (let i = 0; i < 6; i++) statuses.push((await get(proxy.url, '/', 'POST')).status)
  const failedPosts = statuses.filter(status => status === 502).length
  t.equal(statuses.filter(status => status === 200).length, 12 - failedPosts, 'every GET served, and each POST the reset did not take')
  t.ok(failedPosts > 0 && reset.hits > failedPosts, `the instance reset ${reset.hits}: ${failedPosts} POSTs, the rest GETs`)
  const byAddress = new Map((await proxy.status()).instances.map(i => [i.address, i]))
  const failing = byAddress.get(`127.0.0.1:${reset.port}`)!
  t.same([failing.requests, failing.errors], [reset.hits, reset.hits], 'each reset an error once: the GETs served elsewhere too, the 502s not twice')
  t.equal(byAddress.get(`127.0.0.1:${ok.port}`)!.errors, 0, 'the instance that served them has none')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { instance: `127.0.0.1:${reset.port}`, code: '502' }), failedPosts, 'the 502s are counted under the instance that reset')
})

t.test('with every instance ejected, the first that answers again is back at once, not after its ejection', async t => {
  const ports = [await freePort(), await freePort(), await freePort()]
  // One try a request, and ejections far longer than the test: only a readmission serves them all.
  const proxy = await startProxy(t, ['--static', ports.map(port => `http://127.0.0.1:${port}`).join(','),
    '--tries', '1', '--eject-base-ms', '60000', '--eject-max-ms', '60000'])
  await eventually(() => proxy.ready())
  for (let i = 0; i < 3; i++) t.equal((await get(proxy.url)).status, 503, 'every instance refuses, and is ejected')
  t.same((await proxy.status()).instances.map(i => i.state), ['ejected', 'ejected', 'ejected'])

  const back = createServer((req, res) => { req.resume(); res.end('back') })
  t.teardown(() => new Promise(resolve => { back.closeAllConnections(); back.close(resolve) }))
  await new Promise<void>(resolve => back.listen(ports[1], '127.0.0.1', resolve))
  // In panic the ejected instances take requests in turn: the first to reach the one that is back ends its ejection.
  await eventually(async () => (await get(proxy.url)).status === 200, { message: 'a request reaches the instance that is back' })
  const statuses = []
  for (let i = 0; i < 12; i++) statuses.push((await get(proxy.url)).status)
  t.same(statuses, Array(12).fill(200), 'then every request goes to it, none to those still refusing')
  const states = Object.fromEntries((await proxy.status()).instances.map(i => [i.address, i.state]))
  t.same(states, { [`127.0.0.1:${ports[0]}`]: 'ejected', [`127.0.0.1:${ports[1]}`]: 'up', [`127.0.0.1:${ports[2]}`]: 'ejected' }, 'only the one that answered is back')
  t.match(proxy.output(), /ejected instance answered: back in rotation/)
})

t.test('--eject-after-errors: an instance that answers 500 after 500 is ejected and the others take its share', async t => {
  const good = await startBackend(t, 'good')
  // A Superset whose metadata database is gone: its /health still answers, everything else is a 500.
  // Its second request it reads whole and drops without an answer, which counts the same.
  const broken = await startBackend(t, 'broken')
  broken.handle((req, res) => {
    req.resume()
    if (broken.hits === 2) return req.on('end', () => req.socket.destroy())
    res.statusCode = 500
    res.end('database gone')
  })
  const list = `http://127.0.0.1:${good.port},http://127.0.0.1:${broken.port}`
  const proxy = await startProxy(t, ['--static', list, '--eject-after-errors', '3', '--eject-base-ms', '60000', '--eject-max-ms', '60000'])
  await eventually(() => proxy.ready())
  // POSTs with a body (Superset's queries and chart data): one reset is not retried.
  const answers = []
  for (let i = 0; i < 14; i++) answers.push(await get(proxy.url, '/', 'POST'))
  t.equal(broken.hits, 3, 'a 500, a reset and a 500: three in a row, then nothing more')
  t.same(answers.filter(r => r.status !== 200).map(r => `${r.servedBy ?? 'fleetgate'} ${r.status}`), ['broken 500', 'fleetgate 502', 'broken 500'],
    'the answers went to their clients as they came')
  t.ok(answers.slice(-8).every(r => r.servedBy === 'good'), 'the ejected instance gets nothing more')
  const brokenAddress = `127.0.0.1:${broken.port}`
  t.equal((await proxy.status()).instances.find(i => i.address === brokenAddress)?.state, 'ejected')
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_ejections_total', { instance: brokenAddress }), 1)
  t.equal(sample(metrics, 'fleetgate_ejections_after_errors_total', { instance: brokenAddress }), 1, 'counted as after errors too')
  await proxy.waitForOutput(/"serverErrors":3,"msg":"instance ejected after server errors in a row"/)

  // Without the flag, answers never eject: every other request still goes to the broken instance.
  const plain = await startProxy(t, ['--static', list])
  await eventually(() => plain.ready())
  const statuses = []
  for (let i = 0; i < 10; i++) statuses.push((await get(plain.url)).status)
  t.equal(statuses.filter(s => s === 500).length, 5, 'half are 500s')
  t.match(await plain.metrics(), new RegExp(`fleetgate_ejections_total\\{[^}]*instance="${brokenAddress}"[^}]*\\} 0\\n`), 'and no ejection')
})

t.test('an answer that is not HTTP gets 502, after a whole upload too', async t => {
  const garbled = await startBackend(t, 'garbled')
  garbled.handle(req => {
    req.resume()
    req.on('end', () => req.socket.end('this is not http\r\n\r\n'))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${garbled.port}`])
  await eventually(() => proxy.ready())
  for (const method of ['GET', 'POST'] as const) {
    const res = await get(proxy.url, '/', method)
    t.equal(res.status, 502, `${method}: 502`)
    t.equal(JSON.parse(res.body).error, 'FLEETGATE_ERR_UPSTREAM_PROTOCOL', `${method}: the instance's broken answer, not the client's doing`)
  }
})

t.test('--eject-after-errors counts the answers to WebSocket upgrades too', async t => {
  const refusing = await startBackend(t, 'refusing')
  const failing = await startBackend(t, 'failing')
  const upgrades = { refusing: 0, failing: 0 }
  for (const [backend, answer] of [[refusing, '403 Forbidden'], [failing, '503 Service Unavailable']] as const) {
    backend.server.on('upgrade', (_req, socket: Socket) => {
      upgrades[backend.name as keyof typeof upgrades]++
      socket.end(`HTTP/1.1 ${answer}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n`)
    })
  }
  const list = `http://127.0.0.1:${refusing.port},http://127.0.0.1:${failing.port}`
  const proxy = await startProxy(t, ['--static', list, '--eject-after-errors', '2', '--eject-base-ms', '60000', '--eject-max-ms', '60000'])
  await eventually(() => proxy.ready())
  const { port } = new URL(proxy.url)
  for (let i = 0; i < 6; i++) {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1')
      socket.setEncoding('utf8').once('data', (s: string) => { socket.destroy(); resolve(s) })
      socket.on('error', reject)
      socket.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n')
    })
    t.match(answer, /^HTTP\/1\.1 (403|503) /)
  }
  t.same(upgrades, { refusing: 4, failing: 2 }, 'two 503s in a row, then the failing instance gets no more')
  t.equal(sample(await proxy.metrics(), 'fleetgate_ejections_total', { instance: `127.0.0.1:${failing.port}` }), 1)
  t.match(await proxy.metrics(), new RegExp(`fleetgate_ejections_total\\{[^}]*instance="127\\.0\\.0\\.1:${refusing.port}"[^}]*\\} 0\\n`), 'a refusal is an answer, not a failure')
})

t.test('a slow upload does not count against the headers timeout, only the wait for the answer does', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startBackend(t, 'upload')
  backend.handle((req, res) => {
    let received = 0
    req.on('data', (c: Buffer) => { received += c.length })
    req.on('end', () => res.end(String(received)))
  })
  await registerCurator(client, { service: 'upload', id: 'upload', port: backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'upload', '--headers-timeout-ms', '500'])
  await eventually(() => proxy.ready())
  // 2 s of upload, a chunk every 100 ms: four headers timeouts long, never idle for one.
  const chunks = 20
  const body = new Readable({ read () {} })
  let sent = 0
  const pump = setInterval(() => {
    body.push(Buffer.alloc(1024, 'u'))
    if (++sent === chunks) { clearInterval(pump); body.push(null) }
  }, 100)
  t.teardown(() => clearInterval(pump))
  const res = await request(`${proxy.url}/upload`, { method: 'POST', body, headers: { 'content-length': String(chunks * 1024) } })
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), String(chunks * 1024), 'the whole upload reached the instance')
})

t.test('an upload the client stops sending gets 408; one the instance stops reading gets 504', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startBackend(t, 'stalled-upload')
  let received = 0
  backend.handle((req, res) => {
    // Neither ever answers: /reads takes what comes, /deaf reads nothing at all...
    if (req.url === '/reads') req.on('data', (c: Buffer) => { received += c.length })
    // ...and /early sends its head at once, then waits for the rest of the upload.
    if (req.url === '/early') {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.write('accepted\n')
      req.resume()
    }
  })
  await registerCurator(client, { service: 'stalled-upload', id: 'a', port: backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'stalled-upload', '--idle-timeout-ms', '500', '--headers-timeout-ms', '500'])
  await eventually(() => proxy.ready())
  const answer = async (head: string, body: Buffer): Promise<string> => {
    const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1')
    t.teardown(() => socket.destroy())
    let text = ''
    socket.setEncoding('latin1').on('data', (s: string) => { text += s }).on('error', () => {})
    socket.write(head)
    socket.write(body)
    await eventually(() => /\r\n\r\n\{.*\}/.test(text), { message: 'an answer' })
    return text
  }

  // 10 bytes of 1,000, then nothing.
  const stalled = await answer('POST /reads HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n', Buffer.alloc(10, 'u'))
  t.match(stalled, /^HTTP\/1\.1 408 /)
  t.match(stalled, /\r\nconnection: close\r\n/i, 'the connection cannot carry another request')
  t.match(stalled, /"error":"FLEETGATE_ERR_CLIENT_TIMEOUT"/)
  t.equal(received, 10, 'the instance got what was sent')

  // 64 MB that the instance never reads: the proxy holds the client back, and the wait is the instance's.
  const MB = 1024 * 1024
  const deaf = await answer(`POST /deaf HTTP/1.1\r\nHost: x\r\nContent-Length: ${64 * MB}\r\n\r\n`, Buffer.alloc(64 * MB, 'u'))
  t.match(deaf, /^HTTP\/1\.1 504 /)
  t.match(deaf, /"error":"FLEETGATE_ERR_UPSTREAM_TIMEOUT"/)

  // An instance that answered before the upload ended: the status line is gone, so the client's stall
  // can only cut the connection, and it is not the instance's cut-off.
  const early = connect(Number(new URL(proxy.url).port), '127.0.0.1')
  t.teardown(() => early.destroy())
  let earlyText = ''
  early.setEncoding('latin1').on('data', (s: string) => { earlyText += s }).on('error', () => {})
  const earlyClosed = new Promise(resolve => early.on('close', resolve))
  early.write('POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n')
  early.write(Buffer.alloc(10, 'u'))
  await earlyClosed
  t.match(earlyText, /^HTTP\/1\.1 200 [^]*accepted/, 'the early answer reached the client before the cut')

  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { service: 'stalled-upload', code: '408' }), 1)
  t.equal(sample(metrics, 'fleetgate_requests_total', { service: 'stalled-upload', code: '504' }), 1)
  t.equal(sample(metrics, 'fleetgate_responses_cut_off_total', { service: 'stalled-upload' }), 0, 'the client\'s stall is not the instance\'s cut-off')
  t.equal((await proxy.status()).instances[0]?.errors, 1, 'the instance\'s errors: the 504 alone')
})

t.test('a retried request gets the headers timeout on its second instance too', async t => {
  const client = await zkClient(t, server.connectString)
  const [reset, silent] = await Promise.all([startBackend(t, 'reset'), startBackend(t, 'silent')])
  reset.handle(req => { req.socket.destroy() })
  silent.handle(() => { /* never answers */ })
  for (const b of [reset, silent]) await registerCurator(client, { service: 'retry-timeout', id: b.name, port: b.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'retry-timeout', '--headers-timeout-ms', '500'])
  await eventually(async () => (await proxy.status()).instances.length === 2)
  // In rotation, one of the two starts on the instance that resets and is retried on the silent one.
  for (let i = 0; i < 2; i++) {
    const res = await get(proxy.url)
    t.equal(res.status, 504, `request ${i + 1}`)
  }
  t.equal(silent.hits, 2, 'both ended on the silent instance')
  t.ok(reset.hits >= 1, `${reset.hits} of them retried from the instance that reset it, then timed out`)
})

t.test('an instance that does not answer in time gets 504', async t => {
  const client = await zkClient(t, server.connectString)
  const slow = await startBackend(t, 'slow')
  slow.handle(() => { /* never answers */ })
  await registerCurator(client, { service: 'slow', id: 'slow', port: slow.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'slow', '--headers-timeout-ms', '500'])
  await eventually(() => proxy.ready())
  const res = await get(proxy.url)
  t.equal(res.status, 504)
  t.equal(JSON.parse(res.body).error, 'FLEETGATE_ERR_UPSTREAM_TIMEOUT')
  t.equal(slow.hits, 1, 'a request that was sent is not retried')
})

/** A backend whose requests wait until released; it records the most it held at once, and each start in `started`. */
async function holdingBackend (t: Parameters<typeof startBackend>[0], name: string, started: string[] = []) {
  const backend = await startBackend(t, name)
  const held: ServerResponse[] = []
  let most = 0
  backend.handle((req, res) => {
    started.push(req.url!)
    held.push(res)
    most = Math.max(most, held.length)
    res.on('close', () => held.splice(held.indexOf(res), 1))
  })
  return {
    backend,
    get held () { return held.length },
    get most () { return most },
    releaseOne: () => held[0]?.end(name),
  }
}

/** Two holding backends registered as `service`, behind a proxy that lets each carry one request at a time. */
async function limitedPair (t: Parameters<typeof startBackend>[0], service: string, startedOnA: string[], startedOnB: string[]) {
  const client = await zkClient(t, server.connectString)
  const a = await holdingBackend(t, `${service}-a`, startedOnA)
  const b = await holdingBackend(t, `${service}-b`, startedOnB)
  for (const h of [a, b]) await registerCurator(client, { service, id: h.backend.name, port: h.backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', service, '--max-connections-per-instance', '1'])
  await eventually(async () => (await proxy.status()).instances.length === 2)
  return { a, b, proxy }
}

t.test('at --max-connections-per-instance, requests wait in arrival order and all are served', async t => {
  const started: string[] = []
  const { a, b, proxy } = await limitedPair(t, 'limit', started, started)
  const queued = async () => sample(await proxy.metrics(), 'fleetgate_queued_requests', { service: 'limit' })

  // Sent one by one, so their arrival order is known: two start, four wait.
  const answers: Array<ReturnType<typeof get>> = []
  for (let i = 0; i < 6; i++) {
    answers.push(get(proxy.url, `/r${i}`))
    await eventually(async () => started.length + await queued() === i + 1)
  }
  t.equal(started.length, 2, 'one request on each instance')
  t.equal(await queued(), 4, 'four queued')
  t.same((await proxy.status()).queue, { limitPerInstance: 1, timeoutMs: 5000, waiting: 4, timedOut: 0 }, '/status shows the limit and the queue')

  // Each answer frees a connection, and the longest-waiting request takes it.
  for (let released = 1; released <= 6; released++) {
    ;(a.held > 0 ? a : b).releaseOne()
    await eventually(() => started.length === Math.min(6, 2 + released) && a.held + b.held === Math.min(2, 6 - released))
  }
  const results = await Promise.all(answers)
  t.same(results.map(r => r.status), [200, 200, 200, 200, 200, 200], 'every request served')
  t.equal(a.most, 1, 'instance a never carried more than one')
  t.equal(b.most, 1, 'instance b never carried more than one')
  t.same(started.slice(2), ['/r2', '/r3', '/r4', '/r5'], 'the queued ones started in arrival order')
  t.equal(await queued(), 0)
})

t.test('a request that waits out --queue-timeout-ms gets 503 and never reaches an instance; one whose client leaves is dropped', async t => {
  const client = await zkClient(t, server.connectString)
  const started: string[] = []
  const busy = await holdingBackend(t, 'queue-timeout', started)
  await registerCurator(client, { service: 'queue-timeout', id: 'busy', port: busy.backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'queue-timeout', '--max-connections-per-instance', '1', '--queue-timeout-ms', '300'])
  await eventually(() => proxy.ready())
  const queued = async () => sample(await proxy.metrics(), 'fleetgate_queued_requests', { service: 'queue-timeout' })

  const first = get(proxy.url, '/first')
  await eventually(() => busy.held === 1)
  const waited = await get(proxy.url, '/second')
  t.equal(waited.status, 503)
  t.equal(JSON.parse(waited.body).error, 'FLEETGATE_ERR_QUEUE_TIMEOUT')
  t.equal(sample(await proxy.metrics(), 'fleetgate_queue_timeouts_total', { service: 'queue-timeout' }), 1)
  t.same((await proxy.status()).queue, { limitPerInstance: 1, timeoutMs: 300, waiting: 0, timedOut: 1 }, '/status counts it too')

  // A client that gives up while queued leaves the queue; its request is never sent.
  const controller = new AbortController()
  const abandoned = request(`${proxy.url}/abandoned`, { signal: controller.signal }).catch((err: Error) => err)
  await eventually(async () => await queued() === 1)
  controller.abort()
  t.ok(await abandoned instanceof Error)
  await eventually(async () => await queued() === 0)
  t.equal(sample(await proxy.metrics(), 'fleetgate_queue_timeouts_total', { service: 'queue-timeout' }), 1, 'it left the queue at once, not by timing out')

  busy.releaseOne()
  t.equal((await first).status, 200, 'the request on the instance was never disturbed')
  const after = get(proxy.url, '/after')
  await eventually(() => busy.held === 1)
  busy.releaseOne()
  t.equal((await after).status, 200, 'the freed connection serves the next request')
  t.same(started, ['/first', '/after'], 'neither the timed-out nor the abandoned request reached the instance')
})

t.test('requests waiting for an instance that leaves the membership get 503 at once, not after the queue timeout', async t => {
  const client = await zkClient(t, server.connectString)
  const busy = await holdingBackend(t, 'queue-leaves')
  const path = await registerCurator(client, { service: 'queue-leaves', id: 'busy', port: busy.backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'queue-leaves', '--max-connections-per-instance', '1', '--queue-timeout-ms', '60000'])
  await eventually(() => proxy.ready())

  const first = get(proxy.url, '/first')
  await eventually(() => busy.held === 1)
  const waiting = get(proxy.url, '/waiting')
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_queued_requests', { service: 'queue-leaves' }) === 1)
  const startedAt = Date.now()
  await removeNode(client, path)
  const answer = await waiting
  t.equal(answer.status, 503)
  t.equal(JSON.parse(answer.body).error, 'FLEETGATE_ERR_NO_LIVE_INSTANCE')
  t.ok(Date.now() - startedAt < 30_000, 'well before the 60 s queue timeout')
  busy.releaseOne()
  t.equal((await first).status, 200, 'the request already on the instance finishes')
})

t.test('a request waiting behind a busy instance starts on another as soon as that one\'s ejection runs out', async t => {
  const client = await zkClient(t, server.connectString)
  const busy = await holdingBackend(t, 'eject-wake-b')
  // Nothing listens on a's port yet: the first request is refused there, ejecting it, and ends up held on b.
  const portA = await freePort()
  await registerCurator(client, { service: 'eject-wake', id: 'a', port: portA })
  await registerCurator(client, { service: 'eject-wake', id: 'b', port: busy.backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'eject-wake',
    '--max-connections-per-instance', '1', '--eject-base-ms', '1500', '--queue-timeout-ms', '20000'])
  await eventually(async () => (await proxy.status()).instances.length === 2)

  const first = get(proxy.url, '/first')
  await eventually(() => busy.held === 1)
  t.equal((await proxy.status()).instances.find(i => i.id === 'a')?.state, 'ejected')
  const waiting = get(proxy.url, '/waiting')
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_queued_requests', { service: 'eject-wake' }) === 1)

  // a comes up while ejected; nothing ends on b, so only the end of the ejection can start the waiter.
  const a = createServer((_req, res) => { res.setHeader('x-served-by', 'a'); res.end('a') })
  await new Promise<void>(resolve => a.listen(portA, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => { a.closeAllConnections(); a.close(() => resolve()) }))
  const startedAt = Date.now()
  const answer = await waiting
  t.equal(answer.status, 200)
  t.equal(answer.servedBy, 'a', 'served by the instance whose ejection ran out')
  t.ok(Date.now() - startedAt < 10_000, 'long before the 20 s queue timeout')
  t.equal(busy.held, 1, 'while b still holds the first request')
  busy.releaseOne()
  t.equal((await first).status, 200)
})

t.test('an instance that crashes mid-request at the connection limit: its request and the queued ones are all served by the other, one at a time', async t => {
  const onA: string[] = []
  const onB: string[] = []
  const { a, b, proxy } = await limitedPair(t, 'crash', onA, onB)

  // One request on each instance, two waiting.
  const answers: Array<ReturnType<typeof get>> = []
  for (let i = 0; i < 4; i++) {
    answers.push(get(proxy.url, `/c${i}`))
    await eventually(async () => onA.length + onB.length + (await proxy.status()).queue.waiting === i + 1)
  }
  t.same([a.held, b.held], [1, 1])

  // a dies: its request is reset before any answer, and its port refuses connections from now on.
  await a.backend.close()
  // b takes the three others one by one as each answer frees its only connection.
  for (let k = 1; k <= 4; k++) {
    await eventually(() => onB.length === k && b.held === 1, { message: `request ${k} on b` })
    b.releaseOne()
  }
  const results = await Promise.all(answers)
  t.same(results.map(r => r.status), [200, 200, 200, 200], 'no request failed')
  t.same(results.map(r => r.servedBy), ['crash-b', 'crash-b', 'crash-b', 'crash-b'], 'all answered by the survivor')
  t.equal(onA.length, 1, 'the crashed instance got only the request it was holding')
  t.equal(b.most, 1, 'the limit held on the survivor throughout')
  t.same((await proxy.status()).queue, { limitPerInstance: 1, timeoutMs: 5000, waiting: 0, timedOut: 0 })
})
