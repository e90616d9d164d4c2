import t from 'tap'
import { DesiredRegistration } from '../../src/agent/registrar.ts'

t.test('a wish resolves when its version is reached, not an older one', async t => {
  const desired = new DesiredRegistration()
  let done = false
  const first = desired.want({ kind: 'registered', state: 'up' })
  const version = desired.version
  void first.then(() => { done = true })
  desired.reached(version - 1)
  await Promise.resolve()
  t.equal(done, false, 'an older version reached does not release it')
  desired.reached(version)
  await first
  t.same(desired.current, { kind: 'registered', state: 'up' })
})

t.test('a newer wish releases the older waiters and supersedes their version', async t => {
  const desired = new DesiredRegistration()
  const older = desired.want({ kind: 'registered', state: 'up' })
  const olderVersion = desired.version
  let newerDone = false
  const newer = desired.want({ kind: 'absent' })
  void newer.then(() => { newerDone = true })
  await older
  desired.reached(olderVersion)
  await Promise.resolve()
  t.equal(newerDone, false, 'reaching the superseded version does not release the newer wish')
  desired.releaseAll()
  await newer
  t.equal(desired.current.kind, 'absent')
})
