// The HTTP and TCP probes against real local servers on port 0 (no ZooKeeper).

import { createServer as createHttpServer, type Server } from 'node:http'
import { createServer as createTcpServer, type AddressInfo } from 'node:net'
import t from 'tap'
import { httpProbe, tcpProbe } from '../../src/agent/health-check.ts'

async function listen (server: Server | ReturnType<typeof createTcpServer>): Promise<number> {
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

async function closedPort (): Promise<number> {
  const server = createTcpServer()
  const port = await listen(server)
  await new Promise(resolve => server.close(resolve))
  return port
}

const statuses: Array<[number, boolean]> = [[200, true], [204, true], [301, true], [404, false], [500, false], [503, false]]

t.test('http: any 2xx or 3xx is healthy', async t => {
  let status = 200
  const paths: string[] = []
  const server = createHttpServer((req, res) => {
    paths.push(req.url ?? '')
    res.statusCode = status
    res.end('body')
  })
  const port = await listen(server)
  t.teardown(() => { server.close() })
  const probe = httpProbe(new URL(`http://127.0.0.1:${port}/health`), 1000)
  for (const [code, ok] of statuses) {
    status = code
    const result = await probe()
    t.equal(result.ok, ok, `HTTP ${code}`)
    t.equal(result.detail, `HTTP ${code}`)
  }
  t.ok(paths.every(p => p === '/health'))
})

t.test('http: a refused connection fails with its code', async t => {
  const result = await httpProbe(new URL(`http://127.0.0.1:${await closedPort()}/health`), 1000)()
  t.same({ ok: result.ok, detail: result.detail }, { ok: false, detail: 'ECONNREFUSED' })
})

t.test('http: an instance that never answers fails at the timeout', async t => {
  const server = createHttpServer(() => { /* never answers */ })
  const port = await listen(server)
  t.teardown(() => { server.closeAllConnections(); server.close() })
  const result = await httpProbe(new URL(`http://127.0.0.1:${port}/health`), 150)()
  t.equal(result.ok, false)
  t.equal(result.detail, 'timeout after 150 ms')
  t.ok(result.durationMs >= 140 && result.durationMs < 1000, `${result.durationMs} ms`)
})

t.test('tcp: accepted is healthy, refused is not', async t => {
  const server = createTcpServer(socket => socket.destroy())
  const port = await listen(server)
  t.teardown(() => { server.close() })
  t.match(await tcpProbe('127.0.0.1', port, 1000)(), { ok: true, detail: 'connected' })
  t.match(await tcpProbe('127.0.0.1', await closedPort(), 1000)(), { ok: false, detail: 'ECONNREFUSED' })
})
