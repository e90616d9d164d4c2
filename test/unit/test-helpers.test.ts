// The process and backend helpers that the end-to-end tests build on.

import t from 'tap'
import http from 'node:http'
import { hitCounts, startBackend, startBackends, type BackendReply } from '../helpers/backends.ts'
import { spawnNode } from '../helpers/processes.ts'
import { tracked } from '../helpers/reaper.ts'

function get(url: string, headers: http.OutgoingHttpHeaders = {}): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers, agent: false }, (res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (c: string) => (body += c))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
      })
      .on('error', reject)
  })
}

t.test('startBackend answers /health and echoes other requests', async (t) => {
  const [a, b] = await startBackends('a', 'b')
  if (!a || !b) throw new Error('two backends expected')
  t.teardown(() => Promise.all([a.close(), b.close()]))
  t.match(a.address, /^127\.0\.0\.1:\d+$/)

  const health = await get(`${a.url}/health`)
  t.equal(health.status, 200)
  t.equal(health.body, 'OK')
  t.equal(a.healthChecks, 1)
  t.equal(a.hits, 0, '/health is not a hit')

  const res = await get(`${a.url}/api/v1/chart/?q=1`, { 'x-test': 'yes' })
  t.equal(res.status, 200)
  t.equal(res.headers['x-served-by'], 'a')
  const reply = JSON.parse(res.body) as BackendReply
  t.equal(reply.instance, 'a')
  t.equal(reply.method, 'GET')
  t.equal(reply.url, '/api/v1/chart/?q=1')
  t.equal(reply.headers['x-test'], 'yes')
  await get(`${b.url}/x`)
  await get(`${b.url}/y`)
  t.same(hitCounts([a, b]), { a: 1, b: 2 })
  t.same(b.requests.map((r) => r.url), ['/x', '/y'])

  a.setHealthy(false)
  const sick = await get(`${a.url}/health`)
  t.equal(sick.status, 503)
  t.equal((await get(`${a.url}/still-serving`)).status, 200, 'an unhealthy backend still serves')
  a.setHealthy(true)
  t.equal((await get(`${a.url}/health`)).status, 200)

  a.resetHits()
  t.equal(a.hits, 0)
  t.equal(a.requests.length, 0)
})

t.test('delayMs delays answers; close() ends open connections', async (t) => {
  const slow = await startBackend('slow', { delayMs: 150 })
  const started = Date.now()
  await get(`${slow.url}/`)
  t.ok(Date.now() - started >= 140, 'answer delayed')
  slow.delayMs = 0

  // A keep-alive connection must not keep close() waiting.
  const agent = new http.Agent({ keepAlive: true })
  await new Promise<void>((resolve, reject) => {
    http.get(`${slow.url}/ka`, { agent }, (res) => {
      res.resume()
      res.on('end', resolve)
    }).on('error', reject)
  })
  const closeStarted = Date.now()
  await slow.close()
  t.ok(Date.now() - closeStarted < 1000, 'close() does not wait for idle keep-alive sockets')
  agent.destroy()
  await t.rejects(get(`${slow.url}/`), { code: 'ECONNREFUSED' })
})

t.test('spawnNode captures output, waits for lines, reports exit', async (t) => {
  const script = [
    "console.log('starting')",
    "setTimeout(() => console.log('listening on port 4242'), 50)",
    "console.error('a warning')",
    "process.on('SIGTERM', () => { console.log('bye'); process.exit(7) })",
    'setInterval(() => {}, 1000)',
  ].join(';')
  const proc = spawnNode(['-e', script], { name: 'child' })
  t.teardown(() => proc.stop())
  const match = await proc.waitForLine(/listening on port (\d+)/)
  t.equal(match[1], '4242')
  t.ok(proc.running)
  t.ok(proc.pid !== undefined && [...tracked()].some((c) => c.pid === proc.pid), 'registered for kill-on-exit')
  await proc.waitForLine(/a warning/, 1000)
  t.match(proc.stdout(), /starting\n/)
  t.match(proc.stderr(), /a warning/)
  await t.rejects(proc.waitForLine(/never printed/, 100), /printed no line matching \/never printed\/ within 100 ms/)

  proc.kill('SIGTERM')
  t.same(await proc.exited, { code: 7, signal: null })
  t.same(proc.lines().slice(-1), ['bye'])
  t.notOk(proc.running)
  t.notOk([...tracked()].some((c) => c.pid === proc.pid), 'unregistered after exit')
  await t.rejects(proc.waitForLine(/not there/), /exited before printing a line matching/)
})

t.test('stop() escalates to SIGKILL', async (t) => {
  const proc = spawnNode(['-e', "process.on('SIGTERM', () => {}); console.log('ready'); setInterval(() => {}, 1000)"])
  await proc.waitForLine(/ready/)
  t.same(await proc.stop(200), { code: null, signal: 'SIGKILL' })
})
