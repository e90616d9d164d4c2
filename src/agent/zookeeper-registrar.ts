// ZooKeeperRegistrar: holds the EPHEMERAL znode <basePath>/<service>/<id> while the agent wants it, and
// converges on what the agent asked after every reconnect, session expiry, deletion by others and tick.

import { posix } from 'node:path'
import type { Stat } from 'node-zookeeper-client'
import { FleetgateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import type { InstanceState } from '../membership/instance.ts'
import {
  create, exists, mkdirp, remove, replace, setData, ZK, zkErrorCode, ZooKeeperSession,
  type Client, type SessionEvent, type ZkEvent,
} from '../zookeeper/session.ts'
import { Retry } from '../zookeeper/retry.ts'
import { DesiredRegistration, type Desired, type Registrar, type RegistrarEvent, type RegistrarStatus } from './registrar.ts'

export interface ZooKeeperRegistrarOptions {
  readonly connectString: string
  readonly sessionTimeoutMs: number
  readonly basePath: string
  readonly service: string
  readonly id: string
  /** The znode's data for a state (Curator JSON). */
  readonly encode: (state: InstanceState) => Buffer
  /** How often the znode is checked to still be there (and written again if it is not). */
  readonly verifyIntervalMs: number
  readonly logger: Logger
  readonly onEvent?: (event: RegistrarEvent) => void
}

/** ZooKeeper error codes the converge loop expects in a race; it just runs again. */
const RACES: ReadonlySet<number | undefined> = new Set([ZK.NO_NODE, ZK.NODE_EXISTS, ZK.BAD_VERSION])
/** Races lost in a row before the last one counts as a failure: something keeps undoing the write. */
const MAX_RACES_IN_A_ROW = 10

/** First "waiting for ZooKeeper" after 1 s, then doubling up to every 30 s. */
const WAIT_LOG_FIRST_MS = 1_000
const WAIT_LOG_MAX_MS = 30_000

export class ZooKeeperRegistrar implements Registrar {
  readonly path: string
  readonly #options: ZooKeeperRegistrarOptions
  readonly #log: Logger
  readonly #session: ZooKeeperSession
  readonly #desired = new DesiredRegistration()
  /** What this session last wrote, to spot a change by someone else (the znode version moved). */
  #written: { data: string, version: number } | undefined
  #registered = false
  #state: InstanceState | undefined
  #lastError: string | undefined
  #conflict = false
  /**
   * The session that removed a node another session held, as a leftover of an earlier run. Once per
   * session: a node of another session that appears again is a second live agent with this id.
   */
  #clearedForeignIn: string | undefined
  #loopGeneration: number | undefined
  #dirty = false
  /** The ZooKeeper error of the race the last pass lost. */
  #lostRace: unknown
  readonly #retry = new Retry()
  #watcher: { generation: number, fn: (event: ZkEvent) => void } | undefined
  #verifyTimer: NodeJS.Timeout | undefined
  #waitLogTimer: NodeJS.Timeout | undefined
  #waitingSinceMs = performance.now()
  #closed = false

  constructor (options: ZooKeeperRegistrarOptions) {
    this.#options = options
    this.path = posix.join(options.basePath, options.service, options.id)
    this.#log = options.logger.child({ component: 'registrar', znode: this.path })
    this.#session = new ZooKeeperSession({
      connectString: options.connectString,
      sessionTimeoutMs: options.sessionTimeoutMs,
      logger: options.logger,
    })
    this.#session.on(event => this.#onSession(event))
  }

  start (): void {
    if (this.#closed || this.#verifyTimer) return
    this.#session.start()
    // A failed write's retry, with its back-off, stands in for the ticks until it has run.
    this.#verifyTimer = setInterval(() => { if (!this.#retry.pending) this.#request() }, this.#options.verifyIntervalMs)
    this.#verifyTimer.unref()
    this.#scheduleWaitLog(WAIT_LOG_FIRST_MS)
  }

  register (state: InstanceState): Promise<void> {
    return this.#want({ kind: 'registered', state })
  }

  setState (state: InstanceState): Promise<void> {
    return this.#want({ kind: 'registered', state })
  }

  deregister (): Promise<void> {
    return this.#want({ kind: 'absent' })
  }

  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#verifyTimer)
    clearTimeout(this.#waitLogTimer)
    this.#retry.cancel()
    this.#desired.releaseAll()
    // Closing the session removes the ephemeral znode at once, whatever state it was in.
    await this.#session.close()
    if (this.#registered) this.#emit({ type: 'deregistered' })
    this.#registered = false
  }

  status (): RegistrarStatus {
    return {
      registry: 'zookeeper',
      key: this.path,
      connected: this.#session.connected,
      session: this.#session.client?.getSessionId().toString('hex'),
      desired: this.#desired.current,
      registered: this.#registered,
      state: this.#registered ? this.#state : undefined,
      // Out of reach, why the connection fails says more than a write lost with it (CONNECTION_LOSS).
      lastError: (this.#session.connected ? undefined : this.#session.connectionError) ?? this.#lastError,
    }
  }

  #want (desired: Desired): Promise<void> {
    if (this.#closed) return Promise.resolve()
    const done = this.#desired.want(desired)
    this.#request()
    return done
  }

  #onSession (event: SessionEvent): void {
    if (this.#closed) return
    switch (event.type) {
      case 'connected':
        clearTimeout(this.#waitLogTimer)
        if (event.newSession) {
          // A new session holds no ephemeral node of ours: whatever was there went with the old one.
          this.#written = undefined
          this.#markAbsent()
        }
        this.#emit({ type: 'connected', newSession: event.newSession })
        this.#request()
        break
      case 'disconnected':
        this.#waitingSinceMs = performance.now()
        this.#scheduleWaitLog(WAIT_LOG_FIRST_MS)
        this.#emit({ type: 'disconnected' })
        break
      case 'expired':
        // Forget what was reported, so that the next session reports it again (Nerve's lesson).
        this.#written = undefined
        this.#markAbsent()
        this.#emit({ type: 'expired', reason: event.reason })
        break
    }
  }

  #scheduleWaitLog (delayMs: number): void {
    clearTimeout(this.#waitLogTimer)
    this.#waitLogTimer = setTimeout(() => {
      if (this.#closed || this.#session.connected) return
      this.#log.warn({
        connectString: this.#options.connectString,
        waitingMs: Math.round(performance.now() - this.#waitingSinceMs),
        desired: this.#desired.current.kind,
        lastError: this.#session.connectionError,
      }, 'waiting for ZooKeeper; still trying')
      this.#scheduleWaitLog(Math.min(WAIT_LOG_MAX_MS, delayMs * 2))
    }, delayMs)
    this.#waitLogTimer.unref()
  }

  #request (): void {
    if (this.#closed) return
    const generation = this.#session.generation
    if (this.#loopGeneration === generation) {
      this.#dirty = true
      return
    }
    // Something asked for a pass (a change, a reconnect, the retry itself): a pending retry is it.
    this.#retry.cancel()
    void this.#loop(generation)
  }

  /** One loop per client: a rebuilt client starts its own, and the old one's stops at its next step. */
  async #loop (generation: number): Promise<void> {
    this.#loopGeneration = generation
    let races = 0
    try {
      do {
        this.#dirty = false
        const client = this.#session.client
        if (!client || this.#closed || this.#session.generation !== generation) return
        const version = this.#desired.version
        const finished = await this.#converge(client, generation, this.#desired.current)
        if (!this.#current(generation)) return
        if (finished) {
          races = 0
          this.#lastError = undefined
          this.#retry.succeeded()
          this.#desired.reached(version)
        } else if (++races >= MAX_RACES_IN_A_ROW) {
          throw new Error(`lost ${races} races in a row, the last: ${String(this.#lostRace)}`, { cause: this.#lostRace })
        } else {
          this.#dirty = true
        }
      } while (this.#dirty && this.#current(generation))
    } catch (err) {
      const code = zkErrorCode(err)
      this.#lastError = err instanceof Error ? err.message : String(err)
      const wrapped = new FleetgateError('FLEETGATE_ERR_AGENT_REGISTRATION', this.path, { cause: err })
      // A lost connection is already reported by the session, and a reconnect converges again.
      const retryMs = this.#retry.failed()
      this.#log[code === ZK.CONNECTION_LOSS ? 'debug' : 'warn']({ err: wrapped, retryMs }, 'registration write failed; will retry')
      if (this.#current(generation)) this.#retry.schedule(retryMs, () => this.#request())
    } finally {
      if (this.#loopGeneration === generation) this.#loopGeneration = undefined
    }
  }

  /** One pass towards `desired`. False when it lost a race and should run again. */
  async #converge (client: Client, generation: number, desired: Desired): Promise<boolean> {
    if (desired.kind === 'unset') return true
    const watcher = this.#watcherFor(generation)
    try {
      const stat = await exists(client, this.path, watcher)
      if (!this.#current(generation)) return true

      const session = client.getSessionId().toString('hex')
      const foreign = stat !== null && !stat.ephemeralOwner.equals(client.getSessionId())
      if (desired.kind === 'absent') {
        // Whoever wrote it (this session or an earlier run of this agent), the instance is not serving;
        // only a node another live agent holds is left alone. Deleting that again each time it came back
        // would have both agents delete and create it in a loop.
        if (foreign && (this.#conflict || this.#clearedForeignIn === session)) {
          this.#reportConflict(stat)
        } else if (stat) {
          await remove(client, this.path, stat.version)
          if (foreign) this.#clearedForeignIn = session
          this.#log.info('deregistered')
        }
        this.#written = undefined
        this.#markAbsent()
        return true
      }

      const data = this.#options.encode(desired.state)
      const text = data.toString()
      if (foreign) {
        if (this.#written || this.#clearedForeignIn === session) {
          // This session created it, or already cleared one left over, so another live session holds it:
          // a second agent with the same id. Fighting would make both delete each other's node forever;
          // the operator must fix it.
          this.#reportConflict(stat)
          this.#markAbsent()
          return true
        }
        // Left by an earlier session (ours before an expiry or a lost connection, or a restarted agent's):
        // delete and create again rather than adopt it, so watchers see the change and the node dies with
        // OUR session. In one transaction: a delete then a create left the instance out of the membership
        // between the two, and a proxy that read the list then had an empty pool for a one-instance
        // service (or for every instance, when a ZooKeeper outage had all agents replace theirs at once).
        this.#log.warn({ owner: stat.ephemeralOwner.toString('hex') }, 'replacing a registration left by another session')
        await replace(client, this.path, stat.version, data, ZK.EPHEMERAL)
        this.#clearedForeignIn = session
        this.#written = { data: text, version: 0 }
        this.#markRegistered(desired.state, true)
        return true
      }
      this.#conflict = false
      if (!stat) {
        await this.#create(client, data)
        this.#written = { data: text, version: 0 }
        this.#markRegistered(desired.state, true)
        return true
      }
      if (this.#written?.data !== text || this.#written.version !== stat.version) {
        const written = await setData(client, this.path, data, stat.version)
        this.#written = { data: text, version: written.version }
        this.#markRegistered(desired.state, false)
        return true
      }
      this.#markRegistered(desired.state, false)
      return true
    } catch (err) {
      if (!RACES.has(zkErrorCode(err))) throw err
      this.#lostRace = err
      return false
    }
  }

  #reportConflict (stat: Stat): void {
    if (!this.#conflict) this.#log.error({ owner: stat.ephemeralOwner.toString('hex') }, 'another agent holds this instance id; set a distinct --id')
    this.#conflict = true
  }

  async #create (client: Client, data: Buffer): Promise<void> {
    try {
      await create(client, this.path, data, ZK.EPHEMERAL)
    } catch (err) {
      if (zkErrorCode(err) !== ZK.NO_NODE) throw err
      // The service path is PERSISTENT and shared by every instance; create it on first use.
      const parent = posix.dirname(this.path)
      try {
        await mkdirp(client, parent)
      } catch (mkdirErr) {
        if (zkErrorCode(mkdirErr) !== ZK.NO_NODE) throw mkdirErr
        // A node it may not create is missing above it: the connect string's chroot, which nobody made.
        throw new Error(`cannot create ${parent}: a node above it is missing (the connect string's chroot?)`, { cause: mkdirErr })
      }
      await create(client, this.path, data, ZK.EPHEMERAL)
    }
  }

  #markRegistered (state: InstanceState, created: boolean): void {
    const changed = !this.#registered || this.#state !== state || created
    this.#registered = true
    this.#state = state
    if (changed) {
      this.#log.info({ state, created }, created ? 'registered' : 'registration updated')
      this.#emit({ type: 'registered', state, created })
    }
  }

  #markAbsent (): void {
    if (!this.#registered) return
    this.#registered = false
    this.#emit({ type: 'deregistered' })
  }

  /** One watcher function per client, so re-arming the watch on every pass never piles up listeners. */
  #watcherFor (generation: number): (event: ZkEvent) => void {
    if (this.#watcher?.generation !== generation) {
      this.#watcher = {
        generation,
        fn: (): void => {
          // Deleted or changed by someone (or by us): look again and put back what is wanted.
          if (this.#session.generation === generation) this.#request()
        },
      }
    }
    return this.#watcher.fn
  }

  #current (generation: number): boolean {
    return !this.#closed && this.#session.generation === generation && this.#session.connected
  }

  #emit (event: RegistrarEvent): void {
    try {
      this.#options.onEvent?.(event)
    } catch (err) {
      this.#log.error({ err }, 'registrar event listener failed')
    }
  }
}
