// The discovery interface every source implements, and the shared logic behind it: full-set emission
// (with the change, when a source knows it), de-duplication, revisions, status and the stale flag.

import { insertionPoint, positionOf, sameInstances, sortInstances, type Instance, type InvalidReason } from './instance.ts'

/** The live set of one service at one moment. Immutable. */
export interface Membership {
  readonly service: string
  /** Sorted by id. */
  readonly instances: readonly Instance[]
  /** Increases by one with every emitted change. */
  readonly revision: number
  /** Epoch ms of the change. */
  readonly changedAtMs: number
  /**
   * What changed from revision - 1, when the source knew it without comparing the whole set. A consumer
   * can apply it by looking up the changed instances only, rather than walk 10,000 for one that came or went.
   */
  readonly change?: MembershipChange
}

export interface MembershipChange {
  /** Instances of this membership that revision - 1 did not hold. A re-registered instance is in both lists. */
  readonly added: readonly Instance[]
  /** Instances of revision - 1 (the very objects) that this membership no longer holds. */
  readonly removed: readonly Instance[]
}

/**
 * connecting: no session yet (or rebuilding one); connected: following the registry live;
 * disconnected: lost contact, serving the last known membership; expired: the session is gone for good
 * and is being replaced.
 */
export type SourceStatus = 'connecting' | 'connected' | 'disconnected' | 'expired'

export type SourceEvent =
  | { readonly type: 'membership', readonly membership: Membership }
  | { readonly type: 'status', readonly status: SourceStatus, readonly stale: boolean }
  | { readonly type: 'invalid', readonly id: string, readonly reason: InvalidReason, readonly detail: string }
  | { readonly type: 'session-expired' }
  | { readonly type: 'error', readonly error: Error }

export interface SourceState {
  readonly kind: string
  readonly service: string
  readonly status: SourceStatus
  /** True while the membership may lag the registry: before a resync completes after trouble. */
  readonly stale: boolean
  readonly membership: Membership | undefined
}

/**
 * A discovery backend. Emits the FULL live set of one service, and only when it changed; a source that
 * knows what changed says so too (Membership.change). Trouble with the registry never empties the set:
 * the last membership is kept and marked stale.
 */
export interface MembershipSource {
  readonly kind: string
  readonly service: string
  /** Starts following; resolves once the first membership is known, or when the source is closed first. */
  start(): Promise<void>
  close(): Promise<void>
  current(): Membership | undefined
  state(): SourceState
  /** Membership changes only. Returns the unsubscribe function. */
  subscribe(listener: (membership: Membership) => void): () => void
  /** Every event: membership, status, invalid registrations, session expiries, errors. */
  onEvent(listener: (event: SourceEvent) => void): () => void
}

/** Holds what every source shares; a concrete source calls publish(), setStatus() and report(). */
export abstract class BaseSource implements MembershipSource {
  abstract readonly kind: string
  readonly service: string
  #membership: Membership | undefined
  #status: SourceStatus = 'connecting'
  #stale = true
  #listeners = new Set<(event: SourceEvent) => void>()
  #firstMembership: Promise<void>
  #resolveFirst!: () => void

  constructor (service: string) {
    this.service = service
    this.#firstMembership = new Promise(resolve => { this.#resolveFirst = resolve })
  }

  abstract start (): Promise<void>
  abstract close (): Promise<void>

  current (): Membership | undefined {
    return this.#membership
  }

  state (): SourceState {
    return { kind: this.kind, service: this.service, status: this.#status, stale: this.#stale, membership: this.#membership }
  }

  subscribe (listener: (membership: Membership) => void): () => void {
    return this.onEvent(event => { if (event.type === 'membership') listener(event.membership) })
  }

  onEvent (listener: (event: SourceEvent) => void): () => void {
    this.#listeners.add(listener)
    return () => { this.#listeners.delete(listener) }
  }

  /** Resolves with the first membership, or at close. */
  protected firstMembership (): Promise<void> {
    return this.#firstMembership
  }

  protected releaseStart (): void {
    this.#resolveFirst()
  }

  /** Offers the full current set. Emits only when it differs from the last one. Returns true if it did. */
  protected publish (instances: Iterable<Instance>): boolean {
    const sorted = sortInstances(instances, this.#membership?.instances)
    if (this.#membership !== undefined && sameInstances(this.#membership.instances, sorted)) return false
    this.#advance(sorted, undefined)
    return true
  }

  /**
   * Offers a change the source knows exactly: `removed` are objects of the current membership, `added`
   * new ones. It costs a binary search per instance and one copy of the list, where publish() compares
   * every instance, and the membership carries the change for its consumers to do the same. A large
   * change, or one that does not fit the current membership, publishes `whole()` instead: the full set.
   */
  protected publishChange (added: readonly Instance[], removed: readonly Instance[], whole: () => Iterable<Instance>): boolean {
    const previous = this.#membership?.instances
    if (previous === undefined || added.length + removed.length > MAX_CHANGE) return this.publish(whole())
    if (added.length === 0 && removed.length === 0) return false
    const instances = previous.slice()
    for (const instance of removed) {
      const at = positionOf(instances, instance)
      if (at < 0) return this.publish(whole())
      instances.splice(at, 1)
    }
    for (const instance of added) instances.splice(insertionPoint(instances, instance), 0, instance)
    this.#advance(instances, Object.freeze({ added: Object.freeze([...added]), removed: Object.freeze([...removed]) }))
    return true
  }

  #advance (sorted: Instance[], change: MembershipChange | undefined): void {
    this.#membership = Object.freeze({
      service: this.service,
      instances: Object.freeze(sorted),
      revision: (this.#membership?.revision ?? 0) + 1,
      changedAtMs: Date.now(),
      ...(change === undefined ? {} : { change }),
    })
    this.emit({ type: 'membership', membership: this.#membership })
    this.#resolveFirst()
  }

  protected setStatus (status: SourceStatus, stale: boolean): void {
    if (status === this.#status && stale === this.#stale) return
    this.#status = status
    this.#stale = stale
    this.emit({ type: 'status', status, stale })
  }

  protected emit (event: SourceEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event)
      } catch (err) {
        // A broken listener must not stop discovery for the others, nor the process.
        process.emitWarning(err instanceof Error ? err : new Error(String(err)))
      }
    }
  }
}

/** The largest change publishChange() applies by binary search; past it, the whole set is compared. */
const MAX_CHANGE = 256
