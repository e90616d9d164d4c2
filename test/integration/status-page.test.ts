// The status page in a real browser: headless Debian Chromium, driven by playwright-core, opens the proxy's
// admin /status and must show the live instances, a newly registered one within the refresh interval,
// and a stale membership when ZooKeeper goes away. Set FLEETGATE_UPDATE_SCREENSHOT=1 to refresh
// docs/status-page.png (otherwise the screenshot goes to a temp directory).

import { mkdtemp, rm } from 'node:fs/promises'
import type { IncomingMessage, ServerResponse } from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium, type BrowserContext } from 'playwright-core'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { STATUS_REFRESH_MS } from '../../src/proxy/status-page.ts'
import { eventually } from '../helpers/eventually.ts'
import { registerCurator, removeNode, startBackend, startProxy, zkClient, type Backend } from '../helpers/fleet.ts'
import { requireBinary } from '../helpers/prometheus.ts'
import { freePort, startZooKeeper } from '../helpers/zookeeper.ts'

t.setTimeout(120_000)

const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
]
const SCREENSHOT = fileURLToPath(new URL('../../docs/status-page.png', import.meta.url))

/** Headless Chromium with a fresh profile; closed and removed at teardown. */
async function launchBrowser (t: Test, executablePath: string): Promise<BrowserContext> {
  const profile = await mkdtemp(path.join(os.tmpdir(), 'fleetgate-chromium-'))
  t.teardown(() => rm(profile, { recursive: true, force: true }))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath, headless: true, args: CHROMIUM_FLAGS, viewport: { width: 1200, height: 760 }, colorScheme: 'light',
  })
  t.teardown(() => context.close())
  return context
}

/**
 * Steady traffic for the page's rates, `perSecond` requests a second (not as fast as possible, so the
 * browser keeps its share of the cores). Bounded: it stops by itself after 2 minutes.
 */
function pacedLoad (url: string, perSecond: number): { stop(): void } {
  const max = perSecond * 120
  let sent = 0
  const timer = setInterval(() => {
    if (sent++ >= max) return clearInterval(timer)
    request(`${url}/dashboard/${sent}`).then(res => res.body.dump(), () => undefined)
  }, 1000 / perSecond)
  return { stop: () => clearInterval(timer) }
}

/** Answers after `delayMs`, with a 500 for every `errorEvery`-th request when given. */
function behave (backend: Backend, delayMs: number, errorEvery = 0): void {
  let n = 0
  backend.handle((req: IncomingMessage, res: ServerResponse) => {
    req.resume()
    const code = errorEvery > 0 && ++n % errorEvery === 0 ? 500 : 200
    setTimeout(() => { res.statusCode = code; res.end('ok') }, delayMs)
  })
}

const executablePath = requireBinary(t, 'chromium', 'install it with: apt-get install -y chromium (or run scripts/test.sh)')
if (executablePath) {
  t.test('the status page shows the live instances, a new one within its refresh interval, and stale discovery', async t => {
    const zookeeper = await startZooKeeper()
    t.teardown(() => zookeeper.close())
    const client = await zkClient(t, zookeeper.connectString)
    const service = 'superset'
    const [a, b, c, d] = await Promise.all(['superset-1', 'superset-2', 'superset-3', 'superset-4'].map(n => startBackend(t, n))) as [Backend, Backend, Backend, Backend]
    behave(a, 4)
    behave(b, 18)
    behave(c, 9, 12)
    await registerCurator(client, { service, id: a.name, port: a.port })
    await registerCurator(client, { service, id: b.name, port: b.port })
    await registerCurator(client, { service, id: c.name, port: c.port })
    await registerCurator(client, { service, id: d.name, port: d.port, state: 'draining' })
    // Registered, but nothing listens: its first request fails to connect and the proxy ejects it.
    const deadPort = await freePort()
    await registerCurator(client, { service, id: 'superset-5', port: deadPort })
    const proxy = await startProxy(t, ['--zookeeper', zookeeper.connectString, '--service', service, '--slow-start-ms', '600000'])
    await eventually(async () => (await proxy.status()).instances.length === 5, { message: '5 instances in the pool' })
    const load = pacedLoad(proxy.url, 50)
    t.teardown(() => load.stop())

    const context = await launchBrowser(t, executablePath)
    const page = await context.newPage()
    const problems: string[] = []
    const foreign: string[] = []
    page.on('pageerror', err => problems.push(`page error: ${err.message}`))
    page.on('console', msg => { if (msg.type() === 'error' || msg.type() === 'warning') problems.push(`console ${msg.type()}: ${msg.text()}`) })
    page.on('request', req => { if (!req.url().startsWith(`${proxy.adminUrl}/status`)) foreign.push(req.url()) })

    const response = await page.goto(`${proxy.adminUrl}/status`)
    t.match(response?.headers()['content-type'], /^text\/html/, 'a browser gets HTML')
    t.equal(await page.locator('html').getAttribute('lang'), 'en')
    t.equal(await page.locator('#service').textContent(), service, 'the service is shown')
    t.equal(await page.locator('#source-kind').textContent(), 'zookeeper', 'the source is shown')
    t.equal(await page.locator('#membership .pill').textContent(), 'current', 'the membership is not stale')
    t.equal(await page.locator('#queue-waiting').textContent(), '0', 'no request waits for a connection')
    t.equal(await page.locator('#queue-limit').textContent(), 'limit 128 per instance \u00b7 0 timed out', 'the connection limit is shown')

    const rows = page.locator('tbody tr[data-instance]')
    const address = (port: number): string => `127.0.0.1:${port}`
    await rows.first().waitFor()
    t.same((await rows.evaluateAll(trs => trs.map(tr => tr.getAttribute('data-instance')))).sort(),
      [a, b, c, d].map(x => address(x.port)).concat(address(deadPort)).sort(), 'every instance in the membership has a row')
    const stateOf = (port: number) => page.locator(`tr[data-instance="${address(port)}"]`).getAttribute('data-state')
    t.equal(await stateOf(a.port), 'up')
    t.equal(await stateOf(d.port), 'draining', 'the draining instance says so')
    await eventually(async () => await stateOf(deadPort) === 'ejected', { message: 'the dead instance shows as ejected', timeoutMs: 3 * STATUS_REFRESH_MS + 2000 })
    const row = page.locator(`tr[data-instance="${address(a.port)}"]`)
    t.match(await row.locator('td').nth(0).textContent(), /superset-1/, 'the instance id is shown')

    // Rates come from successive polls: after two, the live instances show numbers.
    await eventually(async () => /^\d/.test((await row.locator('td.rate span').textContent()) ?? ''), {
      message: 'a request rate for superset-1', timeoutMs: 3 * STATUS_REFRESH_MS + 2000,
    })
    t.match(await row.locator('td').nth(4).textContent(), /ms$/, 'p50 in ms')
    t.match(await row.locator('td').nth(5).textContent(), /ms$/, 'p99 in ms')
    await eventually(async () => /%$/.test((await page.locator(`tr[data-instance="${address(c.port)}"] td`).nth(3).textContent()) ?? ''), {
      message: 'an error share for superset-3', timeoutMs: 3 * STATUS_REFRESH_MS + 2000,
    })

    // A new registration: the page shows it within one refresh interval of the proxy knowing it.
    const e = await startBackend(t, 'superset-6')
    behave(e, 6)
    // The page notes the moment the row enters its DOM (Playwright's own polling slows to 500 ms steps).
    const appearedAt = page.evaluate<number>(`new Promise(resolve => {
      const check = () => {
        if (!document.querySelector('tr[data-instance="${address(e.port)}"]')) return false
        observer.disconnect()
        resolve(Date.now())
        return true
      }
      const observer = new MutationObserver(check)
      if (!check()) observer.observe(document.body, { childList: true, subtree: true })
    })`)
    const ePath = await registerCurator(client, { service, id: e.name, port: e.port })
    await eventually(async () => (await proxy.status()).instances.some(i => i.id === e.name), { message: 'the proxy has superset-6', intervalMs: 5 })
    const known = Date.now()
    const shownMs = await eventually(async () => {
      const at = await Promise.race([appearedAt, new Promise<undefined>(resolve => setTimeout(resolve, 50, undefined))])
      return at === undefined ? undefined : Math.max(0, at - known)
    }, { message: 'superset-6 on the page', timeoutMs: 2 * STATUS_REFRESH_MS + 2000 }) ?? Infinity
    t.comment(`a new instance appeared on the page ${shownMs.toFixed(0)} ms after the proxy knew it (refresh ${STATUS_REFRESH_MS} ms)`)
    t.ok(shownMs <= STATUS_REFRESH_MS + 1000, `shown within the refresh interval (${shownMs.toFixed(0)} ms)`)
    // It joined a running proxy, so it is in slow start, and its row says so; the first ones are not.
    const slowStart = page.locator(`tr[data-instance="${address(e.port)}"] [data-slow-start]`)
    await slowStart.waitFor({ timeout: 2 * STATUS_REFRESH_MS + 2000 })
    t.equal(await slowStart.textContent(), 'slow start', 'the new instance shows its slow start')
    t.ok(Date.parse((await slowStart.getAttribute('data-slow-start')) ?? '') > Date.now() + 500_000, 'which ends --slow-start-ms after it joined')
    t.equal(await row.locator('[data-slow-start]').count(), 0, 'an instance the proxy started with shows none')

    // Let the rates and sparklines fill in, then take the picture.
    await eventually(async () => /^\d/.test((await page.locator(`tr[data-instance="${address(e.port)}"] td.rate span`).textContent()) ?? ''), {
      message: 'a request rate for superset-6', timeoutMs: 3 * STATUS_REFRESH_MS + 2000,
    })
    const shots = process.env.FLEETGATE_UPDATE_SCREENSHOT ? undefined : await mkdtemp(path.join(os.tmpdir(), 'fleetgate-shot-'))
    if (shots) t.teardown(() => rm(shots, { recursive: true, force: true }))
    const screenshot = shots ? path.join(shots, 'status-page.png') : SCREENSHOT
    await page.screenshot({ path: screenshot, fullPage: true })
    t.comment(`screenshot: ${screenshot}`)

    // JSON clients are unaffected.
    const json = await request(`${proxy.adminUrl}/status`, { headers: { accept: 'application/json' } })
    t.match(json.headers['content-type'], /^application\/json/)
    t.equal(((await json.body.json()) as { instances: unknown[] }).instances.length, 6, '/status still answers JSON')

    // An instance that leaves disappears.
    await removeNode(client, ePath)
    await page.locator(`tr[data-instance="${address(e.port)}"]`).waitFor({ state: 'detached', timeout: 2 * STATUS_REFRESH_MS + 2000 })

    // ZooKeeper goes away: the page says the membership is stale, and still lists the last known instances.
    load.stop()
    await zookeeper.stop()
    await page.locator('#stale-banner').waitFor({ state: 'visible', timeout: 15_000 })
    t.equal(await page.locator('#membership .pill').textContent(), 'stale', 'the membership shows as stale')
    t.equal(await rows.count(), 5, 'the last known instances are still listed')

    t.same(foreign, [], 'the page loads nothing but /status')
    t.same(problems, [], 'no page errors, console errors or CSP violations')
  })
}
