// End to end: bad HTTP input gets a 4xx or a clean close and the proxy keeps serving; bad configuration
// stops start-up with a clear message and a non-zero exit.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import http, { type IncomingMessage } from 'node:http'
import { connect, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Duplex } from 'node:stream'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { get, raw, runFleetgate, sample, startBackend, startProxy } from '../helpers/fleet.ts'

t.test('malformed, oversize and aborted requests', async t => {
  const backend = await startBackend(t, 'a')
  let aborted = 0
  let seen: { url?: string, host?: string, forwardedHost?: string } = {}
  backend.handle((req, res) => {
    seen = { url: req.url, host: req.headers.host, forwardedHost: String(req.headers['x-forwarded-host']) }
    req.on('aborted', () => { aborted++ })
    req.on('error', () => undefined)
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  await eventually(() => proxy.ready())

  const malformed = await raw(proxy.url, 'GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n')
  t.match(malformed, /^HTTP\/1\.1 400 [^]*connection: close[^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/, 'malformed header: 400, as the proxy\'s other errors are answered')
  const oversize = await raw(proxy.url, `GET / HTTP/1.1\r\nHost: x\r\nx-big: ${'a'.repeat(100 * 1024)}\r\n\r\n`)
  t.match(oversize, /^HTTP\/1\.1 431 [^]*"error":"FLEETGATE_ERR_HEADERS_TOO_LARGE"/, 'oversize header: 431')
  // Requests Node accepts that cannot be forwarded as they are: the client's fault, not the instance's.
  const hitsBeforeBad = backend.hits
  for (const request of ['GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 'OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n']) {
    const answer = await raw(proxy.url, request, { until: answer => answer.endsWith('}') })
    t.match(answer, /^HTTP\/1\.1 400 [^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/, `${JSON.stringify(request.split('\r\n')[0])}: 400`)
  }
  // A transfer coding the proxy would pass on undecoded: 501, as Envoy answers, and the connection closes.
  const gzipped = await raw(proxy.url, 'POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n')
  t.match(gzipped, /^HTTP\/1\.1 501 [^]*connection: close[^]*"error":"FLEETGATE_ERR_TRANSFER_CODING"/i, 'gzip, chunked: 501, connection closed')
  t.notMatch(gzipped, /HTTP\/1\.1 200/, 'nothing more is answered on that connection')
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_in_flight_requests') === 0, { message: 'nothing in flight' })
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { code: '499' }), 0, 'the GET pipelined behind it was never started')
  t.equal(backend.hits, hitsBeforeBad, 'nothing reached the instance')
  const chunked = await raw(proxy.url, 'POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n')
  t.match(chunked, /^HTTP\/1\.1 200 /, 'plain chunked, in any case, is forwarded')
  // An absolute-form target is a request like any other: the instance gets its path, and its authority as Host.
  const absolute = await raw(proxy.url, 'GET HTTP://App.Example:8088/explore/?x=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n')
  t.match(absolute, /^HTTP\/1\.1 200 /, 'an absolute-form target, even with an upper-case scheme, is served')
  t.same(seen, { url: '/explore/?x=1', host: 'app.example:8088', forwardedHost: 'app.example:8088' }, 'as its path, with its authority for Host')
  // A path that is not valid percent-encoding is the instance's to judge, as behind Envoy or HAProxy.
  for (const path of ['/files/100%', '/x/%FF/%zz']) {
    const answer = await raw(proxy.url, `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
    t.match(answer, /^HTTP\/1\.1 200 /, `${path}: passed on`)
    t.equal(seen.url, path, `${path}: as it came`)
  }
  const counted = await proxy.metrics()
  t.equal(sample(counted, 'fleetgate_requests_total', { instance: 'none', code: '400' }), 3, 'counted as answered by no instance')
  t.equal(sample(counted, 'fleetgate_requests_total', { instance: 'none', method: 'OTHER', code: '431' }), 1, 'the 431 too (its method unread)')
  t.equal(sample(counted, 'fleetgate_requests_total', { instance: 'none', code: '501' }), 1, 'the 501 too')
  const [instance] = (await proxy.status()).instances
  t.equal(instance?.errors, 0, 'and not as the instance\'s errors')
  t.equal(instance?.requests, backend.hits, 'nor as its requests: /status counts what was sent to it')
  t.match(JSON.stringify([instance?.p50Ms, instance?.p99Ms]), /^\[\d+(\.\d{1,3})?,\d+(\.\d{1,3})?\]$/, 'its latencies in ms, to the microsecond')
  const longUrl = await get(proxy.url, `/superset/explore/?form_data=${'x'.repeat(30_000)}`)
  t.equal(longUrl.status, 200, 'a 30 KB URL, as Superset makes, still passes')

  const hitsBefore = backend.hits
  await raw(proxy.url, `POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n${'u'.repeat(1_000_000)}`, { destroyAfterWrite: true })
  await eventually(() => backend.hits === hitsBefore + 1 && aborted === 1, { message: 'the instance saw the upload aborted too' })
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_in_flight_requests') === 0, { message: 'nothing left in flight' })
  const afterAbort = await proxy.metrics()
  t.equal(sample(afterAbort, 'fleetgate_requests_total', { method: 'POST', code: '499' }), 1, 'the aborted upload counted as a client that left')
  t.equal(sample(afterAbort, 'fleetgate_requests_total', { instance: 'none', code: '400' }), 3, 'not as a request the proxy refused')

  for (let i = 0; i < 5; i++) t.equal((await get(proxy.url)).status, 200, 'still serving')
})

t.test('an HTTP/1.1 request without Host gets the proxy\'s 400, and nothing pipelined behind it is sent', async t => {
  const backend = await startBackend(t, 'hostless')
  const seen: string[] = []
  backend.handle((req, res) => {
    seen.push(`${req.method} ${req.url}`)
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  await eventually(() => proxy.ready())
  // A connection to the instance kept alive from before: a request would go out on it at once.
  t.equal((await get(proxy.url, '/warm')).status, 200)
  const answer = await raw(proxy.url, 'GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi')
  t.match(answer, /^HTTP\/1\.1 400 [^]*connection: close[^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/i, 'RFC 9112 3.2: a 400, answered as the proxy\'s other errors, and the connection closes')
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_in_flight_requests') === 0, { message: 'nothing in flight' })
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { instance: 'none', code: '400' }), 1, 'counted as answered by no instance')
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '499' }), 0, 'the POST behind it was never started')
  t.same(seen, ['GET /warm'], 'nor did it reach the instance')

  const upgrade = await raw(proxy.url, 'GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
  t.match(upgrade, /^HTTP\/1\.1 400 [^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/i, 'a WebSocket upgrade without Host is refused alike')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { instance: 'none', code: '400' }), 2, 'and counted')
  t.same(seen, ['GET /warm'], 'and never reaches the instance')
})

t.test('a WebSocket upgrade with a second Host, or a target that is not a path, is refused as a plain request is', async t => {
  const backend = await startBackend(t, 'two-hosts')
  const upgrades: string[] = []
  backend.server.on('upgrade', (req: IncomingMessage, socket: Duplex) => {
    upgrades.push(`${req.url} ${req.headers.host}`)
    socket.end('HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  const handshake = 'Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n'
  for (const head of ['GET /ws HTTP/1.1\r\nHost: a\r\nHost: b\r\n', 'GET * HTTP/1.1\r\nHost: a\r\n']) {
    t.match(await raw(proxy.url, head + handshake), /^HTTP\/1\.1 400 [^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/i, JSON.stringify(head))
  }
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { instance: 'none', code: '400' }), 2, 'counted as the proxy\'s')
  t.match(await raw(proxy.url, `GET /ws HTTP/1.1\r\nHost: a\r\n${handshake}`), /^HTTP\/1\.1 101 /, 'one with a single Host goes through')
  t.same(upgrades, ['/ws a'], 'only it reached the instance')
})

t.test('a malformed request pipelined behind one still being answered is refused after that answer', async t => {
  const backend = await startBackend(t, 'in-order')
  const seen: string[] = []
  backend.handle((req, res) => {
    seen.push(`${req.method} ${req.url}`)
    req.resume()
    req.on('end', () => setTimeout(() => res.end('done'), req.url === '/slow' ? 300 : 0))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  await eventually(() => proxy.ready())
  // A connection to the instance kept alive from before: the POST goes out on it at once, and runs.
  t.equal((await get(proxy.url, '/warm')).status, 200)
  const answer = await raw(proxy.url, 'POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi' +
    'GET / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n')
  // First, the 400 would be taken for the POST's answer, and the POST for refused (RFC 9112 9.3.2).
  t.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\ndoneHTTP\/1\.1 400 [^]*connection: close[^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/i,
    'the POST\'s answer whole, then the 400, and the connection closes')
  t.same(seen, ['GET /warm', 'POST /slow'])
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_in_flight_requests') === 0, { message: 'nothing in flight' })
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { method: 'POST', code: '200' }), 1, 'the POST counted as answered')
  t.equal(sample(metrics, 'fleetgate_requests_total', { instance: 'none', code: '400' }), 1, 'the malformed one as refused')
})

t.test('an upload whose chunked body turns out malformed gets the proxy\'s 400, counted once', async t => {
  const backend = await startBackend(t, 'bad-chunk')
  backend.handle((req, res) => {
    req.on('error', () => undefined)
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  await eventually(() => proxy.ready())
  const answer = await raw(proxy.url, 'POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nnot a chunk size\r\n')
  t.match(answer, /^HTTP\/1\.1 400 [^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/i, 'refused as a malformed request')
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_in_flight_requests') === 0, { message: 'nothing in flight' })
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { instance: 'none', code: '400' }), 1, 'counted as the 400 it got')
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '499' }), 0, 'and not a second time, as a client gone')
})

t.test('an expectation other than 100-continue gets the proxy\'s 417, and nothing reaches the instance', async t => {
  const backend = await startBackend(t, 'expect')
  backend.handle((req, res) => {
    req.resume()
    req.on('end', () => res.end('ok'))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  await eventually(() => proxy.ready())
  const answer = await raw(proxy.url, 'POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\nhi' +
    'GET /behind HTTP/1.1\r\nHost: x\r\n\r\n')
  t.match(answer, /^HTTP\/1\.1 417 [^]*connection: close[^]*"error":"FLEETGATE_ERR_EXPECTATION"/i, '417, as the proxy\'s other errors are answered, and the connection closes')
  t.notMatch(answer, /HTTP\/1\.1 200/, 'nothing behind it is answered')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { instance: 'none', method: 'POST', code: '417' }), 1, 'counted')
  t.equal(backend.hits, 0, 'nothing reached the instance')
  const continued = await raw(proxy.url, 'POST /upload HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi')
  t.match(continued, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK\r\n/, '100-continue is met as before')
})

t.test('requests that cannot be forwarded as sent take no connection slot of the instance', async t => {
  const backend = await startBackend(t, 'slots')
  backend.handle((req, res) => res.end('ok'))
  // One connection per instance: a request that used one up for good would leave the instance none.
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--max-connections-per-instance', '1', '--queue-timeout-ms', '1000'])
  await eventually(() => proxy.ready())
  for (const request of ['GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n', 'OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n']) {
    const answer = await raw(proxy.url, request, { until: answer => answer.endsWith('}') })
    t.match(answer, /^HTTP\/1\.1 400 [^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/, `${JSON.stringify(request.split('\r\n')[0])}: 400`)
    const next = await raw(proxy.url, 'GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
    t.match(next, /^HTTP\/1\.1 200 /, `${JSON.stringify(request.split('\r\n')[0])}: the next request is served`)
  }
  t.equal(backend.hits, 2, 'only the good requests reached the instance')
})

t.test('a request head with more than 1,000 header lines gets 431; one with 1,000 passes whole', async t => {
  const backend = await startBackend(t, 'many-headers')
  // Node's own limit would drop the instance's view of them past 1,000 (the proxy adds a few).
  backend.server.maxHeadersCount = 0
  const seen: Array<{ url: string, body: string, headers: number }> = []
  backend.handle((req, res) => {
    let body = ''
    req.setEncoding('utf8').on('data', (s: string) => { body += s })
    req.on('end', () => {
      seen.push({ url: req.url!, body, headers: req.rawHeaders.length / 2 })
      res.end('ok')
    })
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`])
  await eventually(() => proxy.ready())
  const lines = (n: number): string => Array.from({ length: n }, (_, i) => `x-${i}: ${i}\r\n`).join('')
  // Host, Content-Length (past Node's 1,000th line in the second: its body is read, and was not passed
  // on) and Connection, and 997 or 998 more.
  const whole = await raw(proxy.url, `POST /whole HTTP/1.1\r\nHost: x\r\n${lines(997)}Content-Length: 5\r\nConnection: close\r\n\r\nhello`)
  t.match(whole, /^HTTP\/1\.1 200 /, '1,000 lines: passed on')
  const many = await raw(proxy.url, `POST /many HTTP/1.1\r\nHost: x\r\n${lines(998)}Connection: keep-alive\r\nContent-Length: 5\r\n\r\nhello` +
    'GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  t.match(many, /^HTTP\/1\.1 431 [^]*"error":"FLEETGATE_ERR_HEADERS_TOO_LARGE"[^]*HTTP\/1\.1 200 /, '1,001 lines: 431, and the next request on the connection is served')
  t.same(seen.map(s => [s.url, s.body]), [['/whole', 'hello'], ['/next', '']], 'the body of the one passed on with it; the other never sent')
  t.ok((seen[0]?.headers ?? 0) >= 1_000, 'every header line of it')
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { instance: 'none', code: '431' }), 1, 'counted as answered by no instance')
})

t.test('bad configuration: clear error, exit code 2', async t => {
  const listen = runFleetgate(t, ['proxy', '--static', 'http://127.0.0.1:1', '--listen', 'nonsense'])
  t.same(await listen.exited, { code: 2, signal: null })
  t.match(listen.output(), /FLEETGATE_ERR_CONFIG_INVALID: Invalid configuration: --listen = "nonsense": expected HOST:PORT/)

  // A port in use: the error names which of the two listeners it is for.
  const taken = http.createServer()
  await new Promise<void>(resolve => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => taken.close(() => resolve())))
  const takenPort = (taken.address() as AddressInfo).port
  const admin = runFleetgate(t, ['proxy', '--static', 'http://127.0.0.1:1', '--workers', '1', '--listen', '127.0.0.1:0', '--admin-listen', `127.0.0.1:${takenPort}`])
  t.same(await admin.exited, { code: 2, signal: null })
  t.match(admin.output(), `fleetgate: FLEETGATE_ERR_LISTEN: Cannot listen: --admin-listen: listen EADDRINUSE: address already in use 127.0.0.1:${takenPort}`)

  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bad-config-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'fleetgate.yaml')
  writeFileSync(file, 'static: http://127.0.0.1:1\nlisten_port: 8080\n')
  const unknown = runFleetgate(t, ['proxy', '--config', file])
  t.same(await unknown.exited, { code: 2, signal: null })
  t.match(unknown.output(), /unknown key "listen_port" in config file .*fleetgate\.yaml/)

  const env = runFleetgate(t, ['proxy', '--static', 'http://127.0.0.1:1'], { FLEETGATE_TRIES: 'many' })
  t.same(await env.exited, { code: 2, signal: null })
  t.match(env.output(), /FLEETGATE_TRIES = "many": expected an integer from 1 to 10/)

  const none = runFleetgate(t, ['proxy'])
  t.same(await none.exited, { code: 2, signal: null })
  t.match(none.output(), /--zookeeper is required/)

  const flag = runFleetgate(t, ['proxy', '--zookeper', '127.0.0.1:2181'])
  t.same(await flag.exited, { code: 2, signal: null })
  t.match(flag.output(), /FLEETGATE_ERR_CLI_USAGE: .*zookeper/)

  const help = runFleetgate(t, ['help', 'bogus'])
  t.same(await help.exited, { code: 2, signal: null })
  t.match(help.output(), /FLEETGATE_ERR_CLI_USAGE: no help for "bogus": expected proxy or agent/)

  const command = runFleetgate(t, ['porxy'])
  t.same(await command.exited, { code: 2, signal: null })
  t.match(command.output(), /FLEETGATE_ERR_CLI_USAGE: unknown command "porxy"/)

  const twice = runFleetgate(t, ['proxy', '--static', 'http://127.0.0.1:1', '--listen', '127.0.0.1:0', '--listen', '127.0.0.1:1'])
  t.same(await twice.exited, { code: 2, signal: null })
  t.match(twice.output(), /FLEETGATE_ERR_CLI_USAGE: Invalid command line: --listen is given twice \("127\.0\.0\.1:0", then "127\.0\.0\.1:1"\): give it once/)
})

t.test('a misspelled FLEETGATE_* variable is named in a warning, with what it likely meant; both commands still run', async t => {
  const backend = await startBackend(t, 'a')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`], { FLEETGATE_SLOWSTART_MS: '30000', FLEETGATE_DRAIN_MS: '5' })
  const warning = await proxy.waitForOutput(/\{"level":40,[^\n]*"msg":"FLEETGATE_SLOWSTART_MS is no fleetgate setting, and is ignored: did you mean FLEETGATE_SLOW_START_MS\?"\}/)
  t.match(warning[0], /"variable":"FLEETGATE_SLOWSTART_MS","suggestion":"FLEETGATE_SLOW_START_MS"/)
  t.notMatch(proxy.output(), /FLEETGATE_DRAIN_MS/, 'the agent\'s own settings in the same environment are no mistake')
  t.equal((await get(proxy.url)).status, 200, 'the proxy serves')

  const agent = runFleetgate(t, ['agent', '--zookeeper', '127.0.0.1:1', '--advertise', '127.0.0.1:8088', '--admin-listen', '127.0.0.1:0'], { FLEETGATE_HEALTH_PATH: '/health', FLEETGATE_HELTH_INTERVAL_MS: '100' })
  await agent.waitForOutput(/"msg":"FLEETGATE_HELTH_INTERVAL_MS is no fleetgate setting, and is ignored: did you mean FLEETGATE_HEALTH_INTERVAL_MS\?"/)
  agent.kill('SIGTERM')
  t.same(await agent.exited, { code: 0, signal: null }, 'the agent ran, and stops as usual')
})

t.test('SIGTERM lets in-flight requests finish, then exits 0', async t => {
  const backend = await startBackend(t, 'slow')
  backend.handle((req, res) => {
    res.setHeader('set-cookie', ['session=1', 'csrf=2'])
    if (req.url !== '/third') return setTimeout(() => res.end('done'), 1_000)
    // Its head goes out before the signal, the rest after.
    res.writeHead(200, { 'content-length': 4 })
    res.write('do')
    setTimeout(() => res.end('ne'), 1_000)
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--shutdown-timeout-ms', '5000'])
  await eventually(() => proxy.ready())
  const inFlight = get(proxy.url)
  // A second connection, busy too when the signal comes; it sends one more request while draining.
  const socket = connect(Number(new URL(proxy.url).port), '127.0.0.1')
  let answer = ''
  socket.setEncoding('utf8').on('data', (s: string) => { answer += s })
  const closed = new Promise(resolve => socket.on('close', resolve))
  socket.write('GET /first HTTP/1.1\r\nHost: x\r\n\r\n')
  // A third, busy too, whose answer has begun; it sends nothing more and never closes its side.
  const idle = connect(Number(new URL(proxy.url).port), '127.0.0.1')
  let idleAnswer = ''
  idle.setEncoding('utf8').on('data', (s: string) => { idleAnswer += s })
  const idleClosed = new Promise(resolve => idle.on('close', resolve))
  idle.write('GET /third HTTP/1.1\r\nHost: x\r\n\r\n')
  await eventually(() => backend.hits === 3 && idleAnswer.endsWith('do'))
  proxy.kill('SIGTERM')
  await proxy.waitForOutput(/shutting down: draining in-flight requests/)
  // Pipelined behind it, a POST that could never be answered: the connection closes after /second's.
  socket.write('GET /second HTTP/1.1\r\nHost: x\r\n\r\nPOST /fourth HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n')
  const res = await inFlight
  t.equal(res.status, 200)
  t.equal(res.body, 'done')
  await closed
  const answers = answer.split(/(?=HTTP\/1\.1 )/)
  t.equal(answers.length, 2, 'both requests on the busy connection were answered')
  t.match(answers[0], /^HTTP\/1\.1 200 [^]*\r\n\r\ndone$/)
  t.match(answers[1], /^HTTP\/1\.1 200 [^]*\r\nconnection: close\r\n[^]*\r\n\r\ndone$/i, 'a request that came while draining: served, with Connection: close')
  for (const [i, answer] of answers.entries()) {
    t.same(answer.match(/^set-cookie: .*$/gim)?.map(line => line.trim()), ['set-cookie: session=1', 'set-cookie: csrf=2'], `answer ${i + 1}: both cookies`)
  }
  t.equal(backend.hits, 4, 'the POST pipelined behind the closing answer never reached the instance')
  // Its answer's head went out keep-alive before the drain began; then the proxy closed the idle
  // connection itself, before the 5 s shutdown deadline (Node's keep-alive timeout alone would take 6 s).
  await idleClosed
  t.match(idleAnswer, /^HTTP\/1\.1 200 [^]*\r\n\r\ndone$/)
  t.notMatch(idleAnswer, /connection: close/i)
  t.same(await proxy.exited, { code: 0, signal: null })
  t.notMatch(proxy.output(), /shutdown deadline passed/, 'nothing was left for the deadline to close')
})
