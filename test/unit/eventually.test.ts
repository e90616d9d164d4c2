import t from 'tap'
import { eventually } from '../helpers/eventually.ts'

t.test('returns the first truthy value', async (t) => {
  let calls = 0
  const value = await eventually(() => (++calls >= 3 ? { calls } : undefined), { intervalMs: 1 })
  t.same(value, { calls: 3 })
  t.equal(calls, 3)
})

t.test('retries while the condition throws or rejects', async (t) => {
  let calls = 0
  const value = await eventually(async () => {
    calls++
    if (calls === 1) throw new Error('sync-style throw')
    if (calls === 2) return await Promise.reject(new Error('rejection'))
    return 'ok'
  }, { intervalMs: 1 })
  t.equal(value, 'ok')
  t.equal(calls, 3)
})

t.test('times out with the last error and the message', async (t) => {
  const started = Date.now()
  const err = await eventually(() => {
    throw new Error('still broken')
  }, { timeoutMs: 100, intervalMs: 10, message: 'the widget is ready' }).then(
    () => undefined,
    (e: unknown) => e,
  )
  const elapsed = Date.now() - started
  t.ok(err instanceof Error)
  const message = (err as Error).message
  t.match(message, /the widget is ready/)
  t.match(message, /within 100 ms/)
  t.match(message, /still broken/)
  t.ok((err as Error).cause instanceof Error, 'cause is the last error')
  t.ok(elapsed >= 80 && elapsed < 1000, `gave up after about 100 ms (${elapsed} ms)`)
})

t.test('times out with the last falsy value', async (t) => {
  await t.rejects(eventually(() => 0, { timeoutMs: 50, intervalMs: 5 }), /condition not met within 50 ms.*last value: 0/)
})

t.test('a message given as a function is read at the timeout, with the state as it is then', async (t) => {
  let output = ''
  const grow = setInterval(() => { output += '.' }, 5)
  t.teardown(() => clearInterval(grow))
  const err = await eventually(() => false, { timeoutMs: 60, intervalMs: 5, message: () => `output so far: [${output}]` })
    .then(() => undefined, (e: Error) => e)
  t.match(err?.message, /output so far: \[\.+\]/, 'what was printed while it waited, not the empty start')
})

t.test('an attempt that never settles still times out', async (t) => {
  await t.rejects(
    eventually(() => new Promise<boolean>(() => {}), { timeoutMs: 80 }),
    /pending at the deadline/,
  )
})

t.test('default timeout is 10 s and interval 20 ms', async (t) => {
  const stamps: number[] = []
  await eventually(() => {
    stamps.push(Date.now())
    return stamps.length >= 4
  })
  const gaps = stamps.slice(1).map((s, i) => s - (stamps[i] ?? s))
  t.ok(gaps.every((g) => g >= 15 && g < 500), `gaps near 20 ms: ${gaps.join(',')}`)

  // The 10 s, without waiting them out: once the first attempt has run, the clock eventually reads is
  // moved 9.9 s on, so a 10 s deadline is 100 ms away.
  const realNow = performance.now.bind(performance)
  let skippedMs = 0
  performance.now = () => realNow() + skippedMs
  t.teardown(() => { Reflect.deleteProperty(performance, 'now') })
  const startedAt = realNow()
  let bound: NodeJS.Timeout | undefined
  const outcome = await Promise.race([
    eventually(() => { skippedMs = 9_900; return false }).then(() => 'met', (err: Error) => err.message),
    new Promise<string>((resolve) => { bound = setTimeout(resolve, 5_000, 'still waiting after 5 s') }),
  ]).finally(() => clearTimeout(bound))
  Reflect.deleteProperty(performance, 'now')
  const waitedMs = realNow() - startedAt
  t.match(outcome, /not met within 10000 ms/, 'gave up at the 10 s default')
  t.ok(waitedMs >= 50 && waitedMs < 2_000, `after the 100 ms left of it (${Math.round(waitedMs)} ms)`)
})
