// A wall clock that a test can step, as NTP or an operator setting the date does: after step(ms),
// Date.now() is off by `ms` for the rest of the test, even through a reference to Date.now taken
// after the clock was installed and before the step, while the monotonic clock (performance.now(), timers) runs on. `new Date()` does not call
// Date.now and is not stepped; fleetgate takes no duration from it.

import type { Test } from 'tap'

export interface WallClock {
  step(ms: number): void
}

/** Install before building what is tested, so that it cannot hold the unstepped Date.now. */
export function steppableWallClock (t: Test): WallClock {
  const realNow = Date.now
  let offsetMs = 0
  const steppable = (): number => realNow() + offsetMs
  Date.now = steppable
  t.teardown(() => {
    if (Date.now === steppable) Date.now = realNow
  })
  return {
    step (ms) {
      offsetMs += ms
      t.comment(`wall clock stepped by ${ms} ms`)
    },
  }
}
