// The queue of requests waiting for a free connection, when every instance they may use carries
// --max-connections-per-instance requests already (HAProxy's `maxconn` and `timeout queue`). A request
// waits here in arrival order and starts on the first connection that frees up; one that waits longer
// than the queue timeout is answered 503 by its owner.

export interface Waiter {
  /** Tries to start: on success (or a final failure) the waiter leaves the queue itself. */
  start(): void
  /** Still in the queue. */
  readonly queued: boolean
  /** It may not use every instance (a retry, not sent again where it failed). */
  readonly restricted: boolean
}

export class WaitQueue {
  readonly #waiters = new Set<Waiter>()
  #serving = false
  #again = false
  /** Requests that waited out the queue timeout, for the metrics. */
  timeouts = 0

  get size (): number {
    return this.#waiters.size
  }

  add (waiter: Waiter): void {
    this.#waiters.add(waiter)
  }

  delete (waiter: Waiter): void {
    this.#waiters.delete(waiter)
  }

  /**
   * Room may have freed up (a request ended, the membership changed): start waiters in arrival order
   * until one finds none. One that only some instances may take does not hold up those behind it.
   */
  serve (): void {
    if (this.#waiters.size === 0) return
    // A waiter that starts can end at once (a closed pool fails it synchronously) and free room again:
    // that is served by this loop, not by a nested one.
    if (this.#serving) {
      this.#again = true
      return
    }
    this.#serving = true
    try {
      do {
        this.#again = false
        for (const waiter of this.#waiters) {
          waiter.start()
          if (waiter.queued && !waiter.restricted) break
        }
      } while (this.#again)
    } finally {
      this.#serving = false
    }
  }
}
