import t from 'tap'
import type { Instance } from '../../src/membership/instance.ts'
import { diffInstances, patchInstances, RemoteSource } from '../../src/membership/remote.ts'

const make = (id: string, port = 80): Instance => Object.freeze({ id, host: '10.0.0.1', port, state: 'up', weight: 1, labels: Object.freeze({}) })
const ids = (list: readonly Instance[]): string => list.map(i => `${i.id}:${i.port}`).join(',')

t.test('a delta carries only what changed, and patching the old list gives the new one, object for object', async t => {
  let seed = 11
  const random = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  let list = Array.from({ length: 100 }, (_, i) => make(`i-${String(i).padStart(3, '0')}`))
  let worker: readonly Instance[] = list
  for (let round = 0; round < 200; round++) {
    const next = list.slice()
    const op = random(4)
    if (op === 0 || next.length === 0) next.splice(random(next.length + 1), 0, make(`new-${round}`))
    else if (op === 1) next.splice(random(next.length), 1)
    else if (op === 2) { const i = random(next.length); next[i] = make(next[i]!.id, 81) }
    else next.splice(random(next.length), 0, make(`a-${round}`), make(`b-${round}`))
    const delta = diffInstances(list, next, round)
    if (delta === undefined) return t.fail(`round ${round}: no delta for a change that keeps the order`)
    const changes = delta.removed.length + delta.added.length
    if (changes > 2) return t.fail(`round ${round}: ${changes} entries for operation ${op}`)
    worker = patchInstances(worker, delta)
    if (worker.length !== next.length || worker.some((instance, i) => instance !== next[i])) {
      return t.same(ids(worker), ids(next), `round ${round}, operation ${op}`)
    }
    list = next
  }
  t.pass('200 changes applied through deltas')
})

t.test('a reordering cannot be a delta of positions', async t => {
  const [a, b, c] = [make('a'), make('b'), make('c')]
  t.equal(diffInstances([a, b, c], [b, a, c], 0), undefined)
  t.same(diffInstances([a, b, c], [a, c], 4), { from: 4, removed: [1], added: [] })
})

t.test('a RemoteSource asks for the whole list when a delta does not follow what it holds', async t => {
  const source = new RemoteSource('superset', 'remote')
  const seen: string[] = []
  source.subscribe(m => seen.push(ids(m.instances)))
  const [a, b, c] = [make('a'), make('b'), make('c')]
  t.equal(source.apply({ kind: 'zookeeper', status: 'connected', stale: false, seq: 2, delta: { from: 1, removed: [], added: [[0, a]] } }), false, 'a delta before any list')
  t.equal(source.current(), undefined)
  t.equal(source.apply({ kind: 'zookeeper', status: 'connected', stale: false, seq: 2, instances: [a, b] }), true)
  t.equal(source.apply({ kind: 'zookeeper', status: 'connected', stale: false, seq: 3, delta: { from: 2, removed: [0], added: [[1, c]] } }), true)
  t.equal(source.apply({ kind: 'zookeeper', status: 'connected', stale: false, seq: 5, delta: { from: 4, removed: [0], added: [] } }), false, 'list 4 was never seen')
  t.same(seen, ['a:80,b:80', 'b:80,c:80'])
  t.equal(source.state().kind, 'zookeeper')
  t.equal(source.current()?.instances[0], b, 'unchanged instances are the objects first sent')
})
