// The Registrar interface: how the agent holds one instance's registration in a registry. ZooKeeper
// implements it today (zookeeper-registrar.ts); a Consul registrar implements the same contract.

import type { InstanceState } from '../membership/instance.ts'

/** What the agent wants the registry to say about its instance. */
export type Desired =
  /** Nothing asked yet: a registration left by an earlier run is neither kept nor removed. */
  | { readonly kind: 'unset' }
  | { readonly kind: 'registered', readonly state: InstanceState }
  | { readonly kind: 'absent' }

/** What a registrar reports as it goes (the agent turns these into metrics). */
export type RegistrarEvent =
  | { readonly type: 'connected', readonly newSession: boolean }
  | { readonly type: 'disconnected' }
  /** The session (and with it the registration) is gone for good; a new one is being built. */
  | { readonly type: 'expired', readonly reason: string }
  /** The registry now holds the registration in this state (after a create or a data change). */
  | { readonly type: 'registered', readonly state: InstanceState, readonly created: boolean }
  | { readonly type: 'deregistered' }

export interface RegistrarStatus {
  readonly registry: string
  /** `<basePath>/<service>/<id>` for ZooKeeper; the service ID for Consul. */
  readonly key: string
  readonly connected: boolean
  /** The registry session holding the registration (ZooKeeper: the session id in hex), when connected. */
  readonly session: string | undefined
  readonly desired: Desired
  /** True once the registry is known to hold the desired registration (and state). */
  readonly registered: boolean
  /** The registration's state as last written, when registered. */
  readonly state: InstanceState | undefined
  readonly lastError: string | undefined
}

/**
 * Holds one instance's registration. Each call sets what the registry should say, and the registrar keeps
 * it so through lost connections, expired sessions and deletions by others until told otherwise. The
 * returned promise resolves once the registry says it, or when a later call or close() supersedes it;
 * it never rejects, so a registry outage never blocks the caller for longer than it chooses to wait.
 */
export interface Registrar {
  /** Starts connecting. Nothing is written until register() or deregister(). */
  start(): void
  register(state: InstanceState): Promise<void>
  /** Changes the state of a registration (up or draining); registers if it was not. */
  setState(state: InstanceState): Promise<void>
  deregister(): Promise<void>
  /** Gives up the connection; the registration, if any, goes with it (ZooKeeper: the session closes). */
  close(): Promise<void>
  status(): RegistrarStatus
}

/**
 * What a registrar was last asked for, and the callers waiting for the registry to hold it. A newer wish
 * releases the older waiters: they asked for something that no longer applies.
 */
export class DesiredRegistration {
  #desired: Desired = { kind: 'unset' }
  #version = 0
  #waiters: Array<() => void> = []

  get current (): Desired {
    return this.#desired
  }

  /** Increases with every wish; a converge pass reads it first and reports it with reached(). */
  get version (): number {
    return this.#version
  }

  /** Records a wish; resolves once the registry holds it, a newer wish replaces it, or releaseAll(). */
  want (desired: Desired): Promise<void> {
    this.#desired = desired
    this.#version++
    this.releaseAll()
    return new Promise<void>(resolve => this.#waiters.push(resolve))
  }

  /** The registry holds the wish of `version`: its waiters go, unless a newer wish came meanwhile. */
  reached (version: number): void {
    if (version === this.#version) this.releaseAll()
  }

  releaseAll (): void {
    const waiters = this.#waiters
    this.#waiters = []
    for (const resolve of waiters) resolve()
  }
}
