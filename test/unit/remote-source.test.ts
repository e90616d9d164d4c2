import t from 'tap'
import { insertionPoint, type Instance } from '../../src/membership/instance.ts'
import { deltaFromChange, diffInstances, patchInstances, RemoteSource, type InstancesDelta } from '../../src/membership/remote.ts'
import { seededRandom } from '../helpers/random.ts'

const make = (id: string, port = 80): Instance => Object.freeze({ id, host: '10.0.0.1', port, state: 'up', weight: 1, labels: Object.freeze({}) })
const ids = (list: readonly Instance[]): string => list.map(i => `${i.id}:${i.port}`).join(',')

t.test('a delta carries only what changed, and patching the old list gives the new one', async t => {
  const random = seededRandom(11)
  const counts = [0, 0, 0, 0, 0]
  let list = Array.from({ length: 60 }, (_, i) => make(`i-${String(i).padStart(3, '0')}`))
  let worker: readonly Instance[] = list
  for (let round = 0; round < 500; round++) {
    const next = list.slice()
    let changed = 0
    for (let k = 0, ops = 1 + random(4); k < ops; k++) {
      const op = next.length === 0 ? 0 : random(5)
      counts[op]!++
      if (op === 0) { const added = make(`new-${round}-${k}`); next.splice(insertionPoint(next, added), 0, added); changed++ }
      else if (op === 1) { next.splice(random(next.length), 1); changed++ }
      else if (op === 2) { const i = random(next.length); next[i] = make(next[i]!.id, 81 + k); changed += 2 }
      else if (op === 3) { const n = Math.min(next.length, 1 + random(3)); next.splice(random(next.length - n + 1), n); changed += n }
      else { next.splice(random(2) === 0 ? 0 : next.length - 1, 1); changed++ }
    }
    if (next.length < 10) for (let i = 0; i < 20; i++, changed++) { const added = make(`refill-${round}-${i}`); next.splice(insertionPoint(next, added), 0, added) }
    const delta = diffInstances(list, next, round)
    if (delta === undefined) return t.fail(`round ${round}: no delta for a change that keeps the order`)
    if (delta.removed.length + delta.added.length > changed) return t.fail(`round ${round}: a delta larger than the change`)
    // What the primary sends when the source reported the change: the same delta, found without the diff
    // (the lists are sorted by id, as memberships are).
    const inNext = new Set(next)
    const inList = new Set(list)
    const change = { added: next.filter(i => !inList.has(i)), removed: list.filter(i => !inNext.has(i)) }
    const reported = deltaFromChange(list, next, change, round)
    if (JSON.stringify(reported) !== JSON.stringify(delta)) return t.same(reported, delta, `round ${round}: the delta from the change`)
    // Across the process boundary, as IPC carries it.
    const sent = JSON.parse(JSON.stringify(delta)) as InstancesDelta
    worker = patchInstances(worker, sent)
    if (ids(worker) !== ids(next)) return t.same(ids(worker), ids(next), `round ${round}`)
    list = next
  }
  t.ok(counts.every(c => c > 100), `every operation was tried many times: ${counts.join(', ')}`)
})

t.test('a reordering cannot be a delta of positions', async t => {
  const [a, b, c] = [make('a'), make('b'), make('c')]
  t.equal(diffInstances([a, b, c], [b, a, c], 0), undefined)
  t.same(diffInstances([a, b, c], [a, c], 4), { from: 4, removed: [1], added: [] })
  t.same(diffInstances([a, b, c], [], 4), { from: 4, removed: [0, 1, 2], added: [] })
})

t.test('a RemoteSource drops deltas it cannot apply, and asks for the whole list once', async t => {
  const source = new RemoteSource('superset', 'remote')
  const seen: string[] = []
  source.subscribe(m => seen.push(ids(m.instances)))
  const [a, b, c] = [make('a'), make('b'), make('c')]
  const update = { kind: 'zookeeper', status: 'connected' as const, stale: false }
  t.equal(source.apply({ ...update, seq: 2, delta: { from: 1, removed: [], added: [[0, a]] } }), false, 'before the first whole list: it is on its way')
  t.equal(source.current(), undefined)
  t.equal(source.apply({ ...update }), false, 'status only')
  t.equal(source.state().status, 'connected')
  t.equal(source.apply({ ...update, seq: 2, instances: [a, b] }), false)
  t.equal(source.apply({ ...update, seq: 3, delta: { from: 2, removed: [0], added: [[1, c]] } }), false, 'a delta that follows')
  t.equal(source.apply({ ...update, seq: 5, delta: { from: 4, removed: [0], added: [] } }), true, 'list 4 was never seen: ask')
  t.equal(source.apply({ ...update, seq: 6, delta: { from: 5, removed: [0], added: [] } }), false, 'asked already')
  t.same(seen, ['a:80,b:80', 'b:80,c:80'], 'nothing applied from deltas that do not follow')
  t.equal(source.apply({ ...update, seq: 6, instances: [c] }), false)
  t.equal(source.apply({ ...update, seq: 8, delta: { from: 7, removed: [0], added: [] } }), true, 'after a whole list, a gap asks again')
  t.same(seen, ['a:80,b:80', 'b:80,c:80', 'c:80'])
  t.equal(source.state().kind, 'zookeeper')
})

t.test('deltaFromChange refuses a change that does not fit the lists', async t => {
  const [a, b, c] = [make('a'), make('b'), make('c')]
  t.same(deltaFromChange([a, b], [a, c], { added: [c], removed: [b] }, 3), { from: 3, removed: [1], added: [[1, c]] })
  t.equal(deltaFromChange([a, b], [a, c], { added: [c], removed: [c] }, 3), undefined, 'removes what the old list lacks')
  t.equal(deltaFromChange([a, b], [a, b, c], { added: [], removed: [] }, 3), undefined, 'leaves out an added one')
})

t.test('a RemoteSource passes on the change a delta carries; after another whole list, the set stays right', async t => {
  const source = new RemoteSource('superset', 'remote')
  const seen: Array<{ ids: string, change: string }> = []
  source.subscribe(m => seen.push({
    ids: ids(m.instances),
    change: m.change ? `+${ids(m.change.added)} -${ids(m.change.removed)}` : 'none',
  }))
  const update = { kind: 'zookeeper', status: 'connected' as const, stale: false }
  // As IPC delivers them: every message brings its own objects.
  const sent = (instances: Instance[]): Instance[] => JSON.parse(JSON.stringify(instances)) as Instance[]
  source.apply({ ...update, seq: 1, instances: sent([make('a'), make('b')]) })
  source.apply({ ...update, seq: 2, delta: { from: 1, removed: [0], added: [[1, sent([make('c')])[0]!]] } })
  t.same(seen.at(-1), { ids: 'b:80,c:80', change: '+c:80 -a:80' })
  source.apply({ ...update, seq: 3, instances: sent([make('b'), make('c'), make('d')]) })
  t.same(seen.at(-1), { ids: 'b:80,c:80,d:80', change: 'none' }, 'a whole list is compared with the set')
  // The set kept its own b and c (equal to the ones sent again); the list the deltas apply to takes them.
  source.apply({ ...update, seq: 4, delta: { from: 3, removed: [1], added: [] } })
  t.same(seen.at(-1), { ids: 'b:80,d:80', change: '+ -c:80' }, 'the delta still names the set\'s own c')
  t.equal(seen.length, 4)
})
