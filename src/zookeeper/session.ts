// ZooKeeperSession: one ZooKeeper client that never stays broken. A server that stops answering (a
// watchdog probe misses its deadline) is left for the next one with the same session; the client is
// rebuilt on session expiry and when no server gives it a session in time.

import zookeeper from 'node-zookeeper-client'
import type { Client, Event as ZkEvent, Stat } from 'node-zookeeper-client'
import { FleetgateError } from '../errors.ts'
import type { Logger } from '../logger.ts'

export type { Client, ZkEvent }

export type SessionEvent =
  /** A session is usable. `newSession` is false after a reconnect that kept the session (watches survive). */
  | { readonly type: 'connected', readonly client: Client, readonly newSession: boolean }
  | { readonly type: 'disconnected' }
  /** The session is gone for good: ephemeral nodes and watches with it. A new client is being built. */
  | { readonly type: 'expired', readonly reason: 'expired' | 'connect-deadline' }

export interface ZooKeeperSessionOptions {
  /** `host:port,host:port[/chroot]` */
  readonly connectString: string
  readonly sessionTimeoutMs: number
  readonly logger: Logger
}

/** Longest pause between connect attempts while ZooKeeper cannot be reached. */
const MAX_SPIN_DELAY_MS = 3_200
/** How long a client may try for its first session before it is rebuilt (a handshake can hang: ZOOKEEPER-5051). */
const FIRST_CONNECT_DEADLINE_MS = 10_000
/** How long a client may take to close its session before its socket is destroyed. */
const CLOSE_GRACE_MS = 1_000

/** node-zookeeper-client's connection manager states, as far as this file uses them (not part of its API). */
const CM_CONNECTING = 1
const CM_CONNECTED = 2
const CM_CONNECTED_READ_ONLY = 3
const CM_CLOSING = -1
const CM_CLOSED = -2

/** Connection managers of clients dropped by abandon(): a connect attempt they had scheduled is not made. */
const abandoned = new WeakSet<object>()

/**
 * Makes abandon() final: the library schedules its next connect attempt (a tick, or up to spinDelay after
 * a lost connection) with no way to cancel it, and the attempt opens a socket whatever the state.
 */
function cancellableReconnects (client: Client): void {
  const manager = managerOf(client)
  const findNextServer = manager.findNextServer
  manager.findNextServer = function (this: ConnectionManager, callback): void {
    findNextServer.call(this, server => { if (!abandoned.has(this)) callback(server) })
  }
}

/**
 * node-zookeeper-client gives a connection sessionTimeout / hosts to open, but once TCP is up it waits
 * for the handshake's answer for ever: one host that accepts connections and never answers (hung, or
 * not serving yet) held the client until its whole session was given up, and the session with it. The
 * handshake now gets that time too, then the next host is tried with the same session, as the Java
 * client does.
 */
function handshakeTimeout (client: Client): void {
  const manager = managerOf(client)
  let timer: NodeJS.Timeout | undefined
  // Any change ends the handshake: answered, refused, lost or abandoned.
  manager.on('state', () => clearTimeout(timer))
  const onSocketConnected = manager.onSocketConnected
  manager.onSocketConnected = function (this: ConnectionManager): void {
    onSocketConnected.call(this)
    const socket = this.socket
    clearTimeout(timer)
    // Closing the socket makes the manager connect to the next host.
    const ms = this.connectTimeout
    if (this.state === CM_CONNECTING) timer = setTimeout(() => socket?.destroy(new Error(`no answer to the handshake within ${ms} ms`)), ms)
  }
}

/**
 * node-zookeeper-client keeps the bytes of an answer it has not wholly received across connections: a
 * server that stopped mid-answer (hung, or cut off) and was left leaves them in front of the next server's
 * first bytes, its handshake answer, which is then read as the rest of that stale answer. The handshake
 * never completes, or is read as garbage (a session "expired" that was not), and the session is lost. A
 * connection's partial answer now goes with it.
 */
function freshFraming (client: Client): void {
  const manager = managerOf(client)
  const onSocketClosed = manager.onSocketClosed
  manager.onSocketClosed = function (this: ConnectionManager, hadError: boolean): void {
    this.pendingBuffer = null
    onSocketClosed.call(this, hadError)
  }
}

/**
 * Calls `record` each time the client's connection brings bytes: any answer, or part of one, shows the
 * server alive, as the Java client counts it; a probe queued behind a long run of reads still waits.
 */
function received (client: Client, record: () => void): void {
  const manager = managerOf(client)
  const onSocketData = manager.onSocketData
  manager.onSocketData = function (this: ConnectionManager, buffer: Buffer): void {
    // The library calls itself with nothing to go on with what it holds.
    if (buffer.length > 0) record()
    onSocketData.call(this, buffer)
  }
}

/**
 * Hands `record` each error of the client's connections (a refused connect, a name that does not
 * resolve): the library only reconnects on them, and says nothing of why.
 */
function socketErrors (client: Client, record: (err: Error) => void): void {
  const manager = managerOf(client)
  const onSocketError = manager.onSocketError
  manager.onSocketError = function (this: ConnectionManager, err: Error): void {
    record(err)
    onSocketError.call(this, err)
  }
}

/** Whether the client has a session and a connection it can send closeSession on. */
function hasSession (client: Client): boolean {
  const { state } = managerOf(client)
  return state === CM_CONNECTED || state === CM_CONNECTED_READ_ONLY
}

/**
 * Drops a client in any state without a word to the server, as the Java client closes one that has no
 * connection: its session, if any, is left to expire. The library's close() must not be used on a client
 * in its handshake: it sends closeSession anyway, then reads the server's handshake answer as the reply
 * to it and throws from the socket's 'data' handler, an uncaught exception; and a connect attempt it had
 * scheduled still opens a new connection.
 */
function abandon (client: Client): void {
  const manager = managerOf(client)
  abandoned.add(manager)
  if (manager.connectTimeoutHandler) clearTimeout(manager.connectTimeoutHandler)
  // A manager whose socket closes reconnects unless it is closing (or its session expired, or auth failed).
  if (manager.state !== CM_CLOSED) manager.setState(CM_CLOSING)
  // Requests waiting for a connection fail now rather than never.
  const loss = (zookeeper.Exception as unknown as { create (code: number): Error }).create(zookeeper.Exception.CONNECTION_LOSS)
  for (let packet = manager.packetQueue.shift(); packet; packet = manager.packetQueue.shift()) packet.callback?.(loss)
  manager.socket?.destroy()
}

/** One SetWatches packet's budget of watched paths: the Java client's (ZOOKEEPER-706). */
const SET_WATCHES_MAX_BYTES = 128 * 1024
/** ZooKeeper's opcode for SetWatches. */
const OP_SET_WATCHES = 101

/** node-zookeeper-client's connection manager, as far as this file uses it (not part of its API). */
interface ConnectionManager {
  state: number
  socket?: { destroy (err?: Error): void }
  /** Milliseconds a connection may take to open: the session timeout over the number of hosts. */
  connectTimeout: number
  connectTimeoutHandler: NodeJS.Timeout | null
  packetQueue: { shift (): { callback?: (err: unknown) => void } | undefined }
  chrootPath?: string
  findNextServer (callback: (server: unknown) => void): void
  setState (state: number): void
  on (event: 'state', listener: (state: number) => void): void
  onSocketConnected (): void
  onSocketError (err: Error): void
  onSocketClosed (hadError: boolean): void
  onSocketData (buffer: Buffer): void
  /** The start of an answer not wholly received yet. */
  pendingBuffer: Buffer | null
  queue (request: JuteRequest, callback?: (err: unknown) => void): void
}
interface JuteRequest {
  readonly header: { readonly type: number } | null
  readonly payload: unknown
}
type SetWatches = Record<'dataWatches' | 'existWatches' | 'childWatches', string[]>

/**
 * node-zookeeper-client sends every watch it holds in one SetWatches packet when it reconnects within a
 * session. Past the server's jute.maxbuffer (1 MB by default: about 17,800 watched children with UUID
 * names) the server drops the connection, and the client reconnects at once and sends it again, for
 * ever. This client sends them as the Java client does: in packets of at most 128 KB of paths.
 */
function batchSetWatches (client: Client): void {
  const manager = managerOf(client)
  const onSocketConnected = manager.onSocketConnected
  manager.onSocketConnected = function (this: ConnectionManager): void {
    const queue = this.queue
    this.queue = (request, callback) => {
      if (request.header?.type !== OP_SET_WATCHES) return queue.call(this, request, callback)
      for (const part of splitSetWatches(request.payload as SetWatches, this.chrootPath ?? '')) {
        queue.call(this, Object.assign(Object.create(Object.getPrototypeOf(request)) as JuteRequest, request, { header: clone(request.header), payload: part }), callback)
      }
    }
    try {
      onSocketConnected.call(this)
    } finally {
      delete (this as Partial<ConnectionManager>).queue
    }
  }
}

function * splitSetWatches (payload: SetWatches, chroot: string): Generator<SetWatches> {
  const empty = (): SetWatches => Object.assign(clone(payload), { dataWatches: [], existWatches: [], childWatches: [] })
  let part = empty()
  let bytes = 0
  for (const kind of ['dataWatches', 'existWatches', 'childWatches'] as const) {
    for (const path of payload[kind]) {
      const size = 4 + Buffer.byteLength(chroot) + Buffer.byteLength(path)
      if (bytes > 0 && bytes + size > SET_WATCHES_MAX_BYTES) {
        yield part
        part = empty()
        bytes = 0
      }
      part[kind].push(path)
      bytes += size
    }
  }
  yield part
}

function managerOf (client: Client): ConnectionManager {
  return (client as unknown as { connectionManager: ConnectionManager }).connectionManager
}

/** A shallow copy with the same prototype: a jute record's methods come with it. */
function clone<T extends object> (value: T): T {
  return Object.assign(Object.create(Object.getPrototypeOf(value)) as T, value)
}

export class ZooKeeperSession {
  readonly #options: ZooKeeperSessionOptions
  readonly #log: Logger
  #client: Client | undefined
  #generation = 0
  #connected = false
  #sessionId = ''
  /** The timeout the server granted the current session (it clamps the one asked for), 0 before one. */
  #grantedTimeoutMs = 0
  /**
   * Since when the client has had no connection that worked: when it was built, or lost a connection on
   * which the server had answered a request. The start of the connect deadline.
   */
  #waitingSinceMs = 0
  /** Whether the server answered a request on the current connection. A handshake alone is no proof. */
  #answered = false
  /** When a server last sent anything on this session (a handshake, an answer): its timeout on the ensemble runs from about then. */
  #lastAnswerMs = 0
  /** Clients in a row that never got a session: the back-off between connect attempts grows with it. */
  #failedBuilds = 0
  #probeSentAtMs: number | undefined
  #watchdog: NodeJS.Timeout | undefined
  #watchdogTickMs = 0
  #closed = false
  #connectionError: string | undefined
  #listeners = new Set<(event: SessionEvent) => void>()

  constructor (options: ZooKeeperSessionOptions) {
    this.#options = options
    this.#log = options.logger.child({ component: 'zookeeper' })
  }

  get connected (): boolean {
    return this.#connected
  }

  /** Why the last connection to a server failed (`connect ECONNREFUSED 127.0.0.1:2181`), until one succeeds. */
  get connectionError (): string | undefined {
    return this.#connectionError
  }

  /** The current client when connected; requests made through it fail or hang once the session is lost. */
  get client (): Client | undefined {
    return this.#connected ? this.#client : undefined
  }

  /** Changes every time the client is rebuilt; work started under an older generation is void. */
  get generation (): number {
    return this.#generation
  }

  /**
   * The session timeout the server granted, or the one asked for before it granted one. It stays the
   * granted one while disconnected: the session lives that long on the server, whatever was asked.
   */
  get sessionTimeoutMs (): number {
    return this.#grantedTimeoutMs > 0 ? this.#grantedTimeoutMs : this.#options.sessionTimeoutMs
  }

  on (listener: (event: SessionEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  start (): void {
    if (this.#client || this.#closed) return
    this.#build()
    this.#armWatchdog()
  }

  /** Four checks per session timeout: the one granted once there is one, so a clamped timeout is kept too. */
  #armWatchdog (): void {
    const tickMs = Math.max(100, Math.floor(this.sessionTimeoutMs / 4))
    if (this.#watchdog && this.#watchdogTickMs === tickMs) return
    clearInterval(this.#watchdog)
    this.#watchdogTickMs = tickMs
    this.#watchdog = setInterval(() => this.#checkHealth(), tickMs)
    this.#watchdog.unref()
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#watchdog)
    const client = this.#client
    this.#client = undefined
    this.#connected = false
    if (!client) return
    if (!hasSession(client)) return abandon(client)
    // The 'state' listeners stay: the client's own one turns the final state into the 'disconnected'
    // event awaited below, and ours ignores everything once closed.
    // close() sends closeSession, which removes our ephemeral nodes at once; wait for it briefly.
    await new Promise<void>(resolve => {
      const timer = setTimeout(() => { abandon(client); resolve() }, CLOSE_GRACE_MS)
      client.once('disconnected', () => { clearTimeout(timer); resolve() })
      client.close()
    })
  }

  #build (): void {
    const generation = ++this.#generation
    const client = zookeeper.createClient(this.#options.connectString, {
      sessionTimeout: this.#options.sessionTimeoutMs,
      // Reconnects within a session stay quick; a ZooKeeper that is not there is retried with capped back-off.
      spinDelay: Math.min(MAX_SPIN_DELAY_MS, 200 * 2 ** this.#failedBuilds),
      retries: 0,
    })
    batchSetWatches(client)
    freshFraming(client)
    cancellableReconnects(client)
    handshakeTimeout(client)
    socketErrors(client, err => { if (generation === this.#generation) this.#connectionError = err.message })
    received(client, () => { if (generation === this.#generation) this.#lastAnswerMs = performance.now() })
    this.#client = client
    this.#connected = false
    this.#sessionId = ''
    this.#grantedTimeoutMs = 0
    this.#waitingSinceMs = performance.now()
    this.#probeSentAtMs = undefined
    client.on('state', state => {
      if (generation !== this.#generation || this.#closed) return
      this.#onState(client, state)
    })
    client.connect()
  }

  #onState (client: Client, state: zookeeper.State): void {
    const { State } = zookeeper
    if (state === State.SYNC_CONNECTED || state === State.CONNECTED_READ_ONLY) {
      const sessionId = client.getSessionId().toString('hex')
      const newSession = sessionId !== this.#sessionId
      this.#sessionId = sessionId
      this.#connected = true
      this.#connectionError = undefined
      this.#grantedTimeoutMs = client.getSessionTimeout()
      this.#armWatchdog()
      this.#failedBuilds = 0
      this.#answered = false
      this.#lastAnswerMs = performance.now()
      // A new session is the server's answer already; a handshake that resumes one proves nothing.
      if (newSession) this.#waitingSinceMs = performance.now()
      this.#log.info({ sessionId, newSession, timeoutMs: this.#grantedTimeoutMs }, 'zookeeper connected')
      this.#emit({ type: 'connected', client, newSession })
      // Proof that the connection works, or its loss, comes at once.
      this.#probe(client)
    } else if (state === State.DISCONNECTED) {
      this.#lost()
    } else if (state === State.EXPIRED) {
      this.#replace('expired')
    } else if (state === State.AUTH_FAILED) {
      this.#log.error('zookeeper authentication failed')
      this.#replace('expired')
    }
  }

  #lost (): void {
    if (!this.#connected) return
    this.#connected = false
    // A server that drops every connection after the handshake (one packet over its limit, say) would
    // otherwise restart the deadline at each drop, and the client would never be rebuilt.
    if (this.#answered) this.#waitingSinceMs = performance.now()
    this.#log.warn('zookeeper disconnected')
    this.#emit({ type: 'disconnected' })
  }

  #replace (reason: 'expired' | 'connect-deadline'): void {
    // A client that never got a session (ZooKeeper down, or a handshake that hung) lost nothing.
    const hadSession = this.#sessionId !== ''
    const old = this.#client
    if (old) {
      old.removeAllListeners('state')
      // Never closeSession here. A session the watchdog gives up may still be alive: a server that hung
      // for less than the session timeout reads the queued closeSession as it wakes and deletes the
      // agent's registration at once, before the new session can replace it in one step. Left alone,
      // the session expires by itself, as the Java client leaves one it has no connection for.
      abandon(old)
    }
    this.#connected = false
    this.#failedBuilds = hadSession ? 0 : this.#failedBuilds + 1
    if (hadSession) {
      this.#log.warn({ reason }, 'zookeeper session lost, building a new client')
      this.#emit({ type: 'expired', reason })
    } else {
      this.#log.warn({
        connectString: this.#options.connectString,
        waitedMs: Math.round(performance.now() - this.#waitingSinceMs),
        lastError: this.#connectionError,
      }, 'still no zookeeper session, retrying with a new client')
    }
    if (!this.#closed) this.#build()
  }

  /**
   * node-zookeeper-client has no request timeout: a stopped server keeps the TCP connection open and the
   * client "connected" forever while the ensemble expires the session. A cheap probe under a deadline
   * shorter than the session timeout catches that; a connect that never completes is caught the same way.
   */
  #checkHealth (): void {
    const client = this.#client
    if (!client || this.#closed) return
    const now = performance.now()
    const timeoutMs = this.sessionTimeoutMs
    if (!this.#connected) {
      // A lost session is surely expired after its timeout; a first connect on a busy machine may take longer.
      const deadlineMs = this.#sessionId === '' ? Math.max(timeoutMs, FIRST_CONNECT_DEADLINE_MS) : timeoutMs
      if (now - this.#waitingSinceMs > deadlineMs) this.#replace('connect-deadline')
      return
    }
    if (this.#probeSentAtMs !== undefined) {
      // Two thirds of the session timeout without an answer, as the Java client's read timeout: a third
      // is left to resume the session on another server before the ensemble expires it.
      if (now - this.#lastAnswerMs > (timeoutMs * 2) / 3) this.#moveOn(client, now)
      return
    }
    this.#probe(client)
  }

  /**
   * The server the client is on has stopped answering (a long pause, a hung disk). As the Java client does,
   * its connection is closed and the next server in the connect string is given the same session: on an
   * ensemble, the session, its watches and an agent's znode carry on as they were. If the session is gone
   * meanwhile, the server says so (expired); if no server answers before it surely is, the client is
   * rebuilt (connect deadline), as with one server only.
   */
  #moveOn (client: Client, now: number): void {
    const err = new FleetgateError('FLEETGATE_ERR_ZK_WATCHDOG', `no answer in ${Math.round(now - this.#lastAnswerMs)} ms`)
    this.#log.warn({ err }, 'zookeeper watchdog fired: trying the next server with the same session')
    this.#probeSentAtMs = undefined
    // As after any lost connection (#lost): a session timeout from now to get the session back, if this
    // connection ever answered. A server that finds the session expired meanwhile says so at once.
    this.#connected = false
    if (this.#answered) this.#waitingSinceMs = now
    this.#emit({ type: 'disconnected' })
    managerOf(client).socket?.destroy(err)
  }

  #probe (client: Client): void {
    const generation = this.#generation
    this.#probeSentAtMs = performance.now()
    client.exists('/', (err: unknown, _stat: Stat) => {
      if (generation !== this.#generation) return
      this.#probeSentAtMs = undefined
      // Any answer from the server, even an error, proves it alive; a lost connection fails the probe here.
      const code = zkErrorCode(err)
      if (code !== zookeeper.Exception.CONNECTION_LOSS && code !== zookeeper.Exception.SESSION_EXPIRED) this.#answered = true
    })
  }

  #emit (event: SessionEvent): void {
    for (const listener of this.#listeners) listener(event)
  }
}

/** ZooKeeper error code of a node-zookeeper-client failure, or undefined for other errors. */
export function zkErrorCode (err: unknown): number | undefined {
  return err instanceof zookeeper.Exception ? err.getCode() : undefined
}

export const ZK = {
  NO_NODE: zookeeper.Exception.NO_NODE,
  NO_AUTH: zookeeper.Exception.NO_AUTH,
  NODE_EXISTS: zookeeper.Exception.NODE_EXISTS,
  BAD_VERSION: zookeeper.Exception.BAD_VERSION,
  CONNECTION_LOSS: zookeeper.Exception.CONNECTION_LOSS,
  EPHEMERAL: zookeeper.CreateMode.EPHEMERAL,
  PERSISTENT: zookeeper.CreateMode.PERSISTENT,
  NODE_CREATED: zookeeper.Event.NODE_CREATED,
  NODE_DELETED: zookeeper.Event.NODE_DELETED,
  NODE_DATA_CHANGED: zookeeper.Event.NODE_DATA_CHANGED,
  NODE_CHILDREN_CHANGED: zookeeper.Event.NODE_CHILDREN_CHANGED,
} as const

type Watcher = (event: ZkEvent) => void

export function getChildren (client: Client, path: string, watcher?: Watcher): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const cb = (err: unknown, children: string[]): void => { err ? reject(err) : resolve(children) }
    watcher ? client.getChildren(path, watcher, cb) : client.getChildren(path, cb)
  })
}

export function getData (client: Client, path: string, watcher?: Watcher): Promise<{ data: Buffer | null, stat: Stat }> {
  return new Promise((resolve, reject) => {
    const cb = (err: unknown, data: Buffer, stat: Stat): void => { err ? reject(err) : resolve({ data, stat }) }
    watcher ? client.getData(path, watcher, cb) : client.getData(path, cb)
  })
}

export function exists (client: Client, path: string, watcher?: Watcher): Promise<Stat | null> {
  return new Promise((resolve, reject) => {
    const cb = (err: unknown, stat: Stat): void => { err ? reject(err) : resolve(stat ?? null) }
    watcher ? client.exists(path, watcher, cb) : client.exists(path, cb)
  })
}

export function create (client: Client, path: string, data: Buffer, mode: number): Promise<string> {
  return new Promise((resolve, reject) => {
    client.create(path, data, mode, (err, created) => { err ? reject(err) : resolve(created) })
  })
}

export function setData (client: Client, path: string, data: Buffer, version = -1): Promise<Stat> {
  return new Promise((resolve, reject) => {
    client.setData(path, data, version, (err, stat) => { err ? reject(err) : resolve(stat) })
  })
}

export function remove (client: Client, path: string, version = -1): Promise<void> {
  return new Promise((resolve, reject) => {
    client.remove(path, version, err => { err ? reject(err) : resolve() })
  })
}

/**
 * Deletes the node at `version` and creates it again with `data`, in one transaction (a ZooKeeper multi):
 * a reader sees the old node or the new one, never neither. Fails as a whole with the first op's error.
 */
export function replace (client: Client, path: string, version: number, data: Buffer, mode: number): Promise<void> {
  return new Promise((resolve, reject) => {
    client.transaction().remove(path, version).create(path, data, mode).commit(err => { err ? reject(err) : resolve() })
  })
}

export function mkdirp (client: Client, path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    client.mkdirp(path, err => { err ? reject(err) : resolve() })
  })
}
