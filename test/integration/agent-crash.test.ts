// End to end: crashes. A SIGKILLed agent's znode goes with its session; in wrapper mode a dead command's
// znode goes at once; a restarted agent replaces the znode its predecessor left instead of adding one.

import t, { type Test } from 'tap'
import { children, DEMO_BACKEND, expiredSessions, FAST, readNode, startAgent, startHealthBackend } from '../helpers/agent.ts'
import { eventually } from '../helpers/eventually.ts'
import { expectPoolNeverEmpty, get, loadLoop, runFleetgate, startProxy, zkClient } from '../helpers/fleet.ts'
import { isAlive, killIfSame, startTimeOf } from '../helpers/reaper.ts'
import { freePort, startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())


t.test('a SIGKILLed agent\'s znode goes after the session timeout', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startHealthBackend(t, 'k')
  const path = `/services/killed/127.0.0.1-${backend.port}`
  const agent = await startAgent(t, { zookeeper: server.connectString, service: 'killed', port: backend.port, args: ['--session-timeout-ms', '2000'] })
  await eventually(() => readNode(client, path), { message: 'registered' })

  const killedAt = Date.now()
  agent.kill('SIGKILL')
  await agent.exited
  await eventually(async () => (await readNode(client, path)) === undefined, { timeoutMs: 8000, intervalMs: 50, message: 'znode gone' })
  const goneMs = Date.now() - killedAt
  t.comment(`SIGKILL -> znode gone: ${goneMs} ms (session timeout 2000 ms)`)
  t.ok(goneMs >= 1000, `held until the session expired (${goneMs} ms)`)
  t.ok(goneMs <= 5000, `gone within the session timeout plus ZooKeeper's expiry tick (${goneMs} ms)`)
})

t.test('wrapper mode: a SIGKILLed command\'s znode goes within 1 s, and the agent exits with 128+9', async t => {
  const client = await zkClient(t, server.connectString)
  const port = await freePort()
  const path = `/services/wrapped/127.0.0.1-${port}`
  const agent = await startAgent(t, {
    zookeeper: server.connectString, service: 'wrapped', port,
    command: [process.execPath, DEMO_BACKEND, '--name', 'w', '--port', String(port), '--exit-with-parent'],
  })
  await eventually(() => readNode(client, path), { message: 'registered once the command is healthy' })
  const status = await agent.status()
  const pid = status.command?.pid
  t.ok(pid !== undefined && status.command?.running, `command runs as pid ${pid}`)

  const killedAt = Date.now()
  process.kill(pid!, 'SIGKILL')
  await eventually(async () => (await readNode(client, path)) === undefined, { timeoutMs: 3000, intervalMs: 10, message: 'znode gone' })
  const goneMs = Date.now() - killedAt
  t.comment(`command SIGKILLed -> znode gone: ${goneMs} ms`)
  t.ok(goneMs < 1000, `gone in ${goneMs} ms`)
  const { code } = await agent.exited
  t.equal(code, 137, 'exits like a shell reports a SIGKILLed command')
})

t.test('wrapper mode: signals reach the command (SIGUSR1 too, for logrotate); SIGTERM drains first, then stops it, exit 0', async t => {
  const client = await zkClient(t, server.connectString)
  const port = await freePort()
  const path = `/services/wrapped-term/127.0.0.1-${port}`
  const agent = await startAgent(t, {
    zookeeper: server.connectString, service: 'wrapped-term', port, args: ['--drain-ms', '1000'],
    command: [process.execPath, DEMO_BACKEND, '--name', 'wt', '--port', String(port), '--exit-with-parent'],
  })
  await eventually(() => readNode(client, path), { message: 'registered' })
  const pid = (await agent.status()).command!.pid!

  for (const signal of ['SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGTTIN', 'SIGTTOU'] as const) {
    agent.kill(signal)
    await agent.waitForOutput(new RegExp(`"backend":"wt","signal":"${signal}"`))
    t.ok(isAlive(pid), `${signal} is passed on and the command keeps running`)
  }
  t.equal(agent.child.exitCode, null, 'and so does the agent')
  t.notMatch(agent.output(), /Debugger listening|inspector/i, 'SIGUSR1 did not open the agent\'s inspector')

  agent.kill('SIGTERM')
  await eventually(async () => JSON.parse((await readNode(client, path))?.data.toString() ?? '{}').payload?.state === 'draining', { message: 'draining' })
  t.equal((await get(`http://127.0.0.1:${port}`)).servedBy, 'wt', 'the command still serves while draining')
  await eventually(async () => (await readNode(client, path)) === undefined, { message: 'deregistered after the drain' })
  const { code } = await agent.exited
  t.equal(code, 0)
  t.notOk(isAlive(pid), 'the command was stopped')
  t.match(agent.output(), /"signal":"SIGTERM".*"stopping the command"/s)
})

t.test('wrapper mode: a stopped command (SIGSTOP) is continued with its stop signal, as systemd does, not left for SIGKILL', async t => {
  const client = await zkClient(t, server.connectString)
  const port = await freePort()
  const path = `/services/wrapped-stopped/127.0.0.1-${port}`
  const agent = await startAgent(t, {
    zookeeper: server.connectString, service: 'wrapped-stopped', port, args: ['--drain-ms', '0', '--stop-timeout-ms', '30000'],
    command: [process.execPath, DEMO_BACKEND, '--name', 'ws', '--port', String(port), '--exit-with-parent'],
  })
  await eventually(() => readNode(client, path), { message: 'registered' })
  const pid = (await agent.status()).command!.pid!
  const startTime = startTimeOf(pid)
  // Stopped, it would not notice its parent's exit either.
  t.teardown(() => killIfSame(pid, startTime))
  process.kill(pid, 'SIGSTOP')

  let timer: NodeJS.Timeout | undefined
  const { code, ms } = await Promise.race([
    agent.stop(),
    new Promise<never>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('the agent has not exited 10 s after SIGTERM')), 10_000) }),
  ]).finally(() => clearTimeout(timer))
  t.equal(code, 0, 'the command stopped on its SIGTERM')
  t.ok(ms < 10_000, `exited in ${ms} ms, not after the 30 s stop timeout`)
  t.notOk(isAlive(pid), 'the command is gone')
})

t.test('a restarted agent replaces the znode its SIGKILLed predecessor left, without a duplicate', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startHealthBackend(t, 'r')
  const parent = '/services/restart'
  const id = `127.0.0.1-${backend.port}`
  const path = `${parent}/${id}`
  const sessionTimeoutMs = 10_000
  const first = await startAgent(t, { zookeeper: server.connectString, service: 'restart', port: backend.port, args: ['--session-timeout-ms', String(sessionTimeoutMs)] })
  const before = (await eventually(() => readNode(client, path), { message: 'first registration' }))!

  const { gate, second } = await startSuccessor(t, 'restart', backend.port)
  t.equal((await second.status()).health, 'unknown')

  first.kill('SIGKILL')
  await first.exited
  const killedAt = Date.now()
  const expiredBefore = await expiredSessions(server.port)
  gate.healthy = true

  const after = (await eventually(async () => {
    const node = await readNode(client, path)
    if (!node) throw new Error('the znode vanished: the old session expired before the new agent replaced it')
    return node.stat.ephemeralOwner.equals(before.stat.ephemeralOwner) ? undefined : node
  }, { timeoutMs: 30_000, message: 'znode owned by the new session' }))!
  const replacedMs = Date.now() - killedAt
  t.comment(`predecessor SIGKILLed -> its znode replaced by the restarted agent: ${replacedMs} ms (its session would expire at ${sessionTimeoutMs} ms)`)
  // The log comes through a pipe: it may land just after the znode did.
  t.ok(await eventually(() => /replacing a registration left by another session/.test(second.output()), { message: 'the replacement logged' }), 'the replacement is logged')
  t.equal(after.stat.ephemeralOwner.toString('hex'), (await second.status()).registration.session)
  t.same(await children(client, parent), [id], 'one znode, not two')

  // The old session's expiry must not take the new znode with it.
  await eventually(async () => Date.now() - killedAt > sessionTimeoutMs && (await expiredSessions(server.port)) > expiredBefore, {
    timeoutMs: sessionTimeoutMs + 20_000, intervalMs: 100, message: 'old session expired',
  })
  const node = await readNode(client, path)
  t.ok(node?.stat.ephemeralOwner.equals(after.stat.ephemeralOwner), 'the new znode outlives the old session')
  t.same(await children(client, parent), [id])
})

t.test('a restarted agent takes over its predecessor\'s znode in one step: the proxy\'s pool never empties', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startHealthBackend(t, 'one')
  const path = `/services/takeover/127.0.0.1-${backend.port}`
  const first = await startAgent(t, { zookeeper: server.connectString, service: 'takeover', port: backend.port })
  const before = (await eventually(() => readNode(client, path), { message: 'first registration' }))!
  const proxy = await startProxy(t, ['--zookeeper', server.connectString, '--service', 'takeover'])
  await eventually(async () => (await proxy.status()).instances.length === 1, { message: 'the proxy follows the one instance' })

  const { gate } = await startSuccessor(t, 'takeover', backend.port)
  const load = loadLoop(proxy.url, { concurrency: 2, maxMs: 30_000, pauseMs: 1 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok > 50, { message: 'traffic flows' })

  first.kill('SIGKILL')
  await first.exited
  gate.healthy = true
  await eventually(async () => {
    const node = await readNode(client, path)
    return node !== undefined && !node.stat.ephemeralOwner.equals(before.stat.ephemeralOwner)
  }, { timeoutMs: 15_000, message: 'znode owned by the new session' })
  // A delete and then a create, as two writes, let the proxy read the list between them: no instance at all.
  await expectPoolNeverEmpty(t, proxy, load, 'after the takeover')
})

t.test('wrapper mode: a command that does not exec its server (sh -c) takes the server along when stopped', async t => {
  const client = await zkClient(t, server.connectString)
  const port = await freePort()
  const path = `/services/wrapped-shell/127.0.0.1-${port}`
  // The shell stays the agent's child; the servers are the shell's. One takes a second to finish on SIGTERM.
  const slow = `process.on('SIGTERM', () => setTimeout(() => process.exit(0), 1000)); console.log(JSON.stringify({ slow: process.pid })); setInterval(() => {}, 1000)`
  const agent = await startAgent(t, {
    zookeeper: server.connectString, service: 'wrapped-shell', port, args: ['--drain-ms', '200', '--stop-timeout-ms', '10000'],
    command: ['sh', '-c', `"${process.execPath}" "${DEMO_BACKEND}" --name sh --port ${port} & "${process.execPath}" -e "${slow}" & wait`],
  })
  const pids = [
    Number((await agent.waitForOutput(/"backend":"sh","url":"[^"]*","pid":(\d+)/))[1]),
    Number((await agent.waitForOutput(/\{"slow":(\d+)\}/))[1]),
  ]
  for (const pid of pids) {
    const started = startTimeOf(pid)
    t.teardown(() => killIfSame(pid, started))
  }
  await eventually(() => readNode(client, path), { message: 'registered' })

  agent.kill('SIGTERM')
  t.same(await agent.exited, { code: 0, signal: null }, 'the agent stops the command and exits 0')
  t.same(pids.filter(isAlive), [], 'only once everything the shell started is gone, the slow one included')
  t.equal(await readNode(client, path), undefined, 'and deregistered')
})

t.test('wrapper mode: once the command has been asked to stop, each further signal is passed on to it and logged', async t => {
  const client = await zkClient(t, server.connectString)
  const port = await freePort()
  const path = `/services/wrapped-stubborn/127.0.0.1-${port}`
  // Serves /health, says which signals it gets, ignores SIGINT, and dies of SIGTERM only when it comes again.
  const stubborn = [
    `require('http').createServer((q, r) => r.end('OK')).listen(${port}, '127.0.0.1')`,
    `const say = s => console.log(JSON.stringify({ stubborn: s }))`,
    `process.on('SIGINT', () => say('SIGINT'))`,
    `process.on('SIGTERM', () => { say('SIGTERM'); process.removeAllListeners('SIGTERM'); process.kill(process.pid, 'SIGTERM') })`,
  ].join('; ')
  const agent = await startAgent(t, {
    zookeeper: server.connectString, service: 'wrapped-stubborn', port, args: ['--drain-ms', '30000', '--stop-timeout-ms', '60000'],
    command: [process.execPath, '-e', stubborn],
  })
  await eventually(() => readNode(client, path), { message: 'registered' })
  const pid = (await agent.status()).command!.pid!
  const started = startTimeOf(pid)
  t.teardown(() => killIfSame(pid, started))
  const stubbornSaw = (signal: string): number => agent.output().split('\n').filter(l => l === JSON.stringify({ stubborn: signal })).length

  agent.kill('SIGINT')
  await agent.waitForOutput(/"msg":"draining: no new requests/)
  agent.kill('SIGINT')
  await agent.waitForOutput(/"msg":"second signal: ending the drain now"/)
  await eventually(() => stubbornSaw('SIGINT') === 1, { message: 'the command got its stop signal (SIGINT), and ignored it' })
  t.equal(await readNode(client, path), undefined, 'deregistered before the command was stopped')

  agent.kill('SIGINT')
  await eventually(() => stubbornSaw('SIGINT') === 2, { message: 'a third SIGINT reaches the command' })
  agent.kill('SIGTERM')
  await eventually(() => stubbornSaw('SIGTERM') === 1, { message: 'then a SIGTERM' })
  t.equal(agent.logLines('the command is stopping; passing the signal on'), 2, 'each signal passed on is logged')
  t.same(await agent.exited, { code: 0, signal: null }, 'the command died of a stop signal the agent passed on: exit 0')
  t.notOk(isAlive(pid))
  t.equal(agent.logLines('command did not stop in time; killing it'), 0, 'without waiting for the stop timeout\'s SIGKILL')
})

t.test('wrapper mode: a command that exits at once, before the first session, gives the agent its exit code', async t => {
  const port = await freePort()
  // The command is gone while the ZooKeeper handshake is still under way: the agent closes a session
  // that the server has not answered yet, and must still end as the command did.
  const agent = runFleetgate(t, [
    'agent', '--zookeeper', server.connectString, '--service', 'gone-at-once',
    '--advertise', `127.0.0.1:${port}`, '--target', `http://127.0.0.1:${port}`, '--admin-listen', '127.0.0.1:0',
    ...FAST, '--', 'sh', '-c', 'exit 7',
  ])
  const exited = await eventually(() => agent.exited, { timeoutMs: 30_000, message: 'the agent exited' })
  t.same(exited, { code: 7, signal: null }, 'the command\'s exit code')
  t.notMatch(agent.output(), /Unknown code|^\s+at /m, 'no uncaught exception')
})

/**
 * A successor agent for the instance on `port`, with the same id, started ahead (a process can take
 * seconds to start on a busy machine) and connected. It checks a stand-in that fails until the test sets
 * `gate.healthy` (once the predecessor is gone); a high --fall keeps it from deciding "unhealthy" (and
 * deregistering) meanwhile.
 */
async function startSuccessor (t: Test, service: string, port: number) {
  const gate = await startHealthBackend(t, 'gate')
  gate.healthy = false
  const second = await startAgent(t, {
    zookeeper: server.connectString, service, port,
    args: ['--target', `http://127.0.0.1:${gate.port}`, '--rise', '1', '--fall', '100'],
  })
  await eventually(async () => (await second.status()).registration.connected, { message: 'successor connected' })
  return { gate, second }
}
