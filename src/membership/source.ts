// The discovery interface every source implements, and the shared logic behind it: full-set emission,
// de-duplication, revisions, status and the stale flag.

import { sameInstances, sortInstances, type Instance, type InvalidReason } from './instance.ts'

/** The live set of one service at one moment. Immutable. */
export interface Membership {
  readonly service: string
  /** Sorted by id. */
  readonly instances: readonly Instance[]
  /** Increases by one with every emitted change. */
  readonly revision: number
  /** Epoch ms of the change. */
  readonly changedAtMs: number
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
 * A discovery backend. Emits the FULL live set of one service, never a delta, and only when it changed.
 * Trouble with the registry never empties the set: the last membership is kept and marked stale.
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
    this.#membership = Object.freeze({
      service: this.service,
      instances: Object.freeze(sorted),
      revision: (this.#membership?.revision ?? 0) + 1,
      changedAtMs: Date.now(),
    })
    this.emit({ type: 'membership', membership: this.#membership })
    this.#resolveFirst()
    return true
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
