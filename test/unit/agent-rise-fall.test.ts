import t from 'tap'
import { RiseFall, type Health } from '../../src/agent/health-check.ts'

// Each case feeds probe results (1 pass, 0 fail) and lists the health after each one, marking the
// results that caused a transition with `!`.
const cases: Array<{ name: string, rise: number, fall: number, results: string, expected: string[] }> = [
  {
    name: 'starts unknown and needs `rise` passes in a row to be healthy',
    rise: 2, fall: 3, results: '011',
    expected: ['unknown', 'unknown', '!healthy'],
  },
  {
    name: 'needs `fall` failures in a row to become unhealthy from unknown',
    rise: 2, fall: 3, results: '000',
    expected: ['unknown', 'unknown', '!unhealthy'],
  },
  {
    name: 'a single failure between passes resets the rise count',
    rise: 3, fall: 3, results: '110111',
    expected: ['unknown', 'unknown', 'unknown', 'unknown', 'unknown', '!healthy'],
  },
  {
    name: 'healthy stays healthy through fewer than `fall` failures',
    rise: 1, fall: 3, results: '100100',
    expected: ['!healthy', 'healthy', 'healthy', 'healthy', 'healthy', 'healthy'],
  },
  {
    name: 'falls after `fall` failures in a row, rises after `rise` passes in a row',
    rise: 2, fall: 3, results: '11000110011',
    expected: ['unknown', '!healthy', 'healthy', 'healthy', '!unhealthy', 'unhealthy', '!healthy', 'healthy', 'healthy', 'healthy', 'healthy'],
  },
  {
    name: 'reports a transition once, not on every result past the threshold',
    rise: 1, fall: 1, results: '1110001',
    expected: ['!healthy', 'healthy', 'healthy', '!unhealthy', 'unhealthy', 'unhealthy', '!healthy'],
  },
]

for (const c of cases) {
  t.test(c.name, async t => {
    const riseFall = new RiseFall({ rise: c.rise, fall: c.fall })
    t.equal(riseFall.health, 'unknown')
    const seen = [...c.results].map(r => {
      const transition: Health | undefined = riseFall.record(r === '1')
      return transition ? `!${transition}` : riseFall.health
    })
    t.same(seen, c.expected)
  })
}

t.test('streak counts the current run', async t => {
  const riseFall = new RiseFall({ rise: 5, fall: 5 })
  riseFall.record(true)
  riseFall.record(true)
  t.same(riseFall.streak, { passes: 2, failures: 0 })
  riseFall.record(false)
  t.same(riseFall.streak, { passes: 0, failures: 1 })
})

t.test('thresholds below 1 are refused', async t => {
  t.throws(() => new RiseFall({ rise: 0, fall: 1 }), RangeError)
  t.throws(() => new RiseFall({ rise: 1, fall: 0 }), RangeError)
})
