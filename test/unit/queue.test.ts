import { setImmediate as nextTurn } from 'node:timers/promises'
import t from 'tap'
import { WaitQueue, type Waiter } from '../../src/proxy/queue.ts'

interface TestWaiter extends Waiter { queued: boolean, starts: number }

/** A waiter that starts when `room.n > 0` (taking one); a restricted one only when `room.n >= 10`. */
function waiter (queue: WaitQueue, name: string, room: { n: number }, log: string[], options: { restricted?: boolean, onStart?: () => void } = {}): TestWaiter {
  const w: TestWaiter = {
    queued: true,
    restricted: options.restricted ?? false,
    starts: 0,
    start () {
      w.starts++
      if (room.n === 0 || (w.restricted && room.n < 10)) return
      room.n--
      w.queued = false
      queue.delete(w)
      log.push(name)
      options.onStart?.()
    },
  }
  queue.add(w)
  return w
}

t.test('waiters start in arrival order, as many as there is room for, on the next turn', async t => {
  const queue = new WaitQueue()
  const room = { n: 0 }
  const log: string[] = []
  for (const name of ['a', 'b', 'c']) waiter(queue, name, room, log)
  queue.serveSoon()
  await nextTurn()
  t.same(log, [], 'no room, nobody starts')
  room.n = 2
  queue.serveSoon()
  t.same(log, [], 'not at once')
  await nextTurn()
  t.same(log, ['a', 'b'])
  t.equal(queue.size, 1)
  room.n = 1
  queue.serveSoon()
  await nextTurn()
  t.same(log, ['a', 'b', 'c'])
  t.equal(queue.size, 0)
})

t.test('behind a waiter that finds no room, only restricted ones (retries) are still tried', async t => {
  const queue = new WaitQueue()
  const room = { n: 0 }
  const log: string[] = []
  const blocked = waiter(queue, 'blocked', room, log)
  const plain = waiter(queue, 'plain', room, log)
  // A retry that may use what the plain ones may not (in panic, an ejected instance).
  const retry: TestWaiter = {
    queued: true, restricted: true, starts: 0,
    start () { retry.starts++; retry.queued = false; queue.delete(retry); log.push('retry') },
  }
  queue.add(retry)
  queue.serveSoon()
  await nextTurn()
  t.same(log, ['retry'])
  t.equal(blocked.starts, 1)
  t.equal(plain.starts, 0, 'not tried: it would find no room either')
})

t.test('a waiter that may not use the free room does not hold up those behind it', async t => {
  const queue = new WaitQueue()
  const room = { n: 1 }
  const log: string[] = []
  waiter(queue, 'retry', room, log, { restricted: true })
  waiter(queue, 'plain', room, log)
  queue.serveSoon()
  await nextTurn()
  t.same(log, ['plain'])
  t.equal(queue.size, 1, 'the restricted one still waits')
})

t.test('calls on one turn make one pass; room freed during a pass is served by the next', async t => {
  const queue = new WaitQueue()
  const room = { n: 1 }
  const log: string[] = []
  // a fails at once after starting and frees its room again, as a request refused by a dead instance.
  waiter(queue, 'a', room, log, { onStart: () => { room.n++; queue.serveSoon() } })
  const b = waiter(queue, 'b', room, log)
  const c = waiter(queue, 'c', room, log)
  queue.serveSoon()
  queue.serveSoon()
  await nextTurn()
  t.same(log, ['a', 'b'], 'the first pass: a, then b took the room a gave back')
  t.equal(b.starts, 1)
  t.equal(c.starts, 1, 'c found no room and ended the pass')
  room.n = 1
  await nextTurn()
  t.same(log, ['a', 'b', 'c'], 'the pass a asked for')
})

t.test('a waiter that throws is dropped; the others are served', async t => {
  const queue = new WaitQueue()
  const room = { n: 2 }
  const log: string[] = []
  const warnings: Error[] = []
  const onWarning = (w: Error) => warnings.push(w)
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  queue.add({ queued: true, restricted: false, start () { throw new Error('boom') } })
  waiter(queue, 'b', room, log)
  queue.serveSoon()
  await nextTurn()
  await nextTurn()
  t.same(log, ['b'])
  t.equal(queue.size, 0)
  t.match(warnings.map(w => w.message), ['boom'])
})
