// The queue of requests waiting for a free connection, when every instance they may use carries
// --max-connections-per-instance requests already (HAProxy's `maxconn` and `timeout queue`). A request
// waits here in arrival order and starts on the first connection that frees up; one that waits longer
// than the queue timeout is answered by its owner (503, or a retry's first failure).

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
  #scheduled = false
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
   * Room may have freed up (a request ended, an ejection ran out, the membership changed): serve the
   * queue on the next turn of the event loop. Never at once: room frees up inside undici's callbacks,
   * where starting another request on the same connections is not safe, and the instance that failed
   * a request is ejected only after the failure is handled.
   */
  serveSoon (): void {
    if (this.#scheduled || this.#waiters.size === 0) return
    this.#scheduled = true
    setImmediate(this.#serve)
  }

  /**
   * Starts waiters in arrival order. Once one that may use any instance finds no room, those like it
   * behind it would not either; restricted ones (retries) may still fit where it cannot (in panic, an
   * ejected instance), so they are still tried.
   */
  readonly #serve = (): void => {
    this.#scheduled = false
    let blocked = false
    for (const waiter of this.#waiters) {
      if (blocked && !waiter.restricted) continue
      try {
        waiter.start()
      } catch (err) {
        // Its deadline still answers it; it is not tried again.
        this.#waiters.delete(waiter)
        process.emitWarning(err instanceof Error ? err : new Error(String(err)))
        continue
      }
      if (waiter.queued && !waiter.restricted) blocked = true
    }
  }
}
