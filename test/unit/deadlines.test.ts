import t, { type Test } from 'tap'
import { Deadlines, type Timed } from '../../src/proxy/deadlines.ts'
import { eventually } from '../helpers/eventually.ts'

function item (name: string, fired: string[], onDeadline?: () => void): Timed {
  return {
    deadline: Infinity, previousTimed: undefined, nextTimed: undefined, watched: false,
    onDeadline: () => { fired.push(name); onDeadline?.() },
  }
}

/** Deadlines on a clock the test moves; the sweeps are the test's own calls. */
function manual (t: Test): { deadlines: Deadlines, advance(ms: number): void } {
  let clock = 1_000
  const deadlines = new Deadlines(3_600_000, () => clock)
  t.teardown(() => deadlines.close())
  return { deadlines, advance: ms => { clock += ms; deadlines.sweep() } }
}

t.test('a deadline that passes ends its item once; unwatched, refreshed and untimed items are left alone', async t => {
  const { deadlines, advance } = manual(t)
  const fired: string[] = []
  const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map(name => item(name, fired))
  deadlines.watch(a!, 30)
  deadlines.watch(b!, 30)
  deadlines.watch(c!, 30)
  deadlines.watch(d!, Infinity)
  deadlines.watch(e!, 40)
  t.equal(deadlines.size, 5)
  deadlines.unwatch(c!) // from the middle of the list
  advance(20)
  deadlines.refresh(b!, 30) // now due at 50
  deadlines.refresh(c!, 1) // no longer watched: left alone
  t.same(fired, [])
  advance(10)
  t.same(fired, ['a'], 'a at its deadline')
  t.notOk(a!.watched, 'no longer watched once ended')
  advance(10)
  t.same(fired, ['a', 'e'])
  advance(10)
  t.same(fired, ['a', 'e', 'b'], 'b at its refreshed deadline')
  advance(1_000_000)
  t.same(fired, ['a', 'e', 'b'], 'each ends once; c was unwatched; d is untimed')
  t.ok(d!.watched)
  t.equal(c!.deadline, 1_030, 'refresh did not touch the unwatched c')
  t.equal(deadlines.size, 1)
  deadlines.unwatch(d!)
  deadlines.unwatch(d!)
  t.equal(deadlines.size, 0, 'unwatching twice is harmless')
  deadlines.watch(c!, 0)
  advance(0)
  t.same(fired, ['a', 'e', 'b', 'c'], 'a watched item can be watched again after it was unwatched')
})

t.test('an item that ends may end or re-time others due in the same sweep', async t => {
  const { deadlines, advance } = manual(t)
  const fired: string[] = []
  const retimed = item('retimed', fired)
  const ended = item('ended', fired)
  const first = item('first', fired, () => {
    deadlines.watch(retimed, 60_000)
    deadlines.unwatch(ended)
  })
  deadlines.watch(retimed, 20)
  deadlines.watch(ended, 20)
  deadlines.watch(first, 20) // the list's head: swept first
  const throws = item('throws', fired, () => { throw new Error('broken item') })
  deadlines.watch(throws, 20)
  const warnings: Error[] = []
  const onWarning = (w: Error): void => { warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => process.off('warning', onWarning))
  advance(20)
  t.same(fired, ['throws', 'first'], 'a throwing item does not stop the sweep')
  t.ok(retimed.watched, 'one re-timed meanwhile keeps its new deadline')
  t.notOk(ended.watched)
  await new Promise(resolve => setImmediate(resolve))
  t.match(warnings.map(w => w.message), ['broken item'])
  t.equal(deadlines.size, 1)
})

t.test('the sweep period follows the shortest timeout, from 10 ms to 250 ms', async t => {
  t.equal(Deadlines.resolutionFor(120_000, 300_000), 250)
  t.equal(Deadlines.resolutionFor(120_000, 300_000, 5000), 250, 'the default queue timeout is noticed at most 5 % late')
  t.equal(Deadlines.resolutionFor(500, 300_000), 25)
  t.equal(Deadlines.resolutionFor(1), 10)
})

t.test('the timer sweeps by itself', async t => {
  const deadlines = new Deadlines(10)
  t.teardown(() => deadlines.close())
  const fired: string[] = []
  deadlines.watch(item('x', fired), 5)
  await eventually(() => fired.length === 1, { timeoutMs: 5_000 })
  t.same(fired, ['x'])
})
