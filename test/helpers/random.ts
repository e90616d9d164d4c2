/** A seeded xorshift32 generator: the same sequence every run. `random(n)` is an integer from 0 to n - 1. */
export function seededRandom (seed: number): (n: number) => number {
  let state = seed >>> 0 || 1
  return n => {
    state ^= state << 13
    state >>>= 0
    state ^= state >>> 17
    state ^= state << 5
    state >>>= 0
    return state % n
  }
}
