// The ZooKeeper session keeper against a real server that clamps the session timeout it is asked for.

import { setTimeout as outageOf } from 'node:timers/promises'
import net from 'node:net'
import t, { type Test } from 'tap'
import { silentLogger } from '../../src/logger.ts'
import { type SessionEvent, ZooKeeperSession } from '../../src/zookeeper/session.ts'
import { eventually } from '../helpers/eventually.ts'
import { startRelay } from '../helpers/tcp-relay.ts'
import { startZooKeeper } from '../helpers/zookeeper.ts'

/** A session on `connectString`, started, with every event it emits recorded; closed at teardown. */
function startSession (t: Test, connectString: string, sessionTimeoutMs: number): { session: ZooKeeperSession, events: SessionEvent[] } {
  const session = new ZooKeeperSession({ connectString, sessionTimeoutMs, logger: silentLogger })
  t.teardown(() => session.close())
  const events: SessionEvent[] = []
  session.on(event => events.push(event))
  session.start()
  return { session, events }
}

t.test('a disconnection shorter than the granted timeout keeps the session, whatever was asked', async t => {
  // The server grants at least 4 s; the keeper asks for 1 s.
  const server = await startZooKeeper({ tickTimeMs: 1000, minSessionTimeoutMs: 4000, maxSessionTimeoutMs: 20_000 })
  t.teardown(() => server.close())
  const relay = await startRelay(server.port)
  t.teardown(() => relay.close())
  const { session, events } = startSession(t, `127.0.0.1:${relay.port}`, 1000)

  await eventually(() => session.connected, { message: 'first session' })
  t.equal(session.sessionTimeoutMs, 4000, 'the timeout is the one the server granted')
  const sessionId = session.client!.getSessionId().toString('hex')

  await relay.down()
  await eventually(() => events.some(e => e.type === 'disconnected'), { message: 'disconnected' })
  t.equal(session.sessionTimeoutMs, 4000, 'still the granted timeout while disconnected')
  // The fault itself, not a wait for a state: 2 s without ZooKeeper, twice what was asked and half what
  // the server granted. The session is alive on the server all along.
  await outageOf(2000)
  await relay.up()

  await eventually(() => session.connected, { message: 'reconnected' })
  t.same(events.map(e => e.type), ['connected', 'disconnected', 'connected'], 'reconnected, never given up')
  t.equal(session.client!.getSessionId().toString('hex'), sessionId, 'the same session')
  const last = events.at(-1)
  t.equal(last?.type === 'connected' && last.newSession, false, 'announced as the same session')
})

t.test('closed while the server\'s answer to its handshake is on the way, the session leaves quietly', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  const relay = await startRelay(server.port)
  t.teardown(() => relay.close())
  relay.hold()
  const session = new ZooKeeperSession({ connectString: `127.0.0.1:${relay.port}`, sessionTimeoutMs: 4000, logger: silentLogger })
  t.teardown(() => session.close())
  session.start()

  await eventually(() => relay.heldBytes > 0, { message: 'the server answered the handshake (held back)' })
  // Nothing the client sends from now on is read, and the server closes nothing, until the answer is through.
  server.pause()
  t.teardown(() => { if (server.running) server.resume() })
  await session.close()
  // Were the answer read now as the reply to a closeSession, the library would throw: an uncaught exception.
  relay.release()
  await eventually(() => relay.openConnections === 0, { message: 'its connection closed' })
  server.resume()
  const other = new ZooKeeperSession({ connectString: `127.0.0.1:${relay.port}`, sessionTimeoutMs: 4000, logger: silentLogger })
  t.teardown(() => other.close())
  other.start()
  await eventually(() => other.connected, { message: 'another session through the relay' })
  t.equal(relay.connections, 2, 'the closed session never connected again')
})

t.test('a client replaced while its handshake hangs is dropped quietly, and the server\'s late answer is harmless', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  // A stopped server: connections are accepted, and the handshake sent on them is read only once it resumes.
  server.pause()
  t.teardown(() => { if (server.running) server.resume() })
  const { session, events } = startSession(t, server.connectString, 2000)

  // The first session may take 10 s before its client is rebuilt.
  await eventually(() => session.generation === 2, { timeoutMs: 20_000, message: 'the client rebuilt' })
  // The old client's handshake is answered now, along with whatever it sent after it.
  server.resume()
  await eventually(() => session.connected, { message: 'a session for the new client' })
  t.equal(session.generation, 2, 'the new client\'s')
  t.same(events.map(e => e.type), ['connected'], 'no session lost: the old client never had one')
})

t.test('a host that accepts connections and never answers them is passed over, and the session kept', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  // Two hosts, both ZooKeeper behind a relay. `hung` accepts connections and holds back every answer.
  const [hung, good] = await Promise.all([startRelay(server.port), startRelay(server.port)])
  t.teardown(() => hung.close())
  t.teardown(() => good.close())
  await good.down()
  const { session, events } = startSession(t, `127.0.0.1:${hung.port},127.0.0.1:${good.port}`, 4000)
  await eventually(() => session.connected, { message: 'a session through the one host up' })
  const sessionId = session.client!.getSessionId().toString('hex')

  hung.hold()
  await hung.down()
  await hung.up()
  // The other host still refuses: the client's handshake now waits on the hung one.
  await eventually(() => hung.heldBytes > 0 && hung.openConnections === 1, { message: 'a handshake held on the hung host' })
  await good.up()

  // 4 s granted, over two hosts: each attempt may take 2 s, and the session lives 4 s.
  await eventually(() => session.connected, { message: 'reconnected' })
  t.same(events.map(e => e.type), ['connected', 'disconnected', 'connected'], 'never given up')
  t.equal(session.client!.getSessionId().toString('hex'), sessionId, 'the same session, through the other host')
  t.equal(session.generation, 1, 'the same client')
})

t.test('a server that stops in the middle of an answer is left, and the next one gives the session back', async t => {
  const server = await startZooKeeper()
  t.teardown(() => server.close())
  // `cut` relays to ZooKeeper until told to stop mid-answer: then it passes the first bytes of the next
  // answer only, holds the rest for ever, and refuses new connections.
  let cutting = false
  let stuck = false
  const open = new Set<net.Socket>()
  const cut = net.createServer(client => {
    if (stuck) return client.destroy()
    const upstream = net.connect(server.port, '127.0.0.1')
    for (const socket of [client, upstream]) {
      open.add(socket)
      socket.on('error', () => { client.destroy(); upstream.destroy() })
      socket.once('close', () => { open.delete(socket); client.destroy(); upstream.destroy() })
    }
    client.on('data', chunk => { if (!stuck) upstream.write(chunk) })
    upstream.on('data', (chunk: Buffer) => {
      if (stuck) return
      if (cutting) {
        stuck = true
        client.write(chunk.subarray(0, 6))
        return
      }
      client.write(chunk)
    })
  })
  await new Promise<void>(resolve => cut.listen(0, '127.0.0.1', () => resolve()))
  t.teardown(() => { for (const socket of open) socket.destroy(); cut.close() })
  const cutPort = (cut.address() as net.AddressInfo).port
  const good = await startRelay(server.port)
  t.teardown(() => good.close())
  await good.down()
  const { session, events } = startSession(t, `127.0.0.1:${cutPort},127.0.0.1:${good.port}`, 4000)
  await eventually(() => session.connected, { message: 'a session through the host that will stop' })
  const sessionId = session.client!.getSessionId().toString('hex')
  await good.up()

  // The watchdog's next probe gets 6 bytes of its answer, then nothing.
  cutting = true
  await eventually(() => stuck, { message: 'an answer cut short' })
  await eventually(() => events.length >= 3, { timeoutMs: 15_000, message: 'the session back, or given up' })
  t.same(events.map(e => e.type === 'expired' ? `expired (${e.reason})` : e.type), ['connected', 'disconnected', 'connected'], 'never given up')
  t.equal(session.client?.getSessionId().toString('hex'), sessionId, 'the same session, through the other host')
  t.equal(session.generation, 1, 'the same client')
})
