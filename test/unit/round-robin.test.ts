import t from 'tap'
import { RoundRobin, smoothSequence } from '../../src/balancer/round-robin.ts'

const m = (name: string, weight = 1) => ({ name, weight })

t.test('equal weights rotate strictly', async t => {
  const rr = new RoundRobin<ReturnType<typeof m>>()
  rr.reset([m('A'), m('B'), m('C')])
  const picks = Array.from({ length: 7 }, () => rr.next(() => true)!.name)
  t.same(picks, ['A', 'B', 'C', 'A', 'B', 'C', 'A'])
})

t.test('table: picks with rejected members', async t => {
  const table: Array<{ members: string[], reject: string[], expected: string[] }> = [
    { members: ['A', 'B', 'C'], reject: ['B'], expected: ['A', 'C', 'A', 'C'] },
    { members: ['A', 'B', 'C'], reject: ['A', 'B', 'C'], expected: ['-', '-'] },
    { members: [], reject: [], expected: ['-'] },
    { members: ['A'], reject: [], expected: ['A', 'A'] },
  ]
  for (const row of table) {
    const rr = new RoundRobin<ReturnType<typeof m>>()
    rr.reset(row.members.map(n => m(n)))
    const picks = row.expected.map(() => rr.next(x => !row.reject.includes(x.name))?.name ?? '-')
    t.same(picks, row.expected, JSON.stringify(row))
  }
})

t.test('a reset keeps the rotation going instead of restarting it', async t => {
  const rr = new RoundRobin<ReturnType<typeof m>>()
  const members = [m('A'), m('B'), m('C')]
  rr.reset(members)
  rr.next(() => true)
  rr.reset([...members, m('D')])
  t.equal(rr.next(() => true)!.name, 'B')
})

t.test('smooth weighted sequence spreads the heavy member', async t => {
  const seq = smoothSequence([m('A', 5), m('B', 1), m('C', 1)]).map(x => x.name).join('')
  t.equal(seq, 'AABACAA')
  const counts = (s: string) => [...s].reduce<Record<string, number>>((a, c) => ({ ...a, [c]: (a[c] ?? 0) + 1 }), {})
  t.same(counts(smoothSequence([m('A', 2), m('B', 4)]).map(x => x.name).join('')), { A: 1, B: 2 })
})

t.test('very large unequal fleets get every member its weight per cycle', async t => {
  const members = Array.from({ length: 5000 }, (_, i) => m(`i${i}`, 1 + (i % 3)))
  const seq = smoothSequence(members)
  const counts = new Map<string, number>()
  for (const x of seq) counts.set(x.name, (counts.get(x.name) ?? 0) + 1)
  t.equal(seq.length, members.reduce((a, x) => a + x.weight, 0))
  t.ok(members.every(x => counts.get(x.name) === x.weight))
})
