// End to end: the real `fleetgate proxy --discovery consul` through Consul trouble. A 10 s outage under
// traffic, a restart with a lower index, 400 answers, and bad Consul settings. The Consul double's fault
// hooks drive it; with CONSUL_HTTP_ADDR set these are skipped (a real agent cannot be faulted on cue),
// except the plain start-up checks.

import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { consulTarget, doubleOf, needsDouble, uniqueService, type ConsulTarget } from '../helpers/consul.ts'
import { eventually } from '../helpers/eventually.ts'
import { get, loadLoop, runFleetgate, sample, startBackend, startProxy, type ProxyProcess } from '../helpers/fleet.ts'

const NOT_A_CERTIFICATE = fileURLToPath(new URL('../../package.json', import.meta.url))

async function consulProxy (t: Test, target: ConsulTarget, service: string, args: string[] = []): Promise<ProxyProcess> {
  return startProxy(t, ['--discovery', 'consul', '--consul', target.address, '--service', service, ...args], target.token ? { FLEETGATE_CONSUL_TOKEN: target.token } : {})
}

async function register (t: Test, target: ConsulTarget, service: string, id: string, port: number): Promise<void> {
  await target.api.register({ name: service, id, port, address: '127.0.0.1' })
  t.teardown(() => target.api.deregister(id))
}

t.test('a 10 s Consul outage under traffic: every request succeeds, and /status and the metrics say stale', { skip: needsDouble('the listener taken down') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const service = uniqueService('outage')
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map(n => startBackend(t, n)))
  await register(t, target, service, 'a', a!.port)
  await register(t, target, service, 'b', b!.port)
  const proxy = await consulProxy(t, target, service)
  await eventually(async () => (await proxy.status()).instances.length === 2)

  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 60_000, pauseMs: 1 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok > 100)
  await double.stop()
  const outageStarted = Date.now()
  await eventually(async () => (await proxy.status()).source.stale, { message: 'stale while Consul is down' })
  const status = await proxy.status()
  t.match(status.source, { kind: 'consul', status: 'disconnected', stale: true })
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_discovery_stale', { source: 'consul' }), 1)
  t.equal(sample(metrics, 'fleetgate_discovery_connected', { source: 'consul' }), 0)
  await eventually(() => Date.now() - outageStarted >= 10_000, { timeoutMs: 15_000, intervalMs: 200 })
  const during = { ...load.result }
  t.equal((await proxy.status()).instances.length, 2, 'membership kept through the outage')
  t.ok((await proxy.status()).source.stale, 'still stale at the end of the outage')
  await double.start()

  await eventually(async () => !(await proxy.status()).source.stale, { timeoutMs: 20_000, message: 'fresh again' })
  t.equal(sample(await proxy.metrics(), 'fleetgate_discovery_stale', { source: 'consul' }), 0)
  await register(t, target, service, 'c', c!.port)
  await eventually(async () => (await get(proxy.url)).servedBy === 'c', { message: 'a change after the outage is followed' })
  const result = await load.stop()
  t.equal(result.failed, 0, `no failed request (${result.errors.join('; ')})`)
  t.ok(result.ok > during.ok, 'traffic flowed through the outage')
  t.match(proxy.output(), /consul query failed; keeping the last membership/)
  t.comment(`${result.ok} requests, ${during.ok} of them during the first 10 s of the outage, 0 failed`)
})

t.test('Consul restarts with a lower index: the proxy follows the next change at once, not after the wait', { skip: needsDouble('a restart with a lower index') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const service = uniqueService('reset')
  const [a, b] = await Promise.all(['a', 'b'].map(n => startBackend(t, n)))
  await register(t, target, service, 'a', a!.port)
  // A 2 minute wait: a watcher that resumed with its old index would be blind for that long.
  const proxy = await consulProxy(t, target, service, ['--consul-wait-ms', '120000'])
  await eventually(async () => (await get(proxy.url)).servedBy === 'a')
  await eventually(() => double.held >= 1, { message: 'a blocking query held' })
  const before = double.index
  const mark = double.healthQueries.length
  await double.restart({ index: 3 })
  t.ok(double.index < before, `index ${before} -> ${double.index}`)
  await register(t, target, service, 'b', b!.port)
  const changedAt = Date.now()
  // Within 15 s, though the watch blocks for up to 120 s on the old, higher index.
  await eventually(async () => (await proxy.status()).instances.length === 2, { timeoutMs: 15_000, message: 'the change after the restart, long before the 120 s wait ends' })
  t.comment(`followed ${Date.now() - changedAt} ms after the change, with a 120 s wait`)
  const after = double.healthQueries.slice(mark).filter(q => q.service === service && q.status === 200)
  t.equal(after[0]?.index, undefined, 'the first query after the restart carried no index')
  t.ok(after.slice(1).every(q => Number(q.index) <= 3 + 10), `later queries block on the new, lower index (${after.map(q => q.index).join(', ')})`)
  t.equal((await proxy.status()).source.stale, false)
})

t.test('400 answers do not end the watch: logged, retried, membership kept; it recovers once Consul answers properly', { skip: needsDouble('canned 400 answers') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const service = uniqueService('bad-request')
  const [a, b] = await Promise.all(['a', 'b'].map(n => startBackend(t, n)))
  await register(t, target, service, 'a', a!.port)
  const proxy = await consulProxy(t, target, service)
  await eventually(async () => (await get(proxy.url)).servedBy === 'a')

  const mark = double.healthQueries.length
  double.fault({ status: 400, body: 'Invalid wait time' })
  double.dropHeldQueries()
  await eventually(() => double.healthQueries.slice(mark).filter(q => q.status === 400).length >= 4, { timeoutMs: 20_000, message: 'several 400s' })
  t.match((await proxy.status()).source, { status: 'disconnected', stale: true })
  t.equal((await get(proxy.url)).servedBy, 'a', 'still serving the last membership')
  t.match(proxy.output(), /FLEETGATE_ERR_CONSUL_REQUEST|400 Invalid wait time/)
  double.fault(undefined)
  await register(t, target, service, 'b', b!.port)
  await eventually(async () => (await proxy.status()).instances.length === 2 && !(await proxy.status()).source.stale, { timeoutMs: 20_000, message: 'recovered' })
})

t.test('Consul unreachable at start: the proxy listens, is not ready and answers 503 until Consul is there', { skip: needsDouble('the listener taken down') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const service = uniqueService('late')
  const a = await startBackend(t, 'a')
  await register(t, target, service, 'a', a.port)
  await double.stop()
  const proxy = await consulProxy(t, target, service)
  t.equal(await proxy.ready(), false)
  t.equal((await get(proxy.url)).status, 503)
  t.match((await proxy.status()).source, { kind: 'consul', status: 'connecting', stale: true })
  await double.start()
  await eventually(() => proxy.ready(), { timeoutMs: 20_000, message: 'ready once Consul is up' })
  t.equal((await get(proxy.url)).servedBy, 'a')
})

t.test('the tag filter and the token reach Consul', async t => {
  // With ACLs on, a query without the token is answered with an empty list: only the token gets the instances.
  const target = await consulTarget(t, { aclToken: 'proxy-secret' })
  const service = uniqueService('tagged')
  const [blue, green] = await Promise.all(['blue', 'green'].map(n => startBackend(t, n)))
  await target.api.register({ name: service, id: 'blue', port: blue!.port, address: '127.0.0.1', tags: ['blue'] })
  t.teardown(() => target.api.deregister('blue'))
  await target.api.register({ name: service, id: 'green', port: green!.port, address: '127.0.0.1', tags: ['green'] })
  t.teardown(() => target.api.deregister('green'))
  const proxy = await consulProxy(t, target, service, ['--consul-tag', 'blue'])
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === 'blue')
  for (let i = 0; i < 5; i++) t.equal((await get(proxy.url)).servedBy, 'blue')
})

t.test('bad Consul settings stop start-up with exit code 2, naming the setting', async t => {
  for (const [args, pattern] of [
    [['--consul', 'ftp://consul:21'], /--consul = "ftp:\/\/consul:21": expected http\(s\):\/\/HOST:PORT/],
    [['--consul', 'http://127.0.0.1:8500', '--consul-ca-file', '/etc/hostname'], /--consul-ca-file is given but --consul = "http:\/\/127.0.0.1:8500" is not https/],
    [['--consul', 'https://127.0.0.1:8501', '--consul-ca-file', '/no/such/ca.pem'], /FLEETGATE_ERR_CONFIG_FILE: .*--consul-ca-file \/no\/such\/ca.pem/],
    // A file that holds no certificate (a key, a DER file) would fail every connection: refused at start.
    [['--consul', 'https://127.0.0.1:8501', '--consul-ca-file', NOT_A_CERTIFICATE], /FLEETGATE_ERR_CONFIG_FILE: .*--consul-ca-file \S+package\.json: no PEM certificate in it/],
    [['--consul-wait-ms', '10'], /--consul-wait-ms = 10: expected milliseconds, from 100 to 600000/],
    [['--consul-tag', 'a,b'], /--consul-tag = "a,b": expected a tag without spaces or commas/],
    // Credentials in the address are refused, and the error, which goes to the logs, leaves them out.
    [['--consul', 'http://admin:hunter2@127.0.0.1:8500'], /--consul = "http:\/\/\*\*\*@127\.0\.0\.1:8500": expected http\(s\):\/\/HOST:PORT, without a path or credentials \(a token goes in --consul-token\)/],
    [['--consul', 'https://:hunter2@127.0.0.1:8501'], /--consul = "https:\/\/\*\*\*@127\.0\.0\.1:8501": expected .* without a path or credentials/],
    [['--consul', 'admin:hunter 2@127.0.0.1:8500'], /--consul = "\*\*\*@127\.0\.0\.1:8500": expected http\(s\):\/\/HOST:PORT or HOST:PORT/],
  ] as Array<[string[], RegExp]>) {
    const proc = runFleetgate(t, ['proxy', '--discovery', 'consul', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', ...args])
    // Bounded: a setting taken by mistake leaves the proxy running. 30 s, as for a proxy to start: node
    // itself may take seconds to start on a busy machine.
    await eventually(() => proc.child.exitCode !== null || proc.child.signalCode !== null, { message: `exit with ${args.join(' ')}`, timeoutMs: 30_000 })
    const exit = await proc.exited
    t.equal(exit.code, 2, args.join(' '))
    t.match(proc.output(), pattern)
    t.notMatch(proc.output(), /hunter/, 'no credentials in the output')
  }
  // A token read from a file with its newline is refused, and the error, which goes to the logs, does not repeat it.
  for (const args of [
    ['proxy', '--discovery', 'consul', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'],
    ['agent', '--discovery', 'consul', '--advertise', '127.0.0.1:8088', '--admin-listen', '127.0.0.1:0'],
  ]) {
    const command = args[0]
    const proc = runFleetgate(t, args, { FLEETGATE_CONSUL_TOKEN: 'b1gs33cr3t-4c5d\n' })
    t.equal((await proc.exited).code, 2, `${command}: a token with a line break`)
    t.match(proc.output(), /FLEETGATE_CONSUL_TOKEN \(not shown, 16 characters\): expected a token of visible ASCII characters/)
    t.notMatch(proc.output(), /b1gs33cr3t/, `${command}: the token is not in the output`)
  }
  const agent = runFleetgate(t, ['agent', '--discovery', 'consul', '--advertise', '127.0.0.1:8088', '--labels', 'rack.id=3'])
  t.equal((await agent.exited).code, 2, 'agent: a label that cannot be a Consul Meta key')
  t.match(agent.output(), /--labels: "rack.id" cannot be a Consul Meta key/)
})
