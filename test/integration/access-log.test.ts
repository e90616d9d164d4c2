// End to end: with --access-log json, the real `fleetgate proxy` writes one JSON line per request to
// stdout: answered by an instance, by the proxy itself, left by its client, and WebSocket upgrades.
// Without it, none.

import { connect } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import WebSocket, { WebSocketServer } from 'ws'
import { eventually } from '../helpers/eventually.ts'
import { startBackend, startProxy, type FleetgateProcess } from '../helpers/fleet.ts'
import { freePort } from '../helpers/zookeeper.ts'

interface AccessLine {
  name: string, service: string, msg: string, client: string | null, method: string, host: string | null, url: string,
  status: number, instance: string | null, tries: number, ms: number, bytes: number
}

/** The access log's lines printed so far. */
function accessLines (proxy: FleetgateProcess): AccessLine[] {
  return proxy.output().split('\n').filter(line => line.includes('"name":"fleetgate-access"')).map(line => JSON.parse(line) as AccessLine)
}

t.test('a JSON line per request: answered, refused, left by the client, and upgraded', async t => {
  const backend = await startBackend(t, 'a')
  const wss = new WebSocketServer({ server: backend.server })
  wss.on('connection', socket => socket.send('hello'))
  t.teardown(() => wss.close())
  const dead = await freePort()
  const body = 'x'.repeat(1234)
  backend.handle((req, res) => {
    req.resume()
    if (req.url === '/slow') return // answered never: the client leaves first
    req.on('end', () => res.end(body))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--access-log', 'json', '--service', 'bi'])
  const other = await startProxy(t, ['--static', `http://127.0.0.1:${dead}`, '--access-log', 'json', '--tries', '1'])

  const answered = await request(`${proxy.url}/superset/dashboard/1/?standalone=1`, { headers: { host: 'bi.example.com' } })
  t.equal(answered.statusCode, 200)
  t.equal((await answered.body.text()).length, 1234)
  const posted = await request(`${proxy.url}/api/v1/chart/data`, { method: 'POST', body: '{"q":1}', headers: { 'content-type': 'application/json' } })
  await posted.body.dump()
  const refused = await request(`${other.url}/health`)
  t.equal(refused.statusCode, 503, 'the other proxy\'s one instance refuses connections')
  await refused.body.dump()
  const controller = new AbortController()
  const left = request(`${proxy.url}/slow`, { signal: controller.signal }).catch(() => 'aborted')
  await eventually(() => backend.hits >= 3, { message: 'the slow request reached the instance' })
  controller.abort()
  t.equal(await left, 'aborted')
  const ws = new WebSocket(`${proxy.url.replace('http', 'ws')}/ws`)
  t.teardown(() => ws.terminate())
  await new Promise((resolve, reject) => { ws.once('message', resolve); ws.once('error', reject) })

  const lines = await eventually(() => {
    const found = accessLines(proxy)
    return found.length >= 4 ? found : undefined
  }, { message: 'four access lines from the first proxy' })
  const [get, post, gone, upgrade] = lines! as [AccessLine, AccessLine, AccessLine, AccessLine]
  const instance = `127.0.0.1:${backend.port}`
  t.match(get, {
    name: 'fleetgate-access', service: 'bi', msg: 'request', client: '127.0.0.1', method: 'GET', host: 'bi.example.com',
    url: '/superset/dashboard/1/?standalone=1', status: 200, instance, tries: 1, bytes: 1234,
  }, 'an answered GET: who asked, what, the status, the instance, and the body bytes it sent')
  t.ok(get.ms > 0 && get.ms < 30_000, `with its duration in ms (${get.ms})`)
  t.match(post, { method: 'POST', url: '/api/v1/chart/data', status: 200, instance, bytes: 1234 }, 'a POST')
  t.match(gone, { method: 'GET', url: '/slow', status: 499, instance, bytes: 0 }, 'a client that left before the answer: 499, as NGINX logs it')
  t.match(upgrade, { method: 'GET', url: '/ws', status: 101, instance, tries: 1 }, 'a WebSocket upgrade, at its answer')
  t.equal(lines!.length, 4, 'one line each, no more')

  const [failure] = await eventually(() => {
    const found = accessLines(other)
    return found.length >= 1 ? found : undefined
  }, { message: 'the other proxy\'s access line' }) as [AccessLine]
  t.match(failure, { url: '/health', status: 503, instance: `127.0.0.1:${dead}`, tries: 1, bytes: 0, service: 'superset' }, 'an answer of the proxy\'s own: the instance it tried')
})

t.test('without --access-log, no line per request', async t => {
  const backend = await startBackend(t, 'b')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  for (let i = 0; i < 5; i++) {
    const res = await request(`${proxy.url}/x/${i}`)
    t.equal(res.statusCode, 200)
    await res.body.dump()
  }
  t.equal(backend.hits, 5)
  t.same(accessLines(proxy), [], 'no access line')
  t.notMatch(proxy.output(), /"msg":"request"/)
})

/** Sends `raw` on a new connection and resolves with what came back once the proxy closes it, or after `ms`. */
function rawExchange (url: string, raw: string, ms = 2_000): Promise<string> {
  const { port } = new URL(url)
  return new Promise(resolve => {
    let got = ''
    const socket = connect(Number(port), '127.0.0.1', () => socket.write(raw))
    const done = (): void => { clearTimeout(timer); socket.destroy(); resolve(got) }
    const timer = setTimeout(done, ms)
    socket.setEncoding('latin1').on('data', (s: string) => { got += s })
    socket.on('close', done).on('error', done)
  })
}

t.test('a client that left while its request waited in the queue is named by its address', async t => {
  const backend = await startBackend(t, 'c')
  backend.handle((req, res) => {
    req.resume()
    setTimeout(() => res.end('done'), 1_500)
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--access-log', 'json', '--max-connections-per-instance', '1'])
  const first = request(`${proxy.url}/busy`)
  await eventually(() => backend.hits >= 1, { message: 'the first request holds the one connection' })
  const controller = new AbortController()
  const queued = request(`${proxy.url}/queued`, { signal: controller.signal }).catch(() => 'aborted')
  await new Promise(resolve => setTimeout(resolve, 200))
  controller.abort()
  t.equal(await queued, 'aborted')
  await (await first).body.dump()
  const lines = await eventually(() => {
    const found = accessLines(proxy)
    return found.length >= 2 ? found : undefined
  }, { message: 'two access lines' })
  const left = lines!.find(line => line.url === '/queued')
  t.match(left, { status: 499, instance: null, tries: 0, client: '127.0.0.1' }, 'its client address, though the connection is gone')
})

t.test('requests the proxy refuses outside the forwarding path are logged too: 417, an upgrade without Host, CONNECT', async t => {
  const backend = await startBackend(t, 'd')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--access-log', 'json'])
  const expectation = await rawExchange(proxy.url, 'POST /upload HTTP/1.1\r\nHost: a\r\nExpect: magic\r\nContent-Length: 2\r\n\r\nhi')
  t.match(expectation, /^HTTP\/1\.1 417 /)
  const upgrade = await rawExchange(proxy.url, 'GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n')
  t.match(upgrade, /^HTTP\/1\.1 400 /)
  const tunnel = await rawExchange(proxy.url, 'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n')
  t.match(tunnel, /^HTTP\/1\.1 400 /)
  const lines = await eventually(() => {
    const found = accessLines(proxy)
    return found.length >= 3 ? found : undefined
  }, { message: 'three access lines', timeoutMs: 3_000 })
  t.match(lines, [
    { method: 'POST', url: '/upload', host: 'a', status: 417, instance: null, tries: 0, bytes: 0, client: '127.0.0.1' },
    { method: 'GET', url: '/ws', host: null, status: 400, instance: null, tries: 0, bytes: 0 },
    { method: 'CONNECT', url: 'example.com:443', status: 400, instance: null, tries: 0, bytes: 0 },
  ])
  t.equal(lines!.length, 3, 'one line each')
  t.equal(backend.hits, 0, 'none reached the instance')
})

t.test('a request cut off at the shutdown deadline still gets its line before the proxy exits', async t => {
  const backend = await startBackend(t, 'e')
  backend.handle(req => { req.resume() }) // never answered
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--access-log', 'json', '--shutdown-timeout-ms', '300'])
  const hung = request(`${proxy.url}/export.csv`).then(res => res.body.dump(), () => 'cut')
  await eventually(() => backend.hits >= 1, { message: 'the request reached the instance' })
  proxy.kill('SIGTERM')
  t.equal(await hung, 'cut', 'the client was cut off at the deadline')
  t.equal((await proxy.exited).code, 0)
  const lines = accessLines(proxy)
  t.match(lines, [{ url: '/export.csv', instance: `127.0.0.1:${backend.port}`, tries: 1, client: '127.0.0.1' }], 'its line, written before the exit')
  t.equal(lines.length, 1)
})
