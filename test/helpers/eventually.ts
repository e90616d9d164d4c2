// Poll a condition until it holds. Used everywhere a test waits for something asynchronous
// (a pool converging, a session expiring) instead of sleeping for a guessed time.

export interface EventuallyOptions {
  /** Give up after this long. Default 10 000 ms. */
  timeoutMs?: number
  /** Pause between attempts. Default 20 ms. */
  intervalMs?: number
  /**
   * Says what was awaited; goes into the timeout error. A function is called only then, so it can show
   * state as it was at the timeout (a process's output so far), not as it was when the wait began.
   */
  message?: string | (() => string)
}

/**
 * Calls `condition` until it returns a truthy value without throwing, and resolves with that value.
 * A falsy result or a thrown error / rejected promise counts as "not yet". On timeout it rejects with an
 * Error naming `message`, the number of attempts, and the last error thrown (also set as `cause`)
 * or the last falsy value returned. An attempt that has not settled by the deadline counts as a timeout.
 */
export async function eventually<T>(
  condition: () => T | Promise<T>,
  opts: EventuallyOptions = {},
): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 10_000
  const intervalMs = opts.intervalMs ?? 20
  const deadline = performance.now() + timeoutMs
  let attempts = 0
  let lastError: unknown
  let threw = false
  let lastValue: unknown

  for (;;) {
    attempts++
    try {
      const value = await withDeadline(condition, deadline)
      if (value) return value
      threw = false
      lastValue = value
    } catch (err) {
      threw = true
      lastError = err
    }
    if (performance.now() + intervalMs > deadline) break
    await new Promise<void>((resolve) => setTimeout(resolve, intervalMs))
  }

  const what = typeof opts.message === 'function' ? opts.message() : (opts.message ?? 'condition')
  const last = threw
    ? `last error: ${lastError instanceof Error ? (lastError.stack ?? lastError.message) : String(lastError)}`
    : `last value: ${describe(lastValue)}`
  const error = new Error(`eventually: ${what} not met within ${timeoutMs} ms (${attempts} attempts); ${last}`)
  if (threw) error.cause = lastError
  throw error
}

const PENDING = Symbol('pending')

async function withDeadline<T>(condition: () => T | Promise<T>, deadline: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<typeof PENDING>((resolve) => {
    timer = setTimeout(() => resolve(PENDING), Math.max(0, deadline - performance.now()))
  })
  try {
    // Promise.resolve().then() turns a synchronous throw into a rejection.
    const result = await Promise.race([Promise.resolve().then(condition), late])
    if (result === PENDING) throw new Error('attempt still pending at the deadline')
    return result
  } finally {
    clearTimeout(timer)
  }
}

function describe(value: unknown): string {
  try {
    return value === undefined ? 'undefined' : JSON.stringify(value)
  } catch {
    return String(value)
  }
}
