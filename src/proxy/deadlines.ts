// The queue, headers and idle timeouts of requests in flight. Each request holds its deadline as a
// plain number; one periodic sweep ends those past theirs.
//
// undici's own per-request timeouts (headersTimeout, bodyTimeout) make two timer objects per request,
// and each lives until undici's next half-second tick. At tens of thousands of requests a second that
// is enough promoted garbage for a full garbage collection every second or two, and those pauses set the
// proxy's p99. Here nothing is allocated per request: the requests are linked through fields of their own.

/** Something with a deadline. The link fields belong to the Deadlines watching it; leave them alone. */
export interface Timed {
  /** In performance.now() milliseconds. Infinity: watched, but not timed for now. */
  deadline: number
  previousTimed: Timed | undefined
  nextTimed: Timed | undefined
  watched: boolean
  /** Called once when the deadline passes; the item is no longer watched by then. */
  onDeadline(): void
}

export class Deadlines {
  #first: Timed | undefined
  #size = 0
  readonly #now: () => number
  readonly #timer: NodeJS.Timeout

  /** `resolutionMs`: how late a deadline may be noticed; `now`: the clock (tests give their own). */
  constructor (resolutionMs: number, now: () => number = () => performance.now()) {
    this.#now = now
    this.#timer = setInterval(() => this.sweep(), resolutionMs)
    this.#timer.unref()
  }

  /** Items watched. */
  get size (): number {
    return this.#size
  }

  /**
   * The sweep period for timeouts of these lengths: a twentieth of the shortest (a deadline is noticed at
   * most 5 % late), from 10 ms to 250 ms. A sweep walks the requests in flight: thousands in well under
   * a millisecond.
   */
  static resolutionFor (...timeoutsMs: number[]): number {
    return Math.min(250, Math.max(10, Math.floor(Math.min(...timeoutsMs) / 20)))
  }

  /** Watches `item` with a deadline `ms` from now (Infinity: no deadline until the next call). */
  watch (item: Timed, ms: number): void {
    item.deadline = ms === Infinity ? Infinity : this.#now() + ms
    if (item.watched) return
    item.watched = true
    this.#size++
    item.previousTimed = undefined
    item.nextTimed = this.#first
    if (this.#first) this.#first.previousTimed = item
    this.#first = item
  }

  /** Moves the deadline of an item still watched (`ms` from now, or Infinity); one no longer watched is left alone. */
  refresh (item: Timed, ms: number): void {
    if (item.watched) item.deadline = ms === Infinity ? Infinity : this.#now() + ms
  }

  unwatch (item: Timed): void {
    if (!item.watched) return
    item.watched = false
    this.#size--
    if (item.previousTimed) item.previousTimed.nextTimed = item.nextTimed
    else this.#first = item.nextTimed
    if (item.nextTimed) item.nextTimed.previousTimed = item.previousTimed
    item.previousTimed = undefined
    item.nextTimed = undefined
  }

  close (): void {
    clearInterval(this.#timer)
  }

  /** Ends every item past its deadline; the timer calls this. */
  sweep (): void {
    const now = this.#now()
    let expired: Timed[] | undefined
    for (let item = this.#first; item !== undefined; item = item.nextTimed) {
      if (item.deadline <= now) (expired ??= []).push(item)
    }
    if (expired === undefined) return
    for (const item of expired) {
      // Ending one may have ended or re-timed another of these meanwhile.
      if (!item.watched || item.deadline > now) continue
      this.unwatch(item)
      try {
        item.onDeadline()
      } catch (err) {
        process.emitWarning(err instanceof Error ? err : new Error(String(err)))
      }
    }
  }
}
