import t from 'tap'
import { Deadlines, type Timed } from '../../src/proxy/deadlines.ts'
import { eventually } from '../helpers/eventually.ts'

function item (name: string, fired: string[]): Timed {
  return { deadline: Infinity, previousTimed: undefined, nextTimed: undefined, watched: false, onDeadline: () => { fired.push(name) } }
}

t.test('a deadline that passes ends its item once; unwatched, refreshed and untimed items are left alone', async t => {
  const deadlines = new Deadlines(10)
  t.teardown(() => deadlines.close())
  const fired: string[] = []
  const [a, b, c, d, e] = ['a', 'b', 'c', 'd', 'e'].map(name => item(name, fired))
  deadlines.watch(a!, 30)
  deadlines.watch(b!, 30)
  deadlines.watch(c!, 30)
  deadlines.watch(d!, Infinity)
  deadlines.watch(e!, 30)
  deadlines.unwatch(c!) // from the middle of the list
  const refresh = setInterval(() => deadlines.watch(b!, 30), 5)
  t.teardown(() => clearInterval(refresh))
  await eventually(() => fired.length === 2, { timeoutMs: 2_000 })
  t.same(fired.sort(), ['a', 'e'])
  t.notOk(a!.watched, 'no longer watched once ended')
  clearInterval(refresh)
  await eventually(() => fired.length === 3, { timeoutMs: 2_000 })
  t.same(fired.sort(), ['a', 'b', 'e'], 'b ends once it is no longer refreshed')
  t.ok(d!.watched && !fired.includes('d'), 'an untimed item stays watched')
  deadlines.unwatch(d!)
  deadlines.unwatch(d!)
  t.notOk(d!.watched, 'unwatching twice is harmless')
  deadlines.watch(c!, 0)
  await eventually(() => fired.includes('c'), { timeoutMs: 2_000 })
  t.equal(fired.filter(name => name === 'a').length, 1, 'each ended once')
})

t.test('an item ending may unwatch another that is due in the same sweep', async t => {
  const deadlines = new Deadlines(10)
  t.teardown(() => deadlines.close())
  const fired: string[] = []
  const second = item('second', fired)
  const first: Timed = { ...item('first', fired), onDeadline: () => { fired.push('first'); deadlines.watch(second, 60_000) } }
  deadlines.watch(second, 20)
  deadlines.watch(first, 20)
  await eventually(() => fired.includes('first'), { timeoutMs: 2_000 })
  t.ok(second.watched, 'second was watched again with a new deadline...')
  t.notOk(fired.includes('second'), '...so it did not end')
})

t.test('the sweep period follows the shortest timeout, from 10 ms to 1 s', async t => {
  t.equal(Deadlines.resolutionFor(120_000, 300_000), 1000)
  t.equal(Deadlines.resolutionFor(500, 300_000), 125)
  t.equal(Deadlines.resolutionFor(1), 10)
})
