// End to end: with --slow-start-ms, an instance registered in ZooKeeper while the proxy runs takes a
// small share of the requests at first, and its full share once the window is over.

import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { get, registerCurator, startBackend, startProxy, zkClient, type ProxyProcess } from '../helpers/fleet.ts'
import { startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

/** Who served each of `n` sequential requests, counted. */
async function servedBy (proxy: ProxyProcess, n: number): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  for (let i = 0; i < n; i++) {
    const { status, servedBy } = await get(proxy.url, `/s/${i}`)
    const key = status === 200 ? servedBy ?? '?' : String(status)
    counts[key] = (counts[key] ?? 0) + 1
  }
  return counts
}

t.test('an instance that joins takes a small share at first, and its full share after --slow-start-ms', async t => {
  const client = await zkClient(t, server.connectString)
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map(n => startBackend(t, n)))
  for (const backend of [a!, b!]) await registerCurator(client, { service: 'slow', id: backend.name, port: backend.port })
  const source = ['--zookeeper', server.connectString, '--service', 'slow']
  // A window far longer than the test's requests take, and one that ends within the test.
  const [long, short] = await Promise.all([
    startProxy(t, [...source, '--slow-start-ms', '60000']),
    startProxy(t, [...source, '--slow-start-ms', '1000']),
  ])
  for (const proxy of [long, short]) await eventually(async () => (await proxy.status()).instances.length === 2, { message: 'both instances known' })
  t.same(await servedBy(long, 30), { a: 15, b: 15 }, 'the instances it started with take their full share at once')

  await registerCurator(client, { service: 'slow', id: 'c', port: c!.port })
  for (const proxy of [long, short]) await eventually(async () => (await proxy.status()).instances.length === 3, { message: 'the third instance known' })

  const until = Object.fromEntries((await long.status()).instances.map(i => [i.id, i.slowStartUntil]))
  t.same(Object.keys(until).sort(), ['a', 'b', 'c'], '/status lists all three')
  t.equal(until.a, null, '/status: the first instances are not in slow start')
  t.ok(Date.parse(until.c!) > Date.now() + 50_000, `/status: the new one is, until --slow-start-ms after it joined (${until.c})`)

  // Its full share would be 100 of 300; at 10 % of its turns, and a little more as the window runs, it is about 14.
  const early = await servedBy(long, 300)
  t.equal((early.a ?? 0) + (early.b ?? 0) + (early.c ?? 0), 300, `every request answered: ${JSON.stringify(early)}`)
  t.ok((early.c ?? 0) >= 5 && (early.c ?? 0) <= 40, `the new instance takes a small share, not its full one (100): ${JSON.stringify(early)}`)
  t.ok(Math.abs((early.a ?? 0) - (early.b ?? 0)) <= 1, 'the others share the rest evenly')

  // Once the window is over (near its end, the share is close to full already, and 30 requests can come
  // out even), /status says so, and the rotation is strict again: every third request.
  await eventually(async () => (await short.status()).instances.every(i => i.slowStartUntil === null), { timeoutMs: 10_000, message: '/status: no slow start left' })
  t.same(await servedBy(short, 30), { a: 10, b: 10, c: 10 }, 'after --slow-start-ms, its full share')
})

t.test('with --workers, each worker starts the new instance slowly, and /status says until when', async t => {
  const client = await zkClient(t, server.connectString)
  const [a, b] = await Promise.all(['a', 'b'].map(n => startBackend(t, n)))
  await registerCurator(client, { service: 'slow-workers', id: 'a', port: a!.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'slow-workers', '--workers', '2', '--slow-start-ms', '60000'])
  await eventually(() => proxy.ready(), { message: 'ready' })
  await registerCurator(client, { service: 'slow-workers', id: 'b', port: b!.port })
  const status = await eventually(async () => {
    const s = await proxy.status()
    return s.instances.length === 2 ? s : undefined
  }, { message: 'both instances known' })
  const [first, joined] = status!.instances
  t.equal(first!.slowStartUntil, null, 'the instance the proxy started with: none')
  t.ok(Date.parse(joined!.slowStartUntil!) > Date.now() + 50_000, `the one that joined: until ${joined!.slowStartUntil}`)
  const counts = await servedBy(proxy, 200)
  t.ok((counts.b ?? 0) < 50, `it takes a small share over both workers, not half: ${JSON.stringify(counts)}`)
})
