// A real, standalone ZooKeeper 3.8 server per test (Debian's `zookeeper` package), started in ~0.5 s.
// See FIELD-NOTES §4 for the facts this relies on.

import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { isRunning, track } from './reaper.ts'

export const ZOOKEEPER_JAR = '/usr/share/java/zookeeper.jar'
export const SLF4J_JAR = '/usr/share/java/slf4j-simple.jar'
const INSTALL_HINT = 'install it with: sudo apt-get install -y zookeeper default-jre-headless (or run scripts/test.sh)'
const READY_TIMEOUT_MS = 20_000
const STOP_TIMEOUT_MS = 10_000

export interface ZooKeeperServer {
  /** `127.0.0.1:<port>`, for createClient(). */
  readonly connectString: string
  readonly port: number
  readonly dataDir: string
  /** Server stdout+stderr (all runs appended). */
  readonly logFile: string
  /** PID of the running server, undefined while stopped. */
  readonly pid: number | undefined
  readonly running: boolean
  /** SIGTERM the server and wait for it to exit; the dataDir (and so the sessions) is kept. */
  stop(): Promise<void>
  /** Start again on the same port and dataDir; resolves once it serves requests. No-op if running. */
  start(): Promise<void>
  restart(): Promise<void>
  /** SIGSTOP, and wait until the process is stopped: the TCP port stays open but nothing answers (a hung server). */
  pause(): void
  /** SIGCONT after pause(). */
  resume(): void
  /** stop() and remove the temp directory (config, data, log). */
  close(): Promise<void>
  /**
   * Expire a live session from the outside (see expireSession below): the client holding it is
   * disconnected, reconnects at once and gets the EXPIRED state. `sessionId` is the Buffer from
   * client.getSessionId() or its hex string; `password` is client.getSessionPassword().
   */
  expireSession(sessionId: Buffer | string, password: Buffer): Promise<void>
  /** Last lines of the server log, for error messages and t.comment(). */
  logTail(lines?: number): string
}

export interface StartZooKeeperOptions {
  /** Default 500 ms. The server clamps session timeouts to [2, 20] ticks unless min/max are given. */
  tickTimeMs?: number
  /** Default 1000 ms. */
  minSessionTimeoutMs?: number
  /** Default 10 000 ms. */
  maxSessionTimeoutMs?: number
  /** More JVM flags for the server, e.g. `-Djute.maxbuffer=262144`. */
  javaOptions?: string[]
}

/** A TCP port that was free a moment ago (bind 127.0.0.1:0, read the port, close). */
export async function freePort(): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      if (address === null || typeof address === 'string') {
        server.close()
        reject(new Error('freePort: no TCP address'))
        return
      }
      server.close((err) => (err ? reject(err) : resolve(address.port)))
    })
  })
}

/** Throws an Error with an install hint when Java or the ZooKeeper jar is missing. */
export function assertZooKeeperInstalled(): void {
  if (!existsSync(ZOOKEEPER_JAR)) throw new Error(`ZooKeeper is not installed (${ZOOKEEPER_JAR} is missing); ${INSTALL_HINT}`)
  if (!findOnPath('java')) throw new Error(`java is not on PATH; ${INSTALL_HINT}`)
}

/** Sends a four-letter word and returns the whole answer ('' when refused, reset or timed out). */
export async function fourLetterWord(port: number, word: string, timeoutMs = 1000, host = '127.0.0.1'): Promise<string> {
  return await new Promise<string>((resolve) => {
    let answer = ''
    const socket = net.connect(port, host)
    const finish = (): void => {
      socket.destroy()
      resolve(answer)
    }
    socket.setTimeout(timeoutMs, finish)
    socket.on('connect', () => socket.end(word))
    socket.on('data', (chunk: Buffer) => {
      answer += chunk.toString('utf8')
    })
    socket.on('error', () => {
      answer = ''
    })
    socket.on('close', finish)
  })
}

export async function startZooKeeper(opts: StartZooKeeperOptions = {}): Promise<ZooKeeperServer> {
  assertZooKeeperInstalled()
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'fleetgate-zk-'))
  const dataDir = path.join(tmp, 'data')
  const logFile = path.join(tmp, 'zookeeper.log')
  const configFile = path.join(tmp, 'zoo.cfg')
  await mkdir(dataDir)
  let port = 0
  /** Picks a port and writes the configuration for it. */
  const configure = async (): Promise<void> => {
    port = await freePort()
    const config = [
      `tickTime=${opts.tickTimeMs ?? 500}`,
      `minSessionTimeout=${opts.minSessionTimeoutMs ?? 1000}`,
      `maxSessionTimeout=${opts.maxSessionTimeoutMs ?? 10_000}`,
      `dataDir=${dataDir}`,
      `clientPort=${port}`,
      'clientPortAddress=127.0.0.1',
      'admin.enableServer=false',
      '4lw.commands.whitelist=srvr,ruok,mntr,stat,cons',
      '',
    ].join('\n')
    await writeFile(configFile, config)
    await writeFile(logFile, '')
  }

  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  let paused = false

  const logTail = (lines = 40): string => {
    try {
      return readFileSync(logFile, 'utf8').split('\n').slice(-lines - 1).join('\n')
    } catch {
      return '(no log)'
    }
  }

  const start = async (): Promise<void> => {
    if (child && isRunning(child)) return
    const fd = openSync(logFile, 'a')
    let proc: ChildProcess
    try {
      proc = spawn(
        'java',
        [
          '-Xmx256m',
          '-XX:+UseSerialGC',
          '-XX:TieredStopAtLevel=1',
          // All client I/O on one thread, so connect requests are handled one at a time. With the default
          // worker pool, a client re-attaching its session while expireSession() attaches the same session
          // can be processed concurrently, and ZooKeeper 3.8 then leaves both connections attached with
          // only one of them filed under the session id: closing the session orphans the other, whose
          // client never hears EXPIRED. Seen under load in about 1 expiry in 140; none in 1,680 since.
          '-Dzookeeper.nio.numSelectorThreads=1',
          '-Dzookeeper.nio.numWorkerThreads=0',
          // Extra JVM flags for debugging, e.g. -Dorg.slf4j.simpleLogger.defaultLogLevel=debug
          ...(opts.javaOptions ?? []),
          ...(process.env.FLEETGATE_TEST_ZK_JAVA_OPTS ?? '').split(/\s+/).filter(Boolean),
          '-cp',
          `${ZOOKEEPER_JAR}:${SLF4J_JAR}`,
          'org.apache.zookeeper.server.ZooKeeperServerMain',
          configFile,
        ],
        { cwd: tmp, stdio: ['ignore', fd, fd] },
      )
    } finally {
      closeSync(fd)
    }
    child = proc
    paused = false
    track(proc)
    exited = new Promise<void>((resolve) => {
      proc.once('exit', () => resolve())
      proc.once('error', () => resolve())
    })
    let spawnError: Error | undefined
    proc.once('error', (err) => {
      spawnError = err
    })

    // The client port opens before the database is loaded (clients connecting then may hang, FIELD-NOTES §4),
    // and 'ruok' answers 'imok' already then. 'srvr' answers "This ZooKeeper instance is not currently
    // serving requests" until the server really serves, then "Zookeeper version: ... Mode: standalone".
    const deadline = Date.now() + READY_TIMEOUT_MS
    for (;;) {
      if (spawnError) throw new Error(`ZooKeeper could not be started: ${spawnError.message}; ${INSTALL_HINT}`)
      if (!isRunning(proc)) {
        throw new Error(`ZooKeeper exited during startup (code ${proc.exitCode}, signal ${proc.signalCode}); log ${logFile}:\n${logTail()}`)
      }
      const answer = await fourLetterWord(port, 'srvr', 1000)
      if (answer.includes('Zookeeper version') && answer.includes('Mode:')) return
      if (Date.now() > deadline) {
        proc.kill('SIGKILL')
        throw new Error(`ZooKeeper on port ${port} not serving after ${READY_TIMEOUT_MS} ms (last srvr answer: ${JSON.stringify(answer)}); log ${logFile}:\n${logTail()}`)
      }
      await sleep(25)
    }
  }

  const stop = async (): Promise<void> => {
    const proc = child
    if (!proc || !isRunning(proc)) return
    proc.kill('SIGTERM')
    // A stopped JVM handles SIGTERM only once it runs again.
    if (paused) proc.kill('SIGCONT')
    paused = false
    const timer = setTimeout(() => {
      if (isRunning(proc)) proc.kill('SIGKILL')
    }, STOP_TIMEOUT_MS)
    try {
      await exited
    } finally {
      clearTimeout(timer)
    }
  }

  const signal = (name: 'SIGSTOP' | 'SIGCONT'): void => {
    if (!child?.pid || !isRunning(child)) throw new Error(`ZooKeeper is not running; cannot send ${name}`)
    child.kill(name)
    paused = name === 'SIGSTOP'
    // Signal delivery is asynchronous: without this wait the server can still answer right after pause().
    if (paused) waitUntilStopped(child.pid)
  }

  // The port was free when picked, but the JVM binds it a second later: meanwhile another test, or
  // an outgoing connection given it as its ephemeral port, may take it. Then another port is tried.
  for (let attempt = 1; ; attempt++) {
    await configure()
    try {
      await start()
      break
    } catch (err) {
      await stop().catch(() => {})
      if (attempt === 3 || !logTail().includes('java.net.BindException')) throw err
    }
  }

  const server: ZooKeeperServer = {
    connectString: `127.0.0.1:${port}`,
    port,
    dataDir,
    logFile,
    get pid() {
      return child && isRunning(child) ? child.pid : undefined
    },
    get running() {
      return child !== undefined && isRunning(child)
    },
    stop,
    start,
    restart: async () => {
      await stop()
      await start()
    },
    pause: () => signal('SIGSTOP'),
    resume: () => signal('SIGCONT'),
    close: async () => {
      await stop()
      await rm(tmp, { recursive: true, force: true })
    },
    expireSession: (sessionId, password) => expireSession(`127.0.0.1:${port}`, sessionId, password),
    logTail,
  }
  return server
}

/**
 * Expires a session from the outside by closing it on the server. On a plain TCP socket, one write carries
 * a ConnectRequest presenting the session's id and password (this re-attaches the session to our socket
 * and makes the server drop the original client's connection) and, right behind it, closeSession.
 * The original client reconnects at once, presents its now-closed session, is answered with timeout 0,
 * and node-zookeeper-client (like every client) reports EXPIRED. Its ephemeral nodes are gone.
 *
 * This is the "second client with the same id and password closes the session" trick (FIELD-NOTES §4).
 * node-zookeeper-client can do it too (createClient options sessionId/sessionPassword, absent from its
 * types), but it sends closeSession only a round trip after the handshake, and the original client's
 * re-attach often wins that race, so it needs more rounds; speaking the two messages ourselves also
 * gives a definite answer from the server for each round. What the rounds handle:
 * - the original client re-attaches before our close is read: our connection is dropped (lost), retry;
 * - it re-attaches after our close was read but before the session is marked closing: the session is
 *   closed while that client is attached, and ZooKeeper closes only the requester's connection. The
 *   final attach (answered "expired") kicks it, as the server files it under the session id.
 * The server runs its connection handling on one thread (see start()): with a worker pool, two attaches
 * can interleave and leave a connection attached but filed nowhere, out of reach for good.
 * Finally the `cons` four-letter word must show no connection left holding the session.
 */
export async function expireSession(
  connectString: string,
  sessionId: Buffer | string,
  password: Buffer,
  timeoutMs = 15_000,
): Promise<void> {
  const id = typeof sessionId === 'string' ? Buffer.from(sessionId.replace(/^0x/i, '').padStart(16, '0'), 'hex') : sessionId
  if (id.length !== 8) throw new Error(`expireSession: session id must be 8 bytes, got ${id.length}`)
  if (password.length !== 16) throw new Error(`expireSession: password must be 16 bytes, got ${password.length}`)
  const first = connectString.split(',')[0]?.split('/')[0] ?? ''
  const colon = first.lastIndexOf(':')
  const host = first.slice(0, colon) || '127.0.0.1'
  const port = Number(first.slice(colon + 1))
  if (colon < 0 || !Number.isInteger(port) || port <= 0) throw new Error(`expireSession: cannot read host:port from ${connectString}`)
  const hexId = `0x${id.toString('hex')}`
  const deadline = Date.now() + timeoutMs
  const outcomes: CloseOutcome[] = []

  const attempt = async (): Promise<CloseOutcome> => {
    const outcome = await closeSessionOnWire(host, port, id, password, Math.min(5000, Math.max(1, deadline - Date.now())))
    outcomes.push(outcome)
    return outcome
  }

  // Close, and go on until an attach is answered "expired": the session is gone for good. That last
  // attach also kicks whichever connection the server still files under the session id.
  while ((await attempt()) !== 'expired') {
    if (Date.now() >= deadline) {
      throw new Error(`expireSession: could not close session ${hexId} within ${timeoutMs} ms (attempts: ${outcomes.join(', ')})`)
    }
    await sleep(5)
  }

  // A connection still attached to the closed session belongs to a client that will never hear EXPIRED
  // (ZooKeeper closes only the requester's connection on closeSession). A reconnecting client can show up
  // here for a moment before the server answers it, so look again a few times, kicking again in between.
  const sid = `sid=0x${id.readBigUInt64BE(0).toString(16)}`
  const settleBy = Math.min(deadline, Date.now() + 3000)
  let attached: string[] = []
  for (;;) {
    const answer = await fourLetterWord(port, 'cons', 1000, host)
    attached = answer.split('\n').filter((line) => line.includes(`${sid},`) || line.includes(`${sid})`))
    if (attached.length === 0 || Date.now() >= settleBy) break
    await sleep(50)
    await attempt()
  }
  if (attached.length > 0) {
    throw new Error(
      `expireSession: session ${hexId} looks closed (attempts: ${outcomes.join(', ')}) but a connection still holds it, ` +
        `so its client will not see EXPIRED (or the password is wrong: the server answers a bad password like a dead session):\n${attached.join('\n')}`,
    )
  }
}

/**
 * closed: the server accepted our closeSession. expired: the session was already gone (the connect was answered
 * with timeout 0). refused: closeSession was answered with an error. lost: the socket closed or timed out
 * first (e.g. the original client re-attached before our close was read, which drops our connection).
 */
type CloseOutcome = 'closed' | 'expired' | 'refused' | 'lost'

const OP_CLOSE_SESSION = -11
const CLOSE_XID = 1

function closeSessionOnWire(host: string, port: number, sessionId: Buffer, password: Buffer, timeoutMs: number): Promise<CloseOutcome> {
  // Jute encoding, each message framed by an int32 length.
  // ConnectRequest: protocolVersion int, lastZxidSeen long, timeOut int, sessionId long, passwd buffer, readOnly bool.
  const connect = Buffer.alloc(4 + 8 + 4 + 8 + 4 + password.length + 1)
  let o = connect.writeInt32BE(0, 0)
  o = connect.writeBigInt64BE(0n, o)
  o = connect.writeInt32BE(10_000, o)
  o += sessionId.copy(connect, o)
  o = connect.writeInt32BE(password.length, o)
  o += password.copy(connect, o)
  connect.writeUInt8(0, o)
  // RequestHeader: xid int, type int; closeSession has no body.
  const close = Buffer.alloc(8)
  close.writeInt32BE(CLOSE_XID, 0)
  close.writeInt32BE(OP_CLOSE_SESSION, 4)

  return new Promise<CloseOutcome>((resolve) => {
    const socket = net.connect(port, host)
    let received = Buffer.alloc(0)
    let attached = false
    let settled = false
    const done = (outcome: CloseOutcome): void => {
      if (settled) return
      settled = true
      socket.destroy()
      resolve(outcome)
    }
    socket.setNoDelay(true)
    socket.setTimeout(timeoutMs, () => done('lost'))
    socket.on('connect', () => socket.write(Buffer.concat([frame(connect), frame(close)])))
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk])
      while (!settled && received.length >= 4) {
        const length = received.readInt32BE(0)
        if (received.length < 4 + length) return
        const payload = received.subarray(4, 4 + length)
        received = received.subarray(4 + length)
        if (!attached) {
          // ConnectResponse: protocolVersion int, timeOut int, sessionId long, passwd buffer.
          if (payload.length < 8 || payload.readInt32BE(4) <= 0) return done('expired')
          attached = true
        } else if (payload.length >= 16 && payload.readInt32BE(0) === CLOSE_XID) {
          // ReplyHeader: xid int, zxid long, err int.
          return done(payload.readInt32BE(12) === 0 ? 'closed' : 'refused')
        }
      }
    })
    socket.on('error', () => done('lost'))
    socket.on('close', () => done('lost'))
  })
}

function frame(payload: Buffer): Buffer {
  const length = Buffer.alloc(4)
  length.writeInt32BE(payload.length, 0)
  return Buffer.concat([length, payload])
}

/** Blocks (up to 2 s) until every thread of `pid` is in the stopped state; Linux /proc only, else no-op. */
function waitUntilStopped(pid: number): void {
  const taskDir = `/proc/${pid}/task`
  if (!existsSync(taskDir)) return
  const pause = new Int32Array(new SharedArrayBuffer(4))
  const deadline = Date.now() + 2000
  while (Date.now() < deadline) {
    let allStopped = true
    try {
      for (const tid of readdirSync(taskDir)) {
        const stat = readFileSync(`${taskDir}/${tid}/stat`, 'utf8')
        // Field 3, after the parenthesised command name: T = stopped by a signal.
        const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
        if (state !== 'T' && state !== 't') {
          allStopped = false
          break
        }
      }
    } catch {
      return // the process or a thread went away
    }
    if (allStopped) return
    Atomics.wait(pause, 0, 0, 2)
  }
}

function findOnPath(command: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => dir !== '' && existsSync(path.join(dir, command)))
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
