// ZooKeeperSource: follows the children of <basePath>/<service>. Child and data watches make a change
// cost reads for the changed children only; a periodic full resync heals anything a watch missed.

import { posix } from 'node:path'
import type { Logger } from '../logger.ts'
import {
  exists, getChildren, getData, ZK, zkErrorCode, ZooKeeperSession,
  type Client, type SessionEvent, type ZkEvent,
} from '../zookeeper/session.ts'
import { Retry } from '../zookeeper/retry.ts'
import { decodeRegistration, sameInstance, type DecodeResult, type Instance } from './instance.ts'
import { BaseSource } from './source.ts'

export interface ZooKeeperSourceOptions {
  readonly connectString: string
  readonly basePath: string
  readonly service: string
  readonly sessionTimeoutMs: number
  readonly resyncIntervalMs: number
  readonly logger: Logger
}

interface CachedChild {
  readonly result: DecodeResult
  /** Set by a data watch or a new session: the next sync reads this child again. */
  stale: boolean
  /** The last sync pass whose child list named it. */
  listed: number
}

/** How many getData calls one sync keeps in flight, so a 10,000-child first read neither floods nor crawls. */
const READ_CONCURRENCY = 128

export class ZooKeeperSource extends BaseSource {
  readonly kind = 'zookeeper'
  readonly path: string
  readonly #options: ZooKeeperSourceOptions
  readonly #log: Logger
  readonly #session: ZooKeeperSession
  readonly #cache = new Map<string, CachedChild>()
  /** Invalid children already reported, by reason: reported once, not at every resync or session. */
  readonly #reported = new Map<string, string>()
  /** Generation of the client a sync is running under; a rebuilt client starts its own sync. */
  #syncingGeneration: number | undefined
  #dirty = false
  readonly #retry = new Retry()
  #fullResync = false
  #resyncTimer: NodeJS.Timeout | undefined
  #reads = 0
  /** Numbers the child lists read, for CachedChild.listed. */
  #pass = 0
  /**
   * What the cache gained and lost since the last commit, which publishes just that change. The first
   * commit, and one after a full resync or a new session, publishes the whole cache instead, which
   * heals any drift between the cache and the set.
   */
  readonly #gained = new Set<Instance>()
  /** By id (the child's name): a child dropped and read again unchanged before the commit gets its object back. */
  readonly #lost = new Map<string, Instance>()
  #commitWhole = true
  /** Children a data watch saw deleted since the last list was read. */
  readonly #deleted = new Set<string>()
  /**
   * The children being read, each with whether a watch event for it came meanwhile. The client handles
   * a whole socket read at once: a read's answer and an event right behind it in the same packet run the
   * event's handler before the read's result is stored, which would then overwrite what the event said.
   */
  readonly #reading = new Map<string, { touched: boolean }>()
  #watcher: { generation: number, fn: (event: ZkEvent) => void } | undefined
  /**
   * Until when (performance.now()) a list with no instance, read on a session that replaced a lost one,
   * is not published: see #holdingEmpty(). 0 when no hold is armed.
   */
  #holdEmptyUntilMs = 0
  #holdTimer: NodeJS.Timeout | undefined

  constructor (options: ZooKeeperSourceOptions) {
    super(options.service)
    this.#options = options
    this.path = posix.join(options.basePath, options.service)
    this.#log = options.logger.child({ source: 'zookeeper', path: this.path })
    this.#session = new ZooKeeperSession({
      connectString: options.connectString,
      sessionTimeoutMs: options.sessionTimeoutMs,
      logger: options.logger,
    })
    this.#session.on(event => this.#onSession(event))
  }

  /** ZooKeeper reads (list and data) made so far; lets tests and benchmarks check the cost of a change. */
  get reads (): number {
    return this.#reads
  }

  async start (): Promise<void> {
    this.#session.start()
    this.#resyncTimer = setInterval(() => {
      this.#fullResync = true
      // A failed sync's retry, with its back-off, will be this resync.
      if (!this.#retry.pending) this.#requestSync()
    }, this.#options.resyncIntervalMs)
    this.#resyncTimer.unref()
    return this.firstMembership()
  }

  async close (): Promise<void> {
    clearInterval(this.#resyncTimer)
    clearTimeout(this.#holdTimer)
    this.#retry.cancel()
    this.releaseStart()
    await this.#session.close()
  }

  #onSession (event: SessionEvent): void {
    switch (event.type) {
      case 'connected':
        // Reconnected within the session: the client re-registers our watches, but a child list may
        // have changed meanwhile. A new session has no watches at all: read everything again (what is
        // cached stays until then, to be compared with what is read).
        if (event.newSession) {
          for (const cached of this.#cache.values()) cached.stale = true
          this.#commitWhole = true
          // Whatever lost our session (ZooKeeper frozen past the session timeout, restarted with an empty
          // dataDir) most likely lost every agent's too, and their znodes with them; they register again
          // as soon as they reconnect, which may be seconds after us. Reading the service empty meanwhile
          // is no news about the fleet.
          if ((this.current()?.instances.length ?? 0) > 0) this.#holdEmptyUntilMs = performance.now() + this.#session.sessionTimeoutMs
        }
        this.setStatus('connected', true)
        this.#requestSync()
        break
      case 'disconnected':
        this.setStatus('disconnected', true)
        break
      case 'expired':
        this.emit({ type: 'session-expired' })
        this.setStatus('expired', true)
        this.setStatus('connecting', true)
        break
    }
  }

  #requestSync (): void {
    const generation = this.#session.generation
    if (this.#syncingGeneration === generation) {
      this.#dirty = true
      return
    }
    // A change, a reconnect or the retry itself: a pending retry is this sync.
    this.#retry.cancel()
    void this.#syncLoop(generation)
  }

  async #syncLoop (generation: number): Promise<void> {
    this.#syncingGeneration = generation
    let full = false
    try {
      do {
        this.#dirty = false
        const client = this.#session.client
        if (!client || this.#session.generation !== generation) return
        full = this.#fullResync
        this.#fullResync = false
        await this.#syncOnce(client, generation, full)
      } while (this.#dirty && this.#session.generation === generation)
      this.#retry.succeeded()
    } catch (err) {
      // A full resync that failed is still owed: its retry is one too.
      this.#oweFullResync(full)
      // Connection loss and the like: the session reports it and a reconnect starts a new sync. What
      // ZooKeeper refuses while connected (such as the service node's ACL) is tried again, ever less often.
      const retryMs = this.#retry.failed()
      this.#log.warn({ err, retryMs }, 'zookeeper sync failed; keeping the last membership')
      if (this.#session.connected && this.#session.generation === generation) {
        // Connected, but the list is not followed: the membership may lag the registry from now on.
        this.setStatus('connected', true)
        this.#retry.schedule(retryMs, () => this.#requestSync())
      }
    } finally {
      if (this.#syncingGeneration === generation) this.#syncingGeneration = undefined
    }
  }

  async #syncOnce (client: Client, generation: number, full: boolean): Promise<void> {
    const watcher = this.#watcherFor(generation)
    if (full) this.#commitWhole = true
    let children: string[]
    try {
      this.#reads++
      children = await getChildren(client, this.path, watcher)
    } catch (err) {
      if (zkErrorCode(err) !== ZK.NO_NODE) throw err
      // The service path does not exist yet: wait for it. While connected, an absent path is an
      // authoritative empty membership.
      this.#reads++
      const stat = await exists(client, this.path, watcher)
      if (stat) {
        this.#dirty = true
        return
      }
      if (this.#current(generation)) {
        this.#forgetUnlisted(++this.#pass, this.#cache.size)
        this.#commit()
      }
      return
    }
    if (!this.#current(generation)) return this.#oweFullResync(full)

    // One pass over the list, which at 10,000 children is most of a change's cost on this side. It
    // marks what is still listed, so what is not can be dropped without a set of 10,000 names.
    const pass = ++this.#pass
    const toRead: string[] = []
    /** Read, and not changed since by what the watches said: a full resync reads them again, last. */
    const toCheck: string[] = []
    let cachedListed = 0
    for (const name of children) {
      const cached = this.#cache.get(name)
      if (cached !== undefined) {
        cachedListed++
        cached.listed = pass
      }
      if (cached?.stale !== false) toRead.push(name)
      else if (full) toCheck.push(name)
    }
    this.#forgetUnlisted(pass, this.#cache.size - cachedListed)
    await this.#readChildren(client, generation, toRead, watcher)
    if (!this.#current(generation)) return this.#oweFullResync(full)
    this.#commit()
    if (toCheck.length > 0) await this.#check(client, generation, toCheck, watcher)
  }

  /**
   * The rest of a full resync: every child read again, to catch a change whose watch went missing. At
   * 10,000 children that is a quarter of a second of reads or more. A change that comes meanwhile does
   * not wait for them: the reads pause (those in flight finish), the change gets its own pass, and the
   * reads go on.
   */
  async #check (client: Client, generation: number, names: string[], watcher: (event: ZkEvent) => void): Promise<void> {
    let at = 0
    for (;;) {
      at = await this.#readChildren(client, generation, names, watcher, at, () => this.#dirty)
      if (!this.#current(generation)) return this.#oweFullResync(true)
      if (at === names.length) break
      this.#dirty = false
      await this.#syncOnce(client, generation, false)
      if (!this.#current(generation)) return this.#oweFullResync(true)
    }
    this.#commit()
  }

  /**
   * Drops what is kept for children the list of `pass` did not name: `unlisted` cached ones, and the
   * records of invalid ones reported. The children whose deletion a data watch reported are looked at
   * first; the cache is walked only for any left, which at 10,000 children is the one pass that costs.
   */
  #forgetUnlisted (pass: number, unlisted: number): void {
    for (const name of this.#deleted) {
      const cached = this.#cache.get(name)
      if (cached !== undefined && cached.listed !== pass && unlisted > 0) {
        this.#drop(name)
        unlisted--
      }
    }
    this.#deleted.clear()
    if (unlisted > 0) for (const [name, cached] of this.#cache) if (cached.listed !== pass) this.#drop(name)
    for (const name of this.#reported.keys()) if (this.#cache.get(name)?.listed !== pass) this.#reported.delete(name)
  }

  /**
   * Reads `names` from `from` on, READ_CONCURRENCY at a time, and returns where it stopped: at the end,
   * or earlier once `pause()` holds, but not before READ_CONCURRENCY reads (so that under a stream of
   * changes, each with its pass, a resync still gets on).
   */
  async #readChildren (client: Client, generation: number, names: string[], watcher: (event: ZkEvent) => void, from = 0, pause?: () => boolean): Promise<number> {
    let next = from
    // Once one read fails, the sync is over: the others stop rather than fill the cache behind the retry.
    let failed = false
    // A read that outlived its session, or its sync, must not land in the cache.
    const live = (): boolean => !failed && this.#current(generation)
    const worker = async (): Promise<void> => {
      while (next < names.length && live() && !(next - from >= READ_CONCURRENCY && pause?.() === true)) {
        const name = names[next++]!
        // Its own entry: a read of an older client that settles late must not take this one's.
        const read = { touched: false }
        this.#reading.set(name, read)
        const touched = (): boolean => {
          if (this.#reading.get(name) === read) this.#reading.delete(name)
          return read.touched
        }
        try {
          this.#reads++
          const { data } = await getData(client, `${this.path}/${name}`, watcher)
          const stale = touched()
          if (live()) this.#store(name, decodeRegistration(name, data), stale)
        } catch (err) {
          touched()
          const code = zkErrorCode(err)
          if (code === ZK.NO_AUTH) {
            // Its ACL does not let fleetgate read it: skipped and reported like a malformed registration,
            // rather than failing every sync and holding back every other change.
            if (live()) this.#store(name, { ok: false, reason: 'unreadable', detail: 'ZooKeeper denied the read (NO_AUTH): the znode\'s ACL does not grant READ' }, false)
            continue
          }
          // Deleted between the list and the read: the child watch brings the new list.
          if (code !== ZK.NO_NODE) {
            failed = true
            throw err
          }
          if (live()) {
            this.#drop(name)
            this.#reported.delete(name)
          }
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, names.length - from) }, worker))
    return next
  }

  /** Caches what a read of `name` found; `stale`: an event for it came during the read, so read it again. */
  #store (name: string, result: DecodeResult, stale: boolean): void {
    const cached = this.#cache.get(name)
    if (cached?.result.ok && result.ok && sameInstance(cached.result.instance, result.instance)) {
      // Read again (a resync, a new session) but unchanged: keep the object the membership holds.
      // publish() would map an equal new object back to it too, but only by matching every re-read
      // child against the membership and sorting them, at every change until the next re-read.
      cached.stale = stale
      // Valid again after an invalid rewrite: a next one is news.
      this.#reported.delete(name)
      return
    }
    if (cached?.result.ok && !result.ok) {
      // Rewritten with data that does not read (a truncated write, an agent of another version): the
      // instance was not seen to leave, so it keeps its last valid registration, as Curator's
      // ServiceCache does. Dropping it emptied a one-instance service on a bad write.
      cached.stale = stale
      this.#reportInvalid(name, result, 'skipping invalid registration; keeping its last valid one')
      return
    }
    if (cached?.result.ok) this.#lose(cached.result.instance)
    const lost = result.ok ? this.#lost.get(result.instance.id) : undefined
    if (result.ok && lost !== undefined && sameInstance(lost, result.instance)) {
      // Dropped (a list that missed it, say) and back unchanged since the last commit: no change at all.
      this.#lost.delete(lost.id)
      this.#cache.set(name, { result: { ...result, instance: lost }, stale, listed: this.#pass })
      return
    }
    this.#cache.set(name, { result, stale, listed: this.#pass })
    if (result.ok) {
      this.#gained.add(result.instance)
      this.#reported.delete(name)
      return
    }
    this.#reportInvalid(name, result, 'skipping invalid registration')
  }

  /** Logs and counts an invalid child once per reason, not at every resync or session. */
  #reportInvalid (name: string, result: Extract<DecodeResult, { ok: false }>, msg: string): void {
    if (this.#reported.get(name) === result.reason) return
    this.#reported.set(name, result.reason)
    this.#log.warn({ child: name, reason: result.reason, detail: result.detail }, msg)
    this.emit({ type: 'invalid', id: name, reason: result.reason, detail: result.detail })
  }

  #drop (name: string): void {
    const cached = this.#cache.get(name)
    if (cached === undefined) return
    this.#cache.delete(name)
    if (cached.result.ok) this.#lose(cached.result.instance)
  }

  #lose (instance: Instance): void {
    if (!this.#gained.delete(instance)) this.#lost.set(instance.id, instance)
  }

  /**
   * Publishes the cache: the listed children, each as last read (an entry whose re-read was cut short
   * by a lost connection keeps its earlier result), less those deleted before they could be read.
   */
  #commit (): void {
    if (this.#holdingEmpty()) return
    const whole = (): Instance[] => {
      const instances: Instance[] = []
      for (const { result } of this.#cache.values()) if (result.ok) instances.push(result.instance)
      return instances
    }
    const changed = this.#commitWhole ? this.publish(whole()) : this.publishChange([...this.#gained], [...this.#lost.values()], whole)
    this.#gained.clear()
    this.#lost.clear()
    this.#commitWhole = false
    if (changed) {
      const membership = this.current()
      this.#log.info({ revision: membership?.revision, instances: membership?.instances.length }, 'membership changed')
    }
    this.setStatus('connected', false)
  }

  /**
   * Whether this commit is held back: within a session timeout of a new session that replaced a lost
   * one, a cache with no instance left keeps the last membership, marked stale, for the agents to
   * register again. Once the hold ends, a full resync publishes what ZooKeeper then lists, empty or not.
   */
  #holdingEmpty (): boolean {
    if (this.#holdEmptyUntilMs === 0) return false
    for (const { result } of this.#cache.values()) {
      if (result.ok) {
        // The new session lists instances: the fleet is back, and an empty list is news again.
        this.#endHold()
        return false
      }
    }
    const remainingMs = this.#holdEmptyUntilMs - performance.now()
    if (remainingMs <= 0) {
      this.#endHold()
      return false
    }
    if (this.#holdTimer === undefined) {
      this.#log.warn({ holdMs: Math.round(remainingMs) }, 'zookeeper lists no instance right after a new session; keeping the last membership while agents register again')
      this.#holdTimer = setTimeout(() => {
        this.#holdTimer = undefined
        this.#fullResync = true
        this.#requestSync()
      }, remainingMs)
      this.#holdTimer.unref()
    }
    // What the cache lost is published whole once the hold ends, against the membership kept meanwhile.
    this.#gained.clear()
    this.#lost.clear()
    this.#commitWhole = true
    this.setStatus('connected', true)
    return true
  }

  #endHold (): void {
    this.#holdEmptyUntilMs = 0
    clearTimeout(this.#holdTimer)
    this.#holdTimer = undefined
  }

  /**
   * One watcher function per client: node-zookeeper-client keeps one registration per (path, function),
   * so re-reading a child with the same function never piles up listeners.
   */
  #watcherFor (generation: number): (event: ZkEvent) => void {
    if (this.#watcher?.generation !== generation) {
      this.#watcher = { generation, fn: (event: ZkEvent): void => this.#onWatch(generation, event) }
    }
    return this.#watcher.fn
  }

  #onWatch (generation: number, event: ZkEvent): void {
    if (!this.#current(generation)) return
    if (event.path !== this.path) {
      const name = posix.basename(event.path)
      const read = this.#reading.get(name)
      if (read) read.touched = true
      if (event.type === ZK.NODE_DELETED) {
        // The service node's child watch fires for the same delete and brings the sync (a second one
        // from here would list all children again). This says which child went, so that sync need not
        // search the cache for it, and reads it again if it is back by then: created anew, perhaps
        // with other data, and without the data watch this event used up.
        this.#deleted.add(name)
        const cached = this.#cache.get(name)
        if (cached) cached.stale = true
        return
      }
      if (event.type === ZK.NODE_DATA_CHANGED) {
        const cached = this.#cache.get(name)
        if (cached) cached.stale = true
      }
    }
    this.#requestSync()
  }

  /** A full resync that failed or was cut short by a lost connection is still owed. */
  #oweFullResync (full: boolean): void {
    if (full) this.#fullResync = true
  }

  #current (generation: number): boolean {
    return this.#session.generation === generation && this.#session.connected
  }
}
