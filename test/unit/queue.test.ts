import t from 'tap'
import { WaitQueue, type Waiter } from '../../src/proxy/queue.ts'

/** A waiter that starts when `room.n > 0` (taking one), optionally only `restricted` ones. */
function waiter (queue: WaitQueue, name: string, room: { n: number }, log: string[], restricted = false): Waiter {
  const w = {
    queued: true,
    restricted,
    start () {
      if (room.n === 0 || (restricted && room.n < 10)) return
      room.n--
      w.queued = false
      queue.delete(w)
      log.push(name)
    },
  }
  queue.add(w)
  return w
}

t.test('waiters start in arrival order, as many as there is room for', async t => {
  const queue = new WaitQueue()
  const room = { n: 0 }
  const log: string[] = []
  for (const name of ['a', 'b', 'c']) waiter(queue, name, room, log)
  queue.serve()
  t.same(log, [], 'no room, nobody starts')
  room.n = 2
  queue.serve()
  t.same(log, ['a', 'b'])
  t.equal(queue.size, 1)
  room.n = 1
  queue.serve()
  t.same(log, ['a', 'b', 'c'])
  t.equal(queue.size, 0)
})

t.test('a waiter that may not use the free room does not hold up those behind it', async t => {
  const queue = new WaitQueue()
  const room = { n: 1 }
  const log: string[] = []
  waiter(queue, 'retry', room, log, true)
  waiter(queue, 'plain', room, log)
  queue.serve()
  t.same(log, ['plain'])
  t.equal(queue.size, 1, 'the restricted one still waits')
})

t.test('room freed while serving is served by the same pass, not a nested one', async t => {
  const queue = new WaitQueue()
  const log: string[] = []
  let depth = 0
  let deepest = 0
  const make = (name: string, freesRoom: boolean): Waiter => {
    const w: Waiter & { queued: boolean } = {
      queued: true,
      restricted: false,
      start () {
        depth++
        deepest = Math.max(deepest, depth)
        w.queued = false
        queue.delete(w)
        log.push(name)
        // Fails at once and frees its room: the queue is served again from inside.
        if (freesRoom) queue.serve()
        depth--
      },
    }
    queue.add(w)
    return w
  }
  make('a', true)
  make('b', true)
  make('c', false)
  queue.serve()
  t.same(log, ['a', 'b', 'c'])
  t.equal(deepest, 1, 'never nested')
})
