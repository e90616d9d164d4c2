// End to end: crashes. A SIGKILLed agent's znode goes with its session; in wrapper mode a dead command's
// znode goes at once; a restarted agent replaces the znode its predecessor left instead of adding one.

import t from 'tap'
import { children, DEMO_BACKEND, readNode, startAgent, startHealthBackend } from '../helpers/agent.ts'
import { eventually } from '../helpers/eventually.ts'
import { get } from '../helpers/fleet.ts'
import { zkClient } from '../helpers/fleet.ts'
import { freePort, startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

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

t.test('wrapper mode: signals reach the command; SIGTERM drains first, then stops it, exit 0', async t => {
  const client = await zkClient(t, server.connectString)
  const port = await freePort()
  const path = `/services/wrapped-term/127.0.0.1-${port}`
  const agent = await startAgent(t, {
    zookeeper: server.connectString, service: 'wrapped-term', port, args: ['--drain-ms', '1000'],
    command: [process.execPath, DEMO_BACKEND, '--name', 'wt', '--port', String(port), '--exit-with-parent'],
  })
  await eventually(() => readNode(client, path), { message: 'registered' })
  const pid = (await agent.status()).command!.pid!

  agent.kill('SIGHUP')
  await agent.waitForOutput(/"backend":"wt","signal":"SIGHUP"/)
  t.ok(alive(pid), 'SIGHUP is passed on and the command keeps running')

  agent.kill('SIGTERM')
  await eventually(async () => JSON.parse((await readNode(client, path))?.data.toString() ?? '{}').payload?.state === 'draining', { message: 'draining' })
  t.equal((await get(`http://127.0.0.1:${port}`)).servedBy, 'wt', 'the command still serves while draining')
  await eventually(async () => (await readNode(client, path)) === undefined, { message: 'deregistered after the drain' })
  const { code } = await agent.exited
  t.equal(code, 0)
  t.notOk(alive(pid), 'the command was stopped')
  t.match(agent.output(), /"signal":"SIGTERM".*"forwarding signal"/s)
})

t.test('a restarted agent replaces the znode its SIGKILLed predecessor left, without a duplicate', async t => {
  const client = await zkClient(t, server.connectString)
  const backend = await startHealthBackend(t, 'r')
  const parent = '/services/restart'
  const path = `${parent}/127.0.0.1-${backend.port}`
  const sessionTimeoutMs = 6000
  const args = ['--session-timeout-ms', String(sessionTimeoutMs)]
  const first = await startAgent(t, { zookeeper: server.connectString, service: 'restart', port: backend.port, args })
  const before = (await eventually(() => readNode(client, path), { message: 'first registration' }))!
  first.kill('SIGKILL')
  await first.exited
  const killedAt = Date.now()

  const second = await startAgent(t, { zookeeper: server.connectString, service: 'restart', port: backend.port, args })
  const after = (await eventually(async () => {
    const node = await readNode(client, path)
    return node && !node.stat.ephemeralOwner.equals(before.stat.ephemeralOwner) ? node : undefined
  }, { message: 'znode owned by the new session' }))!
  const replacedMs = Date.now() - killedAt
  t.comment(`predecessor SIGKILLed -> znode replaced by the restarted agent: ${replacedMs} ms (old session would expire at ${sessionTimeoutMs} ms)`)
  t.ok(replacedMs < sessionTimeoutMs, 'replaced before the old session expired')
  t.same(await children(client, parent), [`127.0.0.1-${backend.port}`], 'one znode, not two')
  t.match(second.output(), /replacing a registration left by another session/)

  // The old session's expiry must not take the new znode with it: watch it past that moment.
  const until = killedAt + sessionTimeoutMs + 1500
  await eventually(async () => {
    const node = await readNode(client, path)
    if (!node || !node.stat.ephemeralOwner.equals(after.stat.ephemeralOwner)) throw new Error('the znode changed or vanished')
    return Date.now() >= until
  }, { timeoutMs: sessionTimeoutMs + 5000, intervalMs: 100, message: 'znode kept past the old session\'s expiry' })
  t.same(await children(client, parent), [`127.0.0.1-${backend.port}`])
})
