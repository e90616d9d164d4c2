// The back-off of a ZooKeeper pass that failed (a registration write, a membership sync): one retry
// pending at a time, after 250 ms, then twice as long each time it fails again, up to 10 s.

const BASE_MS = 250
const MAX_MS = 10_000

export class Retry {
  #failures = 0
  #timer: NodeJS.Timeout | undefined

  /** A retry is scheduled and has not run yet: periodic passes wait for it. */
  get pending (): boolean {
    return this.#timer !== undefined
  }

  /** Counts a failure and returns how long to wait before the next try. */
  failed (): number {
    return Math.min(MAX_MS, BASE_MS * 2 ** this.#failures++)
  }

  /** A pass worked: the next failure waits the shortest time again. */
  succeeded (): void {
    this.#failures = 0
  }

  schedule (delayMs: number, run: () => void): void {
    this.cancel()
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      run()
    }, delayMs)
    this.#timer.unref()
  }

  /** Another pass is starting now, or nothing is to run any more. */
  cancel (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
  }
}
