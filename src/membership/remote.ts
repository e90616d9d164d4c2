// RemoteSource: a source fed by another process's source (the proxy's primary, which holds the one
// ZooKeeper session per machine). It republishes what it is sent, so it keeps the same contract.
//
// The primary sends the whole set once, when a worker says hello, and after that only what changed: a
// change to one instance of 10,000 crosses the process boundary as one instance, not as a megabyte of
// JSON that every worker parses and compares again.

import { positionOf, sameInstances, type Instance } from './instance.ts'
import { BaseSource, type MembershipChange, type SourceStatus } from './source.ts'

/** What the owner of the real source sends on every change of membership or status. */
export interface SourceUpdate {
  readonly kind: string
  readonly status: SourceStatus
  readonly stale: boolean
  /** Numbers the primary's membership lists; absent until the real source knows its first membership. */
  readonly seq?: number
  /** The whole list. */
  readonly instances?: readonly Instance[]
  /** Or what changed since list `delta.from`. */
  readonly delta?: InstancesDelta
}

/** How list `from` becomes the next one: positions in the old list that go, and new instances by their position in the new list. */
export interface InstancesDelta {
  readonly from: number
  /** Ascending positions in the old list. */
  readonly removed: readonly number[]
  /** Ascending positions in the new list. */
  readonly added: ReadonlyArray<readonly [position: number, instance: Instance]>
}

/**
 * The delta from `previous` to `next` by object identity: an instance both lists share is the very same
 * object (sources keep unchanged instances). Undefined when the shared instances are not in the same
 * order in both, which a delta of positions cannot express; the whole list is sent then.
 */
export function diffInstances (previous: readonly Instance[], next: readonly Instance[], from: number): InstancesDelta | undefined {
  const inNext = new Set(next)
  const inPrevious = new Set(previous)
  const removed: number[] = []
  for (let i = 0; i < previous.length; i++) if (!inNext.has(previous[i]!)) removed.push(i)
  const added: Array<readonly [number, Instance]> = []
  let p = 0
  let r = 0
  for (let j = 0; j < next.length; j++) {
    const instance = next[j]!
    if (!inPrevious.has(instance)) {
      added.push([j, instance])
      continue
    }
    while (r < removed.length && removed[r] === p) { p++; r++ }
    if (previous[p++] !== instance) return undefined
  }
  return { from, removed, added }
}

/**
 * The same delta, read off a change the source reported (see Membership.change) between two lists sorted
 * by id, as memberships are: a binary search per changed instance, with no pass over the lists. Undefined
 * if the change does not fit the two lists.
 */
export function deltaFromChange (previous: readonly Instance[], next: readonly Instance[], change: MembershipChange, from: number): InstancesDelta | undefined {
  const removed: number[] = []
  for (const instance of change.removed) {
    const at = positionOf(previous, instance)
    if (at < 0) return undefined
    removed.push(at)
  }
  const added: Array<readonly [number, Instance]> = []
  for (const instance of change.added) {
    const at = positionOf(next, instance)
    if (at < 0) return undefined
    added.push([at, instance])
  }
  if (previous.length - removed.length + added.length !== next.length) return undefined
  removed.sort((a, b) => a - b)
  added.sort((a, b) => a[0] - b[0])
  return { from, removed, added }
}

/** Applies a delta made by diffInstances or deltaFromChange to the list it was made from. */
export function patchInstances (previous: readonly Instance[], delta: InstancesDelta): Instance[] {
  const next: Instance[] = new Array(previous.length - delta.removed.length + delta.added.length)
  let p = 0
  let r = 0
  let a = 0
  for (let j = 0; j < next.length; j++) {
    const add = delta.added[a]
    if (add !== undefined && add[0] === j) {
      next[j] = add[1]
      a++
      continue
    }
    while (r < delta.removed.length && delta.removed[r] === p) { p++; r++ }
    next[j] = previous[p++]!
  }
  return next
}

export class RemoteSource extends BaseSource {
  kind: string
  /** The primary's list as sent, in its order, and its number: what the next delta applies to. */
  #list: readonly Instance[] | undefined
  #seq = -1
  /** Until a whole list arrives (the answer to the hello every worker sends at start), deltas are dropped. */
  #awaitingWhole = true

  constructor (service: string, kind: string) {
    super(service)
    this.kind = kind
  }

  async start (): Promise<void> {
    return this.firstMembership()
  }

  async close (): Promise<void> {
    this.releaseStart()
  }

  /**
   * Applies what the primary sent. Returns true when the primary should be asked for the whole list: a
   * delta did not follow the list held here, and no whole list is on its way yet.
   */
  apply (update: SourceUpdate): boolean {
    this.kind = update.kind
    let askForWhole = false
    if (update.instances !== undefined && update.seq !== undefined) {
      this.#awaitingWhole = false
      this.#seq = update.seq
      this.publish(update.instances)
      // The set keeps its own objects for instances sent again unchanged. Where it lines up with the
      // list, the list takes them, so that the deltas that follow name the set's objects.
      const held = this.current()?.instances
      this.#list = held !== undefined && sameInstances(held, update.instances) ? held : update.instances
    } else if (update.delta !== undefined && update.seq !== undefined) {
      if (this.#list !== undefined && update.delta.from === this.#seq) {
        const list = this.#list
        const removed = update.delta.removed.map(position => list[position]!)
        const added = update.delta.added.map(([, instance]) => instance)
        const next = patchInstances(list, update.delta)
        this.#list = next
        this.#seq = update.seq
        this.publishChange(added, removed, () => next)
      } else if (!this.#awaitingWhole) {
        this.#awaitingWhole = true
        askForWhole = true
      }
    }
    this.setStatus(update.status, update.stale)
    return askForWhole
  }
}
