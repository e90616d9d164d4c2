// End to end: `--workers 2` serves the port from two processes that follow ONE ZooKeeper session held by
// the primary; /status and /metrics add up what the workers did. Workers run with the node flags a
// serving proxy wants, which a single process started without them names.

import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { PROXY_NODE_FLAGS } from '../../src/proxy/node-flags.ts'
import { eventually } from '../helpers/eventually.ts'
import { type FleetgateProcess, get, registerCurator, removeNode, runFleetgate, sample, startBackend, startProxy, zkClient } from '../helpers/fleet.ts'
import { isAlive, killIfSame, startTimeOf } from '../helpers/reaper.ts'
import { fourLetterWord, freePort, startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

const aliveConnections = async (): Promise<number> =>
  Number(/zk_num_alive_connections\s+(\d+)/.exec(await fourLetterWord(server.port, 'mntr'))?.[1])

t.test('two workers, one ZooKeeper session, merged status and metrics', async t => {
  const client = await zkClient(t, server.connectString)
  const [a, b, c] = await Promise.all(['a', 'b', 'c'].map(n => startBackend(t, n)))
  for (const backend of [a!, b!]) await registerCurator(client, { service: 'workers', id: backend.name, port: backend.port })
  const before = await aliveConnections()

  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'workers', '--workers', '2'])
  await eventually(() => proxy.ready(), { timeoutMs: 20_000 })
  t.equal(await aliveConnections(), before + 1, 'one ZooKeeper connection for the whole proxy')

  const served: Record<string, number> = {}
  for (let i = 0; i < 60; i++) {
    const res = await get(proxy.url, `/n/${i}`)
    t.equal(res.status, 200)
    served[res.servedBy!] = (served[res.servedBy!] ?? 0) + 1
  }
  t.ok(served.a! > 0 && served.b! > 0, `both instances served: ${JSON.stringify(served)}`)
  const status = await proxy.status()
  t.equal(status.instances.reduce((sum, i) => sum + i.requests, 0), 60, '/status adds up every worker')
  t.same(status.queue, { limitPerInstance: 128, timeoutMs: 5000, waiting: 0, timedOut: 0 }, 'and shows the limit each worker applies')
  const metrics = await proxy.metrics()
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '200' }), 60, '/metrics adds up every worker')
  t.equal(sample(metrics, 'fleetgate_membership_changes_total'), 1, 'discovery metrics come from the primary alone')
  t.equal(sample(metrics, 'fleetgate_instances', { state: 'up' }), 2, 'membership gauges are not multiplied by workers')
  t.ok(sample(metrics, 'process_cpu_user_seconds_total') > 0, 'the workers\' process metrics are there too')
  // The primary's own metrics and those rendered from the workers' reports make one exposition: every
  // metric described once, and the proxy's whole set there.
  const described = metrics.split('\n').filter(line => line.startsWith('# HELP ')).map(line => line.split(' ')[2]!)
  t.same(described.filter((name, i) => described.indexOf(name) !== i), [], 'no metric twice')
  for (const name of ['fleetgate_discovery_connected', 'fleetgate_invalid_registrations_total', 'fleetgate_instance_state', 'fleetgate_queued_requests', 'fleetgate_retries_total']) {
    t.ok(described.includes(name), `${name} described`)
  }
  const scrapes = await Promise.all([1, 2, 3].map(() => proxy.metrics()))
  t.same(scrapes.map(m => sample(m, 'fleetgate_request_duration_seconds_count')), [60, 60, 60], 'scrapes at once each get every worker\'s counts')

  await registerCurator(client, { service: 'workers', id: 'c', port: c!.port })
  await removeNode(client, '/services/workers/a')
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === 'b,c')
  const after = new Set<string>()
  for (let i = 0; i < 20; i++) after.add((await get(proxy.url)).servedBy!)
  t.same([...after].sort(), ['b', 'c'], 'every worker follows the change')

  proxy.kill('SIGTERM')
  t.same(await proxy.exited, { code: 0, signal: null }, 'a clean shutdown of primary and workers')
})

/** One GET on a connection of its own; the instance that answered. */
const servedByOnNewConnection = (url: string): Promise<string> => new Promise((resolve, reject) => {
  http.get(url, { agent: false }, res => {
    res.resume()
    res.on('end', () => resolve(String(res.headers['x-served-by'])))
  }).on('error', reject)
})

/** The worker processes of a primary, from /proc (the primary's own children). */
const workerPids = (primary: number): number[] =>
  readFileSync(`/proc/${primary}/task/${primary}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)

/** Whether the process has exec'd as a cluster worker: before, a forked child holds its parent's environment. */
const isClusterWorker = (pid: number): boolean => {
  try {
    return readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').some(entry => entry.startsWith('NODE_UNIQUE_ID='))
  } catch {
    return false // gone meanwhile
  }
}

/** The primary's workers, each killed after the test should it outlive its primary (and still be the same process). */
const workersReapedAfter = (t: Test, primary: number): number[] => {
  const workers = workerPids(primary)
  for (const pid of workers) {
    const started = startTimeOf(pid)
    t.teardown(() => killIfSame(pid, started))
  }
  return workers
}

/** A process's node flags: its arguments before the script. */
const nodeArgs = (pid: number): string[] => {
  const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')
  const script = argv.findIndex(arg => arg.endsWith('cli.js'))
  if (script < 0) throw new Error(`process ${pid} does not run the CLI: ${argv.join(' ')}`)
  return argv.slice(1, script)
}

t.test('before the first membership, /status says not ready, as /readyz does', async t => {
  // Nothing listens there: ZooKeeper unreachable at start. The workers listen all the same.
  const nowhere = `127.0.0.1:${await freePort()}`
  const proxy = await startProxy(t, ['--zookeeper', nowhere, '--service', 'unready', '--workers', '2'])
  t.equal(workerPids(proxy.pid).length, 2, 'both workers listen')
  t.equal(await proxy.ready(), false, '/readyz: 503')
  const status = await proxy.status()
  t.equal(status.source.revision, null, 'no membership known')
  t.equal(status.ready, false, '/status agrees')
  proxy.kill('SIGTERM')
  t.same(await proxy.exited, { code: 0, signal: null })
})

t.test('a worker that dies is replaced, and the new one follows later changes', async t => {
  const client = await zkClient(t, server.connectString)
  const [a, b, c, d] = await Promise.all(['a', 'b', 'c', 'd'].map(n => startBackend(t, n)))
  for (const backend of [a!, b!]) await registerCurator(client, { service: 'respawn', id: backend.name, port: backend.port })
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'respawn', '--workers', '2'])
  await eventually(() => proxy.ready(), { timeoutMs: 20_000 })
  const statusLines = proxy.output().split('\n').filter(line => line.includes('"msg":"discovery status"'))
  t.ok(statusLines.length > 0, 'the primary logs the discovery status')
  t.notOk(statusLines.some(line => line.includes('"role":"worker"')), 'the workers, which relay it, do not log it once more each')
  // A change before the kill, so the survivor holds a list the replacement never saw.
  await registerCurator(client, { service: 'respawn', id: 'c', port: c!.port })
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === 'a,b,c')

  for (let i = 0; i < 20; i++) await servedByOnNewConnection(proxy.url)
  const served = (metrics: string): number => sample(metrics, 'fleetgate_requests_total', { code: '200' })
  t.equal(served(await proxy.metrics()), 20, 'counted, over both workers')

  const [victim] = workerPids(proxy.pid)
  t.ok(victim, 'the primary has workers')
  const listeningLines = (): number => proxy.logLines('proxy worker listening')
  t.equal(listeningLines(), 2)
  process.kill(victim!, 'SIGKILL')
  await proxy.waitForOutput(/proxy worker died; starting another/)
  // Listening, so it holds the whole list: the changes below reach it as deltas.
  await eventually(() => listeningLines() === 3, { timeoutMs: 15_000 })
  const pids = workerPids(proxy.pid)
  t.equal(pids.length, 2)
  t.notOk(pids.includes(victim!), 'the dead worker was replaced')
  t.equal(served(await proxy.metrics()), 20, 'the dead worker\'s requests stay counted: a counter never goes down')
  t.equal(sample(await proxy.metrics(), 'fleetgate_worker_restarts_total', { reason: 'exited' }), 1, 'the replacement is counted')
  // The primary was started without them, and hands them to every worker it forks.
  t.same(nodeArgs(proxy.pid), [], 'the primary runs on node\'s defaults')
  for (const pid of pids) t.same(nodeArgs(pid), PROXY_NODE_FLAGS, `worker ${pid} runs with the proxy's node flags`)

  // Changes after the replacement: each worker applies them to the list it holds.
  await registerCurator(client, { service: 'respawn', id: 'd', port: d!.port })
  await removeNode(client, '/services/respawn/a')
  await removeNode(client, '/services/respawn/b')
  await eventually(async () => {
    const status = await proxy.status()
    return status.instances.map(i => i.id).join() === 'c,d'
  }, { timeoutMs: 15_000 })
  const routed = new Set<string>()
  // New connections each time, so the kernel spreads them over both workers.
  for (let i = 0; i < 40; i++) routed.add(await servedByOnNewConnection(proxy.url))
  t.same([...routed].sort(), ['c', 'd'], 'both workers route to the current membership only')

  proxy.kill('SIGTERM')
  t.same(await proxy.exited, { code: 0, signal: null })
})

/** Runs a proxy with a preload that records, per process, the packages it loaded; stops it and reads them. */
async function loadedPackages (t: Test, args: string[]): Promise<Array<{ worker: boolean, packages: string[] }>> {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-loaded-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const preload = new URL('../fixtures/loaded-packages.mjs', import.meta.url).href
  const proxy = await startProxy(t, args, { FLEETGATE_TEST_LOADED_DIR: dir }, ['--import', preload])
  await eventually(() => proxy.ready(), { timeoutMs: 20_000 })
  proxy.kill('SIGTERM')
  t.same(await proxy.exited, { code: 0, signal: null }, 'the proxy stops cleanly')
  const recorded: Array<{ worker: boolean, mainThread: boolean, packages: string[] }> =
    readdirSync(dir).map(file => JSON.parse(readFileSync(join(dir, file), 'utf8')))
  return recorded.filter(p => p.mainThread)
}

t.test('only the discovery backend in use is loaded: workers and a static proxy never load the ZooKeeper client', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startBackend(t, 'a')
  await registerCurator(client, { service: 'loaded', id: backend.name, port: backend.port })
  const processes = await loadedPackages(t, ['--zookeeper', server.connectString, '--service', 'loaded', '--workers', '2'])
  const primary = processes.filter(p => !p.worker)
  const workers = processes.filter(p => p.worker)
  t.equal(primary.length, 1, 'the primary recorded what it loaded')
  t.equal(workers.length, 2, 'and so did both workers')
  t.ok(primary[0]!.packages.includes('node-zookeeper-client'), 'the primary holds the session: it loads the ZooKeeper client')
  for (const worker of workers) {
    t.ok(worker.packages.includes('undici') && worker.packages.includes('fastify'), 'a worker loads what it serves with')
    t.notOk(worker.packages.includes('node-zookeeper-client'), 'but not the ZooKeeper client: it follows the primary')
  }

  const [single] = await loadedPackages(t, ['--static', `http://127.0.0.1:${backend.port}`])
  t.ok(single!.packages.includes('undici'), 'a static proxy loads what it serves with')
  t.notOk(single!.packages.includes('node-zookeeper-client'), 'but not the ZooKeeper client')
})

t.test('a single process started without the proxy\'s node flags says which are missing', async t => {
  const backend = await startBackend(t, 'single')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '1'])
  const [line] = await proxy.waitForOutput(/.*node runs without the flags a serving proxy wants.*/)
  t.same(JSON.parse(line).missing, PROXY_NODE_FLAGS, 'names the flags')
  t.equal((await get(proxy.url)).servedBy, 'single', 'and serves all the same')
})

t.test('an operator who starts node with the option set either way keeps that choice', async t => {
  const backend = await startBackend(t, 'chosen')
  const target = `http://127.0.0.1:${backend.port}`
  // The line is logged before the port is bound, so it would be in the output by now.
  const single = await startProxy(t, ['--static', target, '--workers', '1'], {}, [...PROXY_NODE_FLAGS])
  t.notMatch(single.output(), /node runs without/, 'a single process given the flags does not ask for them')
  t.equal((await get(single.url)).servedBy, 'chosen')

  const primary = await startProxy(t, ['--static', target, '--workers', '2'], {}, ['--memory-reducer'])
  const pids = workerPids(primary.pid)
  t.equal(pids.length, 2, 'the workers are up once the primary listens')
  for (const pid of pids) {
    t.same(nodeArgs(pid), ['--memory-reducer', '--no-allocation-site-pretenuring'], `worker ${pid} keeps the operator's --memory-reducer, and gets the other flag`)
  }
  t.equal((await get(primary.url)).servedBy, 'chosen')
})

t.test('SIGTERM to the whole process group (systemd, kill 0) drains the workers as SIGTERM to the primary does', async t => {
  const backend = await startBackend(t, 'held')
  let release: (() => void) | undefined
  backend.handle((req, res) => {
    req.resume()
    release = () => res.end('answered after the signal')
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--shutdown-timeout-ms', '20000'])
  const answer = get(proxy.url, '/held')
  await eventually(() => release !== undefined, { message: 'the request reached the instance' })

  const workers = workerPids(proxy.pid)
  t.equal(workers.length, 2)
  for (const pid of [proxy.pid, ...workers]) process.kill(pid, 'SIGTERM')
  // Both the signal and the primary's message reached each worker: the second must not end the drain.
  await eventually(() => proxy.logLines('shutting down: draining in-flight requests') === 2,
    { message: 'both workers draining' })
  t.ok(workers.some(isAlive), 'the worker holding the request waits for it')
  release!()
  const res = await answer
  t.same([res.status, res.body], [200, 'answered after the signal'], 'the request in flight is answered')
  t.same(await proxy.exited, { code: 0, signal: null }, 'then everything exits cleanly')
})

t.test('SIGHUP and SIGUSR1 are logged and ignored; workers whose primary is killed finish what they carry, then exit', async t => {
  const backend = await startBackend(t, 'held')
  let release: (() => void) | undefined
  backend.handle((req, res) => {
    req.resume()
    if (req.url !== '/held') return res.end('ok')
    release = () => res.end('answered after the primary died')
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--shutdown-timeout-ms', '20000'])
  const workers = workersReapedAfter(t, proxy.pid)
  t.equal(workers.length, 2)
  // A closed terminal or SSH session sends SIGHUP to the whole group: Node's default would end them all.
  for (const pid of [proxy.pid, ...workers]) process.kill(pid, 'SIGHUP')
  await proxy.waitForOutput(/SIGHUP ignored/)
  // Node's default for SIGUSR1 opens its inspector, in the primary and in each worker.
  for (const pid of [proxy.pid, ...workers]) process.kill(pid, 'SIGUSR1')
  await eventually(() => proxy.logLines('SIGUSR1 ignored') === 3, { message: 'SIGUSR1 ignored by the primary and both workers' })
  t.notMatch(proxy.output(), /Debugger listening|inspector/i, 'no inspector opened')
  t.equal((await get(proxy.url, '/after-hup')).status, 200, 'still serving')
  t.ok([proxy.pid, ...workers].every(isAlive), 'nothing died')

  const answer = get(proxy.url, '/held')
  await eventually(() => release !== undefined, { message: 'the request reached the instance' })
  process.kill(proxy.pid, 'SIGKILL')
  await eventually(() => proxy.logLines('shutting down: draining in-flight requests') === 2,
    { message: 'both workers draining' })
  t.ok(workers.some(isAlive), 'the worker holding the request waits for it')
  release!()
  const res = await answer
  t.same([res.status, res.body], [200, 'answered after the primary died'], 'the request in flight is answered')
  await eventually(() => !workers.some(isAlive), { message: 'then the workers exit' })
})

/** How the process exited, if it did within `timeoutMs`; fails the wait otherwise. */
const exitWithin = async (proc: FleetgateProcess, timeoutMs: number): Promise<Awaited<FleetgateProcess['exited']>> => {
  let exit: Awaited<FleetgateProcess['exited']> | undefined
  void proc.exited.then(result => { exit = result })
  return (await eventually(() => exit, { timeoutMs, message: 'the proxy exits' }))!
}

t.test('a second signal exits at once, and takes the workers with it', async t => {
  const backend = await startBackend(t, 'held')
  let held = false
  backend.handle(req => {
    req.resume()
    held = true // never answered
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--shutdown-timeout-ms', '60000'])
  const workers = workersReapedAfter(t, proxy.pid)
  t.equal(workers.length, 2)
  const answer = get(proxy.url, '/held').then(() => 'answered', () => 'cut')
  await eventually(() => held, { message: 'the request reached the instance' })
  proxy.kill('SIGTERM')
  await eventually(() => proxy.logLines('shutting down: draining in-flight requests') === 2, { message: 'both workers draining' })
  proxy.kill('SIGTERM')
  t.same(await exitWithin(proxy, 10_000), { code: 130, signal: null }, 'the primary exits at once')
  await eventually(() => !workers.some(isAlive), { timeoutMs: 5_000, message: 'the workers are gone too' })
  t.equal(await answer, 'cut', 'the request in flight is cut, as in a single process')
})

t.test('workers share the listening socket: the kernel hands out connections, not the primary', async t => {
  const backend = await startBackend(t, 'shared')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2'])
  const port = Number(new URL(proxy.url).port)
  const inode = listeningInode(port)
  t.ok(inode, `a socket listens on ${port}`)
  const workers = workerPids(proxy.pid)
  t.equal(workers.length, 2, 'two workers')
  for (const pid of workers) t.ok(socketInodes(pid).has(inode!), `worker ${pid} holds the listening socket`)
  t.equal((await get(proxy.url)).servedBy, 'shared')
})

/** The inode of the TCP socket listening on 127.0.0.1:port, from /proc/net/tcp. */
const listeningInode = (port: number): string | undefined => {
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const fields = line.trim().split(/\s+/)
    if (fields[1] === local && fields[3] === '0A') return fields[9]
  }
  return undefined
}

/** The inodes of the sockets a process holds. */
const socketInodes = (pid: number): Set<string> => {
  const inodes = new Set<string>()
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`))
      if (match) inodes.add(match[1]!)
    } catch {} // closed meanwhile
  }
  return inodes
}

t.test('a worker that cannot listen stops the start with exit code 2, not a respawn loop', async t => {
  const taken = http.createServer()
  await new Promise<void>(resolve => taken.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => taken.close(() => resolve())))
  const port = (taken.address() as { port: number }).port
  const proxy = runFleetgate(t, ['proxy', '--static', 'http://127.0.0.1:9', '--workers', '2', '--listen', `127.0.0.1:${port}`, '--admin-listen', '127.0.0.1:0'])
  t.same(await exitWithin(proxy, 20_000), { code: 2, signal: null }, 'exit code 2')
  t.match(proxy.output(), new RegExp(`fleetgate: FLEETGATE_ERR_LISTEN: Cannot listen: --listen: \\w+ EADDRINUSE:? .*127\\.0\\.0\\.1:${port}`), 'the worker says why, naming the setting')
  t.match(proxy.output(), /fleetgate: FLEETGATE_ERR_WORKER_EXIT: A proxy worker exited before every worker listened: worker \d+ exited with code 2/, 'the primary says it stops for that')
  t.notMatch(proxy.output(), /starting another/, 'no worker was started again')
})

t.test('a worker still starting when shutdown begins is told once it can hear it', async t => {
  const backend = await startBackend(t, 'late')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2'])
  const [victim] = workerPids(proxy.pid)
  process.kill(victim!, 'SIGKILL')
  // The replacement is forked a second later; the signal lands while it loads its code.
  const survivor = workerPids(proxy.pid).find(pid => pid !== victim)
  const replacement = await eventually(() => workerPids(proxy.pid).find(pid => pid !== victim && pid !== survivor),
    { timeoutMs: 10_000, intervalMs: 5, message: 'a replacement forked' })
  proxy.kill('SIGTERM')
  t.same(await exitWithin(proxy, 15_000), { code: 0, signal: null }, 'the primary did not wait forever')
  t.notOk(isAlive(replacement!), 'and the replacement is gone with it')
})

t.test('a worker that does not stop is killed once the drain\'s deadline is long past', async t => {
  const backend = await startBackend(t, 'stuck')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--shutdown-timeout-ms', '200'])
  const [stuck] = workerPids(proxy.pid)
  const stuckStarted = startTimeOf(stuck!)
  process.kill(stuck!, 'SIGSTOP')
  t.teardown(() => killIfSame(stuck!, stuckStarted))
  proxy.kill('SIGTERM')
  await proxy.waitForOutput(/"msg":"proxy worker did not stop; killing it"/, 15_000)
  t.same(await exitWithin(proxy, 10_000), { code: 0, signal: null })
  t.notOk(isAlive(stuck!), 'the stuck worker is gone')
})

t.test('a worker that stops answering (stuck, stopped) is killed by the watchdog and replaced; the others serve on', async t => {
  const backend = await startBackend(t, 'watched')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--worker-stall-timeout-ms', '1000'])
  const restarts = async (reason: string): Promise<number> => sample(await proxy.metrics(), 'fleetgate_worker_restarts_total', { reason })
  t.same([await restarts('exited'), await restarts('stalled')], [0, 0], 'both reasons are there from the start')
  const [stuck, other] = workerPids(proxy.pid)
  const stuckStarted = startTimeOf(stuck!)
  t.teardown(() => killIfSame(stuck!, stuckStarted))
  process.kill(stuck!, 'SIGSTOP')
  const line = await proxy.waitForOutput(/\{[^\n]*"msg":"proxy worker stopped answering; killing it"[^\n]*\}/, 10_000)
  const logged = JSON.parse(line[0]) as { pid: number, silentMs: number }
  t.equal(logged.pid, stuck, 'the primary names the stuck worker')
  t.ok(logged.silentMs >= 1000 && logged.silentMs < 5000, `after the timeout: silent for ${logged.silentMs} ms`)
  await eventually(() => !isAlive(stuck!), { message: 'the stuck worker is killed' })
  await eventually(() => proxy.logLines('proxy worker listening') === 3, { timeoutMs: 15_000, message: 'replaced' })
  const pids = workerPids(proxy.pid)
  t.equal(pids.length, 2)
  t.ok(pids.includes(other!), 'the worker that answered the pings all along was left alone')
  t.same([await restarts('exited'), await restarts('stalled')], [0, 1], 'counted as stalled, not as exited')
  // New connections each time, so the kernel spreads them over both workers.
  for (let i = 0; i < 20; i++) t.equal((await servedByOnNewConnection(proxy.url)), 'watched')
  t.equal(proxy.logLines('proxy worker stopped answering; killing it'), 1, 'the replacement, which answers, is left alone')
})

t.test('a primary that was held itself does not take its workers for stuck', async t => {
  const backend = await startBackend(t, 'held')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--worker-stall-timeout-ms', '1000'])
  const workers = workerPids(proxy.pid)
  let held = false
  t.teardown(() => { if (held) process.kill(proxy.pid, 'SIGCONT') })
  process.kill(proxy.pid, 'SIGSTOP')
  held = true
  // The workers serve on without their primary: 2.5 s of it, over two and a half watchdog timeouts.
  const from = performance.now()
  const answers: string[] = []
  while (performance.now() - from < 2_500 && answers.length < 10_000) answers.push(await servedByOnNewConnection(proxy.url))
  t.ok(answers.length > 0 && answers.every(servedBy => servedBy === 'held'), `${answers.length} requests served while the primary was stopped`)
  process.kill(proxy.pid, 'SIGCONT')
  held = false
  // The watchdog's overdue tick runs before the primary takes this scrape.
  t.equal(sample(await proxy.metrics(), 'fleetgate_worker_restarts_total', { reason: 'stalled' }), 0, 'no worker was taken for stuck')
  t.equal(proxy.logLines('proxy worker stopped answering; killing it'), 0)
  t.same(workerPids(proxy.pid), workers, 'the workers are the same')
})

t.test('a worker\'s own log lines carry the pid the primary names it by', async t => {
  const backend = await startBackend(t, 'named')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2'])
  const [victim] = workerPids(proxy.pid)
  const lines = (msg: string): Array<Record<string, unknown>> => proxy.output().split('\n')
    .filter(line => line.includes(`"msg":${JSON.stringify(msg)}`)).map(line => JSON.parse(line))
  t.ok(lines('proxy worker listening').some(line => line.pid === victim), 'the primary names the worker by its pid')
  process.kill(victim!, 'SIGUSR1')
  await eventually(() => lines('SIGUSR1 ignored').length === 1, { message: 'the worker logged the signal' })
  t.match(lines('SIGUSR1 ignored')[0], { role: 'worker', pid: victim }, 'and the worker\'s own line carries it')
  process.kill(victim!, 'SIGKILL')
  await proxy.waitForOutput(/proxy worker died; starting another/)
  t.match(lines('proxy worker died; starting another')[0], { pid: victim }, 'as does the primary\'s line about its death')
})

t.test('a replacement worker runs on the configuration the proxy started with, not on the file as edited since', async t => {
  const backend = await startBackend(t, 'configured')
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-config-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'proxy.yaml')
  const [port, edited] = [await freePort(), await freePort()]
  const write = (listen: number): void => writeFileSync(file,
    `static: http://127.0.0.1:${backend.port}\nlisten: 127.0.0.1:${listen}\nadminListen: 127.0.0.1:0\nworkers: 2\n`)
  write(port)
  const proxy = runFleetgate(t, ['proxy', '--config', file])
  await proxy.waitForOutput(/"msg":"fleetgate proxy listening"/, 30_000)
  // Edited for the next start; until then, the proxy serves as it was started.
  write(edited)
  const [victim] = workerPids(proxy.pid)
  process.kill(victim!, 'SIGKILL')
  await eventually(() => proxy.logLines('proxy worker listening') === 3, { timeoutMs: 15_000, message: 'replaced' })
  const ports = proxy.output().split('\n').filter(line => line.includes('"msg":"proxy worker listening"')).map(line => JSON.parse(line).port)
  t.same(ports, [port, port, port], 'the replacement listens where the others do')
  t.equal((await get(`http://127.0.0.1:${port}`)).servedBy, 'configured')
})

t.test('a scrape does not wait for a worker still starting', async t => {
  const backend = await startBackend(t, 'scraped')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2'])
  t.equal((await get(proxy.url)).servedBy, 'scraped')
  t.equal(sample(await proxy.metrics(), 'fleetgate_requests_total', { code: '200' }), 1)
  const [victim, survivor] = workerPids(proxy.pid)
  process.kill(victim!, 'SIGKILL')
  // Once it runs node: stopped between its fork and its exec, it would hold the primary, whose spawn
  // waits for the exec (libuv reads the child's exec status in a blocking read).
  const replacement = await eventually(() => workerPids(proxy.pid).find(pid => pid !== victim && pid !== survivor && isClusterWorker(pid)),
    { timeoutMs: 10_000, intervalMs: 5, message: 'a replacement forked' })
  // Held while it loads: it cannot answer, nor listen.
  const started = startTimeOf(replacement!)
  process.kill(replacement!, 'SIGSTOP')
  t.teardown(() => killIfSame(replacement!, started))
  const timed = async <T>(fn: () => Promise<T>): Promise<[T, number]> => {
    const from = performance.now()
    const value = await fn()
    return [value, performance.now() - from]
  }
  const [metrics, metricsMs] = await timed(() => proxy.metrics())
  const [status, statusMs] = await timed(() => proxy.status())
  t.ok(metricsMs < 1_500 && statusMs < 1_500, `answered at once: /metrics in ${Math.round(metricsMs)} ms, /status in ${Math.round(statusMs)} ms`)
  t.equal(sample(metrics, 'fleetgate_requests_total', { code: '200' }), 1, 'with what the workers counted')
  t.equal(status.ready, true, 'the survivor serves')
  process.kill(replacement!, 'SIGCONT')
  await eventually(() => proxy.logLines('proxy worker listening') === 3, { timeoutMs: 15_000, message: 'the replacement listens' })
})

t.test('during the drain, a worker that has exited no longer counts in the gauges', async t => {
  const backend = await startBackend(t, 'drained')
  const release = new Map<string, () => void>()
  backend.handle((req, res) => {
    req.resume()
    release.set(req.url!, () => res.end('done'))
  })
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--shutdown-timeout-ms', '20000'])
  const [a, b] = workerPids(proxy.pid)
  const stopped = new Set<number>()
  t.teardown(() => { for (const pid of stopped) process.kill(pid, 'SIGCONT') })
  /** A request on a new connection, which the other worker takes while `pid` is stopped; its answer, to come. */
  const sendPast = async (pid: number, path: string): Promise<{ answer: Promise<unknown> }> => {
    process.kill(pid, 'SIGSTOP')
    stopped.add(pid)
    const answer = get(proxy.url, path)
    await eventually(() => release.has(path), { message: `${path} reached the instance` })
    process.kill(pid, 'SIGCONT')
    stopped.delete(pid)
    return { answer }
  }
  const long = await sendPast(a!, '/long') // on b
  const short = await sendPast(b!, '/short') // on a
  const inFlight = async (): Promise<number> => sample(await proxy.metrics(), 'fleetgate_in_flight_requests')
  t.equal(await inFlight(), 2, 'one request in flight on each worker')

  proxy.kill('SIGTERM')
  await eventually(() => proxy.logLines('shutting down: draining in-flight requests') === 2, { message: 'both workers draining' })
  release.get('/short')!()
  await short.answer
  await eventually(() => !isAlive(a!), { message: 'the worker that carried the short request exits' })
  t.equal(await inFlight(), 1, 'only the request still in flight counts')
  release.get('/long')!()
  await long.answer
  t.same(await exitWithin(proxy, 10_000), { code: 0, signal: null })
})

t.test('workers that keep dying young are replaced ever more slowly', async t => {
  const backend = await startBackend(t, 'crashy')
  const proxy = await startProxy(t, ['--static', `http://127.0.0.1:${backend.port}`, '--workers', '2'])
  const delays = (): number[] => proxy.output().split('\n').filter(line => line.includes('"msg":"proxy worker died; starting another"'))
    .map(line => JSON.parse(line).respawnInMs as number)
  const [steady, first] = workerPids(proxy.pid)
  // One place crashes again and again: each kill takes the replacement of the last.
  let victim = first!
  for (let kill = 1; kill <= 3; kill++) {
    const listening = proxy.logLines('proxy worker listening')
    process.kill(victim, 'SIGKILL')
    await eventually(() => delays().length === kill, { message: `death ${kill} logged` })
    if (kill === 3) break
    await eventually(() => proxy.logLines('proxy worker listening') > listening, { timeoutMs: 15_000, message: 'replaced' })
    const dead = victim
    victim = workerPids(proxy.pid).find(pid => pid !== steady && pid !== dead)!
  }
  t.same(delays(), [1000, 2000, 4000], 'the wait doubles while the replacements in one place die young')

  // The other place has its own count: its first death waits 1 s.
  process.kill(steady!, 'SIGKILL')
  await eventually(() => delays().length === 4, { message: 'the steady worker\'s death logged' })
  t.equal(delays()[3], 1000, 'a worker dying in another place is not held to that streak')
})

t.test('a signal while the workers are still starting stops them, and the primary exits cleanly', async t => {
  const backend = await startBackend(t, 'early')
  const proxy = runFleetgate(t, ['proxy', '--static', `http://127.0.0.1:${backend.port}`, '--workers', '2', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'])
  // Forked, so the primary takes signals; a worker needs far longer than this to load and listen.
  const workers = await eventually(() => { const pids = workerPids(proxy.pid); return pids.length === 2 ? pids : undefined }, { intervalMs: 5, message: 'workers forked' })
  proxy.kill('SIGTERM')
  t.notMatch(proxy.output(), /fleetgate proxy listening/, 'the signal came while the proxy was starting')
  t.same(await exitWithin(proxy, 15_000), { code: 0, signal: null }, 'the primary stops, not killed by the signal')
  t.ok(workers!.every(pid => !isAlive(pid)), 'and the workers it was starting are gone')
  t.notMatch(proxy.output(), /ERR_IPC_CHANNEL_CLOSED|FLEETGATE_ERR_WORKER_EXIT/, 'none of them failed on the way')
})
