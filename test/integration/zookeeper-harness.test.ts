// Proves the ZooKeeper test harness itself: a real server, restart on the same port, and forced expiry.

import t from 'tap'
import zookeeper from 'node-zookeeper-client'
import type { Client } from 'node-zookeeper-client'
import { eventually } from '../helpers/eventually.ts'
import { fourLetterWord, startZooKeeper } from '../helpers/zookeeper.ts'

const { CreateMode, State } = zookeeper

function connect(connectString: string, sessionTimeout = 4000): Promise<Client> {
  const client = zookeeper.createClient(connectString, { sessionTimeout, spinDelay: 100 })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.close()
      reject(new Error(`no session with ${connectString} within 10 s`))
    }, 10_000)
    client.once('connected', () => {
      clearTimeout(timer)
      resolve(client)
    })
    client.connect()
  })
}

function call<T>(fn: (cb: (err: Error | zookeeper.Exception | null, value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    fn((err, value) => (err ? reject(err instanceof Error ? err : new Error(String(err))) : resolve(value)))
  })
}

const exists = (client: Client, path: string): Promise<boolean> =>
  call<zookeeper.Stat | null>((cb) => client.exists(path, cb)).then((stat) => stat != null)

t.test('ZooKeeper harness', async (t) => {
  const clients: Client[] = []
  const zk = await startZooKeeper()
  t.teardown(async () => {
    clients.forEach((c) => c.close())
    await zk.close()
  })

  t.match(zk.connectString, /^127\.0\.0\.1:\d+$/)
  t.ok(zk.running && zk.pid !== undefined, 'server process is running')
  t.match(await fourLetterWord(zk.port, 'srvr'), /Mode: standalone/, 'srvr reports standalone mode')

  await t.test('a client connects and creates an ephemeral node', async (t) => {
    const client = await connect(zk.connectString)
    clients.push(client)
    const created = await call<string>((cb) => client.create('/harness-ephemeral', Buffer.from('hi'), CreateMode.EPHEMERAL, cb))
    t.equal(created, '/harness-ephemeral')
    const data = await call<Buffer>((cb) => client.getData('/harness-ephemeral', cb))
    t.equal(data.toString(), 'hi')
    client.close()
    const observer = await connect(zk.connectString)
    clients.push(observer)
    await eventually(async () => !(await exists(observer, '/harness-ephemeral')), {
      message: 'ephemeral node removed after its session closed',
    })
    t.pass('ephemeral node disappears with its session')
  })

  await t.test('stop() + start() keeps port and data', async (t) => {
    const client = await connect(zk.connectString)
    clients.push(client)
    await call<string>((cb) => client.create('/harness-persistent', Buffer.from('kept'), CreateMode.PERSISTENT, cb))
    const port = zk.port
    const firstPid = zk.pid

    await zk.stop()
    t.notOk(zk.running, 'stopped')
    t.equal(zk.pid, undefined)
    t.equal(await fourLetterWord(port, 'srvr', 300), '', 'nothing answers on the port while stopped')

    await zk.start()
    t.ok(zk.running, 'running again')
    t.not(zk.pid, firstPid, 'a new process')
    t.equal(zk.port, port, 'same port')
    t.equal(zk.connectString, `127.0.0.1:${port}`)

    const fresh = await connect(zk.connectString)
    clients.push(fresh)
    const data = await call<Buffer>((cb) => fresh.getData('/harness-persistent', cb))
    t.equal(data.toString(), 'kept', 'data survived the restart (same dataDir)')

    await zk.restart()
    t.ok(zk.running, 'restart() leaves it running')
  })

  await t.test('pause() leaves the port open but unanswered; resume() answers again', async (t) => {
    zk.pause()
    t.equal(await fourLetterWord(zk.port, 'srvr', 300), '', 'no answer while SIGSTOPped')
    zk.resume()
    t.match(await eventually(() => fourLetterWord(zk.port, 'srvr')), /Mode:/)

    zk.pause()
    await zk.restart()
    t.ok(zk.running, 'restart() of a paused server works (stop() sends SIGCONT after SIGTERM)')
    t.match(await fourLetterWord(zk.port, 'srvr'), /Mode:/)
  })

  await t.test('expireSession() makes the original client receive EXPIRED', async (t) => {
    const client = await connect(zk.connectString, 6000)
    clients.push(client)
    await call<string>((cb) => client.create('/harness-expiring', Buffer.alloc(0), CreateMode.EPHEMERAL, cb))
    const states: string[] = []
    client.on('state', (s: zookeeper.State) => states.push(s.name))
    let expired = false
    client.once('expired', () => {
      expired = true
    })

    const started = Date.now()
    await zk.expireSession(client.getSessionId().toString('hex'), client.getSessionPassword())
    await eventually(() => expired, { timeoutMs: 5000, message: 'original client emits expired' }).catch((err: Error) => {
      throw new Error(`${err.message}; states seen: ${states.join(' → ')}; server log:\n${zk.logTail(30)}`)
    })
    const elapsed = Date.now() - started
    t.ok(expired, `original client got EXPIRED after ${elapsed} ms (states: ${states.join(' → ')})`)
    t.ok(states.includes(State.EXPIRED.name), 'the state listener saw EXPIRED')
    t.ok(elapsed < 4000, 'well before the 6 s session timeout could have done it')

    const observer = await connect(zk.connectString)
    clients.push(observer)
    t.notOk(await exists(observer, '/harness-expiring'), 'its ephemeral node is gone')
  })

  await t.test('expireSession() accepts the Buffer form and rejects bad input', async (t) => {
    const client = await connect(zk.connectString, 6000)
    clients.push(client)
    let expired = false
    client.once('expired', () => {
      expired = true
    })
    await zk.expireSession(client.getSessionId(), client.getSessionPassword())
    await eventually(() => expired, { timeoutMs: 5000, message: 'original client emits expired' })
    t.ok(expired)
    await t.rejects(zk.expireSession('abc', Buffer.alloc(3)), /password must be 16 bytes/)
    await t.rejects(zk.expireSession(Buffer.alloc(4), Buffer.alloc(16)), /session id must be 8 bytes/)
  })
})
