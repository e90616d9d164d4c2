// The picker: (weighted) round robin in O(1) per pick. Equal weights give strict rotation; unequal
// weights are spread with the smooth weighted sequence NGINX uses, so a heavy instance gets no bursts.

export interface Weighted {
  readonly weight: number
}

/** Chooses the next member that `accept` takes, rotating through the members given to `reset`. */
export class RoundRobin<T extends Weighted> {
  #sequence: T[] = []
  #cursor = 0

  /** Replaces the members. The rotation goes on from the same position, so a change causes no burst. */
  reset (members: readonly T[]): void {
    this.#sequence = smoothSequence(members)
    if (this.#cursor >= this.#sequence.length) this.#cursor = 0
  }

  get size (): number {
    return this.#sequence.length
  }

  /** Whether any member is acceptable; the rotation does not move. */
  some (accept: (member: T) => boolean): boolean {
    return this.#sequence.some(accept)
  }

  /** The next acceptable member, or undefined when none is acceptable. */
  next (accept: (member: T) => boolean): T | undefined {
    const sequence = this.#sequence
    const length = sequence.length
    for (let tried = 0; tried < length; tried++) {
      const member = sequence[this.#cursor]!
      this.#cursor = this.#cursor + 1 === length ? 0 : this.#cursor + 1
      if (accept(member)) return member
    }
    return undefined
  }
}

/** Longest sequence built for unequal weights; weights are scaled down to fit. */
const MAX_SEQUENCE = 10_000

/** One full cycle of smooth weighted round robin; with equal weights, the members themselves. */
export function smoothSequence<T extends Weighted> (members: readonly T[]): T[] {
  if (members.length === 0) return []
  const first = members[0]!.weight
  if (members.every(m => m.weight === first)) return [...members]

  const divisor = members.reduce((g, m) => gcd(g, m.weight), 0)
  let weights = members.map(m => m.weight / divisor)
  let total = weights.reduce((a, b) => a + b, 0)
  if (total > MAX_SEQUENCE) {
    const scale = MAX_SEQUENCE / total
    weights = weights.map(w => Math.max(1, Math.round(w * scale)))
    total = weights.reduce((a, b) => a + b, 0)
  }
  // Smooth WRR costs members x total; for very large fleets, interleave in passes instead (still O(total)).
  if (members.length * total > 1_000_000) return interleaved(members, weights)
  const current = new Array<number>(members.length).fill(0)
  const out: T[] = []
  for (let n = 0; n < total; n++) {
    let best = 0
    for (let i = 0; i < members.length; i++) {
      current[i]! += weights[i]!
      if (current[i]! > current[best]!) best = i
    }
    current[best]! -= total
    out.push(members[best]!)
  }
  return out
}

function interleaved<T> (members: readonly T[], weights: number[]): T[] {
  const out: T[] = []
  const maxWeight = Math.max(...weights)
  for (let pass = 1; pass <= maxWeight; pass++) {
    for (let i = 0; i < members.length; i++) if (weights[i]! >= pass) out.push(members[i]!)
  }
  return out
}

function gcd (a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b)
}
