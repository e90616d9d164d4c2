// End to end: requests and answers at the edges of HTTP/1.1 that a proxy must pass on, or answer, as
// HAProxy and Envoy do: any method and Content-Type, odd answers from an instance, HTTP/1.0 clients,
// CONNECT, HTTP/2 upgrades over cleartext, and upgrades pipelined behind an answer.

import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import { gzipSync } from 'node:zlib'
import t, { type Test } from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { get, raw, sample, startBackend, startProxy, type Backend, type ProxyProcess } from '../helpers/fleet.ts'

interface Seen { method: string, url: string, headers: IncomingMessage['headers'], body: string }

/** A backend that records every request it reads whole, and answers `ok`. */
async function recordingBackend (t: Test): Promise<{ backend: Backend, seen: Seen[] }> {
  const backend = await startBackend(t, 'edge')
  const seen: Seen[] = []
  backend.handle((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString() })
      res.end('ok')
    })
  })
  return { backend, seen }
}

/** A ready proxy in front of `backend` alone. */
async function proxyTo (t: Test, backend: Backend, ...args: string[]): Promise<ProxyProcess> {
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, ...args])
  await eventually(() => proxy.ready())
  return proxy
}

/** Whether a raw answer holds a whole `ok` body after its head. */
const answeredOk = (answer: string): boolean => /\r\n\r\nok$/.test(answer)

t.test('every method and any Content-Type reach the instance as sent', async t => {
  const { backend, seen } = await recordingBackend(t)
  const proxy = await proxyTo(t, backend)
  const requests = [
    ['PROPFIND /dav/ HTTP/1.1', 'Depth: 1', 'PROPFIND', ''],
    ['PURGE /cache/x HTTP/1.1', '', 'PURGE', ''],
    ['QUERY /search HTTP/1.1', 'Content-Length: 5', 'QUERY', 'q=abc'],
    ['POST /api/upload HTTP/1.1', 'Content-Type: text\r\nContent-Length: 5', 'POST', 'hello'],
    ['POST /api/upload HTTP/1.1', 'Content-Type: \r\nContent-Length: 5', 'POST', 'hello'],
    ['PUT /api/x HTTP/1.1', 'Content-Type: application/x-unheard-of\r\nContent-Length: 2', 'PUT', '{}'],
  ] as const
  for (const [line, headers, method, body] of requests) {
    const answer = await raw(proxy.url, `${line}\r\nHost: x\r\n${headers ? `${headers}\r\n` : ''}\r\n${body}`, { until: answeredOk })
    t.match(answer, /^HTTP\/1\.1 200 /, `${line} [${headers}]: the instance's answer`)
    t.match(seen.at(-1), { method, url: line.split(' ')[1], body }, `${line}: reached the instance with its body`)
  }
  t.equal(seen.length, requests.length, 'each once')
})

t.test('a reason phrase Node would not write is replaced by the standard one, and the answer passes', async t => {
  const backend = await startBackend(t, 'utf8-reason')
  backend.handle(req => {
    req.resume()
    // As UTF-8 bytes, which undici reads as such: "404 中文".
    req.on('end', () => req.socket.end(Buffer.from('HTTP/1.1 404 \xe4\xb8\xad\xe6\x96\x87\r\nContent-Length: 2\r\nConnection: close\r\n\r\nno', 'latin1')))
  })
  const proxy = await proxyTo(t, backend)
  const answer = await raw(proxy.url, 'GET /x HTTP/1.1\r\nHost: x\r\n\r\n', { until: a => a.endsWith('\r\n\r\nno') })
  t.match(answer, /^HTTP\/1\.1 404 Not Found\r\n[^]*\r\n\r\nno$/, 'the status and body, with the standard reason')
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '404' }), 1, 'counted as the 404 it was')
  t.equal(sample(metrics, 'fleetgate_in_flight_requests'), 0, 'and finished')
})

t.test('a 304 or a 204 that states a Content-Length ends with its head, and the connection is kept', async t => {
  const backend = await startBackend(t, 'bodiless')
  backend.handle((req, res) => {
    req.resume()
    req.on('end', () => {
      if (req.url === '/next') return res.end('ok')
      // RFC 9110 8.6: a 304 may state the length its full answer would have; a 204 may state none, but
      // Node writes the length it is given. Neither has a body.
      res.writeHead(Number(req.url!.slice(1)), { etag: '"v1"', 'content-length': 1234 })
      res.end()
    })
  })
  const proxy = await proxyTo(t, backend)
  for (const [status, reason] of [[304, 'Not Modified'], [204, 'No Content']] as const) {
    const answer = await raw(proxy.url, `GET /${status} HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n`, { until: answeredOk })
    t.match(answer, new RegExp(`^HTTP/1\\.1 ${status} ${reason}\r\n[^]*\r\n\r\nHTTP/1\\.1 200 OK\r\n[^]*\r\n\r\nok$`), `the ${status}, then the next answer on the same connection`)
    const head = answer.split('\r\n\r\n')[0]!
    if (status === 304) t.match(head, /content-length: 1234\r\n/i, 'the 304 with the length of its full answer')
    else t.notMatch(head, /content-length/i, 'the 204 without one: a client would read that much of the next answer as its body')
    t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { code: String(status) }), 1, `counted as a ${status}`)
  }
  t.equal(sample(await proxy.metrics(), 'fleetgate_responses_cut_off_total'), 0, 'neither as an answer cut off')
})

t.test('an answer with a transfer coding other than chunked gets 502, not its coded bytes as the body', async t => {
  const backend = await startBackend(t, 'gzip-coded')
  backend.handle((req, res) => {
    req.resume()
    req.on('end', () => {
      if (req.url !== '/coded') return res.end('ok')
      // Node chunks it, and the header names gzip before: the bytes are a gzip stream.
      res.writeHead(200, { 'transfer-encoding': 'gzip, chunked' })
      res.end(gzipSync('hello'))
    })
  })
  const proxy = await proxyTo(t, backend)
  const answer = await raw(proxy.url, 'GET /coded HTTP/1.1\r\nHost: x\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n', { until: answeredOk })
  t.match(answer, /^HTTP\/1\.1 502 [^]*"error":"FLEETGATE_ERR_UPSTREAM_PROTOCOL"[^]*HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nok$/,
    'a 502, as HAProxy and Envoy answer it, then the next answer on the same connection')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { code: '502' }), 1, 'counted as the 502 it got')
})

t.test('an HTTP/1.0 client gets no chunked answer, even one that asks for it', async t => {
  const backend = await startBackend(t, 'unsized')
  backend.handle((req, res) => {
    req.resume()
    // No Content-Length: chunked to HTTP/1.1 clients, delimited by the close to HTTP/1.0 ones.
    req.on('end', () => { res.write('hel'); res.end('lo') })
  })
  const proxy = await proxyTo(t, backend)
  for (const te of ['', 'TE: chunked\r\n']) {
    const answer = await raw(proxy.url, `GET /export HTTP/1.0\r\n${te}\r\n`)
    t.match(answer, /^HTTP\/1\.1 200 /, `${te.trim() || 'no TE'}: answered`)
    t.notMatch(answer, /transfer-encoding/i, `${te.trim() || 'no TE'}: not chunked (RFC 9112 6.1)`)
    t.match(answer, /\r\n\r\nhello$/, `${te.trim() || 'no TE'}: the body whole, ended by the close`)
  }
  const chunked = await raw(proxy.url, 'GET /export HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
  t.match(chunked, /transfer-encoding: chunked/i, 'an HTTP/1.1 client still gets chunks')
})

t.test('an HTTP/1.0 request with Transfer-Encoding is answered, then its connection closes', async t => {
  const { backend, seen } = await recordingBackend(t)
  const proxy = await proxyTo(t, backend)
  // A hop in front that knows no chunks would take them for the next request: RFC 9112 6.1.
  const answer = await raw(proxy.url, 'POST /upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n' +
    '2\r\nhi\r\n0\r\n\r\nGET /behind HTTP/1.0\r\nConnection: keep-alive\r\n\r\n')
  t.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*connection: close\r\n[^]*\r\n\r\nok$/i, 'answered, with Connection: close, and closed')
  t.same(seen.map(s => [s.url, s.body]), [['/upload', 'hi']], 'the request behind it never reached the instance')
  await eventually(async () => sample(await proxy.metrics(), 'fleetgate_in_flight_requests') === 0, { message: 'nothing in flight' })
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total'), 1, 'one request counted')
})

t.test('an absolute-form target without Host gives the instance its authority as Host', async t => {
  const { backend, seen } = await recordingBackend(t)
  const proxy = await proxyTo(t, backend)
  const answer = await raw(proxy.url, 'GET http://superset.example/login/ HTTP/1.0\r\n\r\n')
  t.match(answer, /^HTTP\/1\.1 200 [^]*\r\n\r\nok$/)
  t.match(seen.at(-1), { url: '/login/', headers: { host: 'superset.example', 'x-forwarded-host': 'superset.example' } })
  // Its path goes on as it came, as an origin-form one does: dot segments, backslashes and all.
  for (const [target, path] of [['http://superset.example/x/../admin\\y?q={1}', '/x/../admin\\y?q={1}'], ['http://superset.example?x=/y', '/?x=/y'], ['http://superset.example:8088', '/']]) {
    await raw(proxy.url, `GET ${target} HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n`)
    t.equal(seen.at(-1)?.url, path, `${target}: ${path}`)
  }
})

t.test('CONNECT gets 400 and a closed connection, counted as answered by no instance', async t => {
  const { backend, seen } = await recordingBackend(t)
  const proxy = await proxyTo(t, backend)
  const answer = await raw(proxy.url, 'CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n')
  t.match(answer, /^HTTP\/1\.1 400 [^]*connection: close[^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/i, 'a 400, and the close (the 5 s limit was not needed)')
  t.equal(seen.length, 0, 'nothing reached the instance')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { instance: 'none', method: 'CONNECT', code: '400' }), 1)
  t.equal((await get(proxy.url, '/after')).status, 200, 'still serving')
})

t.test('an upgrade to HTTP/2 over cleartext is served as HTTP/1.1, body and keep-alive included', async t => {
  const { backend, seen } = await recordingBackend(t)
  const proxy = await proxyTo(t, backend, '--headers-timeout-ms', '3000')
  // As `curl --http2 http://…` sends it, with a second request behind it on the same connection.
  const upload = 'POST /api/v1/chart/data HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n' +
    'HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{"a":"b"}' +
    'GET /next HTTP/1.1\r\nHost: x\r\n\r\n'
  const startedAt = Date.now()
  const answer = await raw(proxy.url, upload, { until: a => (a.match(/\r\n\r\nok/g) ?? []).length === 2 })
  t.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nokHTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nok$/, 'both answered, one after the other')
  t.ok(Date.now() - startedAt < 2_500, 'at once, not after a headers timeout')
  t.equal(seen.length, 2, 'both reached the instance')
  const [post, next] = seen
  t.match(post, { method: 'POST', url: '/api/v1/chart/data', body: '{"a":"b"}' }, 'the upload with its body, first')
  t.notOk(post === undefined || 'upgrade' in post.headers || 'http2-settings' in post.headers, 'without the upgrade')
  t.match(next, { method: 'GET', url: '/next' })
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { code: '200' }), 2, 'counted as two requests')
})

t.test('an upgrade request with a body is served as a plain one, body and all', async t => {
  const { backend, seen } = await recordingBackend(t)
  const proxy = await proxyTo(t, backend, '--headers-timeout-ms', '3000')
  const startedAt = Date.now()
  const answer = await raw(proxy.url, 'POST /api/v1/upload HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo/1\r\nContent-Length: 5\r\n\r\nhello' +
    'GET /next HTTP/1.1\r\nHost: x\r\n\r\n', { until: a => (a.match(/\r\n\r\nok/g) ?? []).length === 2 })
  t.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nokHTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nok$/, 'answered, then the request behind it')
  t.ok(Date.now() - startedAt < 2_500, 'at once: the instance was not left waiting for the body until the headers timeout')
  t.match(seen[0], { method: 'POST', url: '/api/v1/upload', body: 'hello' }, 'the body reached the instance')
  t.notOk(seen[0] === undefined || 'upgrade' in seen[0].headers, 'without the upgrade')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { code: '200' }), 2, 'counted as two requests')
})

t.test('pipelined requests reach the instances one at a time, in order, each after the answer before it', async t => {
  const events: string[] = []
  let open = 0
  let most = 0
  // Two instances: side by side, the DELETE would go to the other one while the POST is still running.
  const backends = [await startBackend(t, 'pipelined-a'), await startBackend(t, 'pipelined-b')]
  for (const backend of backends) {
    backend.handle((req, res) => {
      events.push(`start ${req.method} ${req.url}`)
      most = Math.max(most, ++open)
      req.resume()
      req.on('end', () => setTimeout(() => {
        events.push(`end ${req.method} ${req.url}`)
        open--
        res.end(req.url)
      }, req.url === '/first' ? 200 : 0))
    })
  }
  const proxy = await startProxy(t, ['--static', backends.map(b => `http://127.0.0.1:${b.port}`).join(',')])
  await eventually(() => proxy.ready())
  const answer = await raw(proxy.url, 'POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi' +
    'DELETE /second HTTP/1.1\r\nHost: x\r\n\r\nGET /third HTTP/1.1\r\nHost: x\r\n\r\n', { until: a => a.endsWith('/third') })
  t.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*\/firstHTTP\/1\.1 200 OK\r\n[^]*\/secondHTTP\/1\.1 200 OK\r\n[^]*\/third$/, 'answered in order')
  t.same(events, ['start POST /first', 'end POST /first', 'start DELETE /second', 'end DELETE /second', 'start GET /third', 'end GET /third'],
    'the DELETE is sent only once the POST before it is answered (RFC 9112 9.3.2: side by side only when all are safe)')
  t.equal(most, 1, 'one request of the connection at a time')
})

t.test('a client that pipelines far ahead of its answers gets every one, in order', async t => {
  const backend = await startBackend(t, 'far-ahead')
  let release: (() => void) | undefined
  backend.handle((req, res) => {
    req.resume()
    // The first is held: the rest wait behind it, more than the proxy reads ahead.
    if (req.url === '/0') release = () => res.end('/0;')
    else req.on('end', () => res.end(`${req.url};`))
  })
  const proxy = await proxyTo(t, backend)
  const count = 200
  const requests = Array.from({ length: count }, (_, i) => `GET /${i} HTTP/1.1\r\nHost: x\r\nX-Pad: ${'p'.repeat(1000)}\r\n\r\n`).join('')
  const answer = raw(proxy.url, requests, { until: a => a.endsWith(`/${count - 1};`) })
  await eventually(() => release !== undefined, { message: 'the first request reached the instance' })
  t.equal(backend.hits, 1, 'the others wait behind it')
  release!()
  const bodies = (await answer).split('HTTP/1.1 200 OK').slice(1).map(part => part.slice(part.indexOf('\r\n\r\n') + 4))
  t.same(bodies, Array.from({ length: count }, (_, i) => `/${i};`), 'all of them, each after the one before')
})

t.test('an h2c upgrade or a CONNECT pipelined behind an answer still going out is answered after it', async t => {
  const backend = await startBackend(t, 'slow-first')
  backend.handle((req, res) => {
    req.resume()
    req.on('end', () => req.url === '/slow' ? setTimeout(() => res.end('slow'), 300) : res.end('ok'))
  })
  const proxy = await proxyTo(t, backend)
  const h2c = await raw(proxy.url, 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n' +
    'POST /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 2\r\n\r\nhi', { until: answeredOk })
  t.match(h2c, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nslowHTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nok$/, 'the slow answer whole, then the upgrade\'s')
  const connect = await raw(proxy.url, 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\nCONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n')
  t.match(connect, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nslowHTTP\/1\.1 400 [^]*"error":"FLEETGATE_ERR_BAD_REQUEST"/, 'the slow answer whole, then the 400')
})

t.test('a WebSocket upgrade pipelined behind an answer still going out is answered after it', async t => {
  const backend = await startBackend(t, 'slow-then-ws')
  backend.handle((req, res) => {
    req.resume()
    req.on('end', () => setTimeout(() => res.end('slow'), 300))
  })
  backend.server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    socket.end(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nupgraded ${req.url}`)
  })
  const proxy = await proxyTo(t, backend)
  const answer = await raw(proxy.url, 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\n' +
    'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
  { until: a => a.endsWith('upgraded /ws') })
  t.match(answer, /^HTTP\/1\.1 200 OK\r\n[^]*\r\n\r\nslowHTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\nupgraded \/ws$/, 'the slow answer whole, then the switch and the tunnel')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { code: '101' }), 1, 'the upgrade counted once')
})

t.test('a WebSocket handshake reaches the instance with its header bytes as they came', async t => {
  const backend = await startBackend(t, 'ws-bytes')
  backend.server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    const bytes = Buffer.from(String(req.headers['x-title']), 'latin1').toString('hex')
    socket.end(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nx-title ${bytes}`)
  })
  const proxy = await proxyTo(t, backend)
  // "café" in Latin-1, and a byte that is not UTF-8: neither is to be re-encoded on the way.
  const handshake = Buffer.from('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Title: caf\xe9 \xff\r\n\r\n', 'latin1')
  const answer = await raw(proxy.url, handshake, { until: a => /x-title [0-9a-f]+$/.test(a) })
  t.match(answer, /^HTTP\/1\.1 101 [^]*\r\n\r\nx-title 636166e920ff$/, 'the bytes the client sent')
})

t.test('a WebSocket handshake reaches the instance with Connection: Upgrade alone, not the client\'s options', async t => {
  const backend = await startBackend(t, 'ws-connection')
  backend.server.on('upgrade', (req: IncomingMessage, socket: Socket) => {
    const seen = JSON.stringify({ connection: req.headers.connection, xff: req.headers['x-forwarded-for'], secret: req.headers['x-secret'] ?? null })
    socket.end(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n${seen}`)
  })
  const proxy = await proxyTo(t, backend)
  // Options naming the proxy's own X-Forwarded-* would have a next hop that honours them drop those.
  const answer = await raw(proxy.url, 'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, X-Forwarded-For, X-Secret\r\n' +
    'Connection: keep-alive\r\nUpgrade: websocket\r\nX-Secret: 1\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n', { until: a => a.endsWith('}') })
  t.match(answer, /^HTTP\/1\.1 101 /)
  t.same(JSON.parse(answer.slice(answer.indexOf('{'))), { connection: 'Upgrade', xff: '127.0.0.1', secret: null })
})

t.test('an interim answer before a WebSocket\'s 101 is not taken for its answer', async t => {
  const backend = await startBackend(t, 'ws-early-hints')
  backend.server.on('upgrade', (_req: IncomingMessage, socket: Socket, head: Buffer) => {
    const echo = (data: Buffer): void => { socket.end(`echo ${data.toString()}`) }
    if (head.length > 0) echo(head)
    else socket.once('data', echo)
    socket.write('HTTP/1.1 103 Early Hints\r\nLink: </static/app.css>; rel=preload\r\n\r\n' +
      'HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n')
  })
  const proxy = await proxyTo(t, backend)
  // The first frame comes with the handshake: it goes on once the instance has switched.
  const answer = await raw(proxy.url, 'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n' +
    'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nframe', { until: a => a.endsWith('echo frame') })
  t.match(answer, /^HTTP\/1\.1 101 Switching Protocols\r\n[^]*\r\n\r\necho frame$/, 'the switch, then the tunnel both ways')
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '101' }), 1, 'counted as the 101 it got')
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '103' }), 0, 'not as a 103')
})
