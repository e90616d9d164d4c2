// ConsulSource in process against the Consul double (or a real agent with CONSUL_HTTP_ADDR): what it
// sends (index, wait, no index after trouble), what it makes of answers, and how it rides out failures.

import { pino } from 'pino'
import t, { type Test } from 'tap'
import { ConsulClient, consulConnection } from '../../src/consul/client.ts'
import { silentLogger } from '../../src/logger.ts'
import { ConsulSource, type ConsulSourceOptions } from '../../src/membership/consul.ts'
import type { Membership, SourceEvent } from '../../src/membership/source.ts'
import { steppableWallClock } from '../helpers/clock.ts'
import { consulTarget, doubleOf, needsDouble, testCertificates, uniqueService, type ConsulTarget } from '../helpers/consul.ts'
import { startConsulDouble } from '../helpers/consul-double.ts'
import { eventually } from '../helpers/eventually.ts'

interface Followed {
  readonly source: ConsulSource
  readonly emissions: Membership[]
  readonly events: SourceEvent[]
  ids(): string
}

function follow (t: Test, target: { address: string, token?: string | undefined }, service: string, extra: Partial<ConsulSourceOptions> & { caFile?: string } = {}): Followed {
  const { caFile, ...rest } = extra
  const source = new ConsulSource({
    client: new ConsulClient(consulConnection({ consul: target.address, consulToken: target.token, consulCaFile: caFile })),
    service,
    waitMs: 60_000,
    logger: silentLogger,
    ...rest,
  })
  const emissions: Membership[] = []
  const events: SourceEvent[] = []
  source.subscribe(m => emissions.push(m))
  source.onEvent(e => events.push(e))
  void source.start()
  t.teardown(() => source.close())
  return {
    source, emissions, events,
    ids: () => (source.current()?.instances ?? []).map(i => `${i.id}:${i.state}`).join(','),
  }
}

async function registered (t: Test, target: ConsulTarget, def: Parameters<ConsulTarget['api']['register']>[0]): Promise<void> {
  await target.api.register(def)
  t.teardown(() => target.api.deregister(def.id))
}

t.test('follows adds, removes, a health flap, maintenance and Meta draining; the address falls back to the node', async t => {
  const target = await consulTarget(t)
  const name = uniqueService('follow')
  await registered(t, target, { name, id: 'a', port: 8081, weight: 4, meta: { zone: 'z1' }, tags: ['blue'] })
  const f = follow(t, target, name)
  await eventually(() => f.ids() === 'a:up', { message: 'first membership' })
  t.match(f.source.current()!.instances[0], { host: /./, port: 8081, weight: 4, labels: { zone: 'z1', tags: 'blue' } })
  t.match(f.source.state(), { kind: 'consul', status: 'connected', stale: false })

  await registered(t, target, { name, id: 'b', port: 8082, address: '127.0.0.1' })
  await eventually(() => f.ids() === 'a:up,b:up', { message: 'add' })
  t.equal(f.source.current()!.instances[1]!.host, '127.0.0.1')
  await target.api.check('service:b', 'fail')
  await eventually(() => f.ids() === 'a:up', { message: 'failing check: out' })
  await target.api.check('service:b', 'pass')
  await eventually(() => f.ids() === 'a:up,b:up', { message: 'passing again: back' })
  await target.api.maintenance('a', true)
  await eventually(() => f.ids() === 'a:draining,b:up', { message: 'maintenance drains' })
  await target.api.maintenance('a', false)
  await eventually(() => f.ids() === 'a:up,b:up', { message: 'maintenance over' })
  await target.api.register({ name, id: 'b', port: 8082, address: '127.0.0.1', meta: { fleetgate_state: 'draining' } })
  await eventually(() => f.ids() === 'a:up,b:draining', { message: 'Meta drains' })
  await target.api.deregister('b')
  await eventually(() => f.ids() === 'a:up', { message: 'remove' })

  for (let i = 1; i < f.emissions.length; i++) {
    t.not(JSON.stringify(f.emissions[i]!.instances), JSON.stringify(f.emissions[i - 1]!.instances), `emission ${i + 1} differs from the one before`)
  }
  t.equal(f.emissions.length, 8, 'one emission per change')
})

t.test('the first query has no index; then it blocks on the last X-Consul-Index with the wait; never index=0', { skip: needsDouble('its query log') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('index')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const f = follow(t, target, name, { waitMs: 400 })
  await eventually(() => double.healthQueries.filter(q => q.service === name).length >= 4, { message: 'a few wait expiries' })
  const queries = double.healthQueries.filter(q => q.service === name)
  t.equal(queries[0]!.index, undefined, 'first query: no index')
  for (const q of queries.slice(1)) {
    t.match(q.index, /^[1-9]\d*$/, 'an index, never 0')
    t.equal(q.wait, '400ms')
  }
  t.equal(f.emissions.length, 1, 'wait expiries with the same content emit nothing')
})

t.test('after any failed query the next one is non-blocking and without an index', { skip: needsDouble('fault hooks') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('after-fail')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const f = follow(t, target, name, { backoffBaseMs: 20, backoffMaxMs: 100 })
  await eventually(() => f.ids() === 'a:up')
  await eventually(() => double.held === 1, { message: 'blocking query held' })

  const before = double.healthQueries.length
  t.equal(double.dropHeldQueries(), 1, 'socket dropped mid long poll')
  await eventually(() => double.healthQueries.slice(before).some(q => q.status === 200), { message: 'an answered query after the drop' })
  const next = double.healthQueries.slice(before).find(q => q.status === 200)!
  t.equal(next.index, undefined, 'after a dropped socket: no index')

  const mark = double.healthQueries.length
  double.fault({ status: 500, body: 'No cluster leader', times: 2 })
  await eventually(() => double.healthQueries.slice(mark).some(q => q.status === 200), { message: 'answered after two 500s' })
  const after = double.healthQueries.slice(mark)
  t.same(after.map(q => q.status).slice(0, 3), [500, 500, 200])
  t.same(after.slice(1, 3).map(q => q.index), [undefined, undefined], 'each query after a 500 is non-blocking, without an index')
  t.equal(f.ids(), 'a:up', 'membership kept throughout')
  await eventually(() => f.source.state().stale === false)
})

t.test('an X-Consul-Index of 0 in an answer is read as 1', { skip: needsDouble('a canned answer') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('zero')
  const body = JSON.stringify([{ Node: { Node: 'n', Address: '127.0.0.1' }, Service: { ID: 'z', Service: name, Port: 8081, Address: '' }, Checks: [] }])
  double.fault({ status: 200, body, index: 0, times: 1 })
  const f = follow(t, target, name, { waitMs: 300 })
  await eventually(() => f.ids() === 'z:up', { message: 'the canned answer' })
  await eventually(() => double.healthQueries.filter(q => q.service === name).length >= 2)
  t.equal(double.healthQueries.filter(q => q.service === name)[1]!.index, '1', 'blocks on 1, not 0')
})

t.test('an X-Consul-Index that is not a whole number is read as 1 and said once; the answer is published', { skip: needsDouble('a canned answer') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('garbled')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const lines: string[] = []
  const logger = pino({ level: 'warn' }, { write: (line: string) => { lines.push(line) } })
  const f = follow(t, target, name, { waitMs: 60_000, minIntervalMs: 20, logger })
  await eventually(() => f.ids() === 'a:up', { message: 'first membership, with a real index' })
  const queries = () => double.healthQueries.filter(q => q.service === name)
  await eventually(() => f.source.queries >= 2, { message: 'the blocking query sent' })
  const body = JSON.stringify([{ Node: { Node: 'n', Address: '127.0.0.1' }, Service: { ID: 'g', Service: name, Port: 8082, Address: '' }, Checks: [] }])
  double.fault({ status: 200, body, index: '0x7fffffff', times: 3 })
  await registered(t, target, { name, id: 'b', port: 8083 })
  await eventually(() => f.ids() === 'a:up,b:up' && f.source.queries >= 6, { message: 'past the three garbled answers, followed again' })
  // The double's own answers after them list a and b: the canned instance was there in between.
  t.ok(f.emissions.some(m => m.instances.some(i => i.id === 'g')), 'the canned answer was published')
  const sent = queries().map(q => q.index)
  t.ok(sent.includes('1') && !sent.includes('2147483647'), `blocks on 1, not on 2147483647 (0x7fffffff): ${sent.join(' ')}`)
  t.equal(sent.filter(index => index === undefined).length, 1, 'no query but the first went without an index (a reset)')
  const warnings = lines.filter(line => line.includes('X-Consul-Index'))
  t.equal(warnings.length, 1, 'said once, not at every answer')
  t.match(JSON.parse(warnings[0] ?? '{}'), { index: '0x7fffffff', msg: /not a whole number/ })
  t.equal(f.source.indexResets, 0, 'an unreadable index is not taken for one that went backwards')
})

t.test('an index that goes backwards on a blocking answer (a restored snapshot) is reset, then followed', { skip: needsDouble('setIndex') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('backwards')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const f = follow(t, target, name, { waitMs: 500 })
  await eventually(() => f.ids() === 'a:up')
  await eventually(() => double.held === 1)
  double.setIndex(2)
  await eventually(() => f.source.indexResets === 1, { message: 'backwards index noticed after one wait', timeoutMs: 5000 })
  await target.api.register({ name, id: 'b', port: 8082 })
  await eventually(() => f.ids() === 'a:up,b:up', { message: 'a change after the reset is followed' })
  t.equal(f.source.state().stale, false)
})

t.test('an agent restarted with a lower index is followed at once, not after the wait', { skip: needsDouble('restart') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('restart')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const f = follow(t, target, name, { waitMs: 120_000, backoffBaseMs: 50 })
  await eventually(() => f.ids() === 'a:up')
  await eventually(() => double.held === 1)
  const oldIndex = double.index
  await double.restart({ index: 3 })
  t.ok(double.index < oldIndex, `index ${oldIndex} -> ${double.index}`)
  await target.api.register({ name, id: 'b', port: 8082 })
  const changedAt = Date.now()
  // Within 10 s, though the watch blocks for up to 120 s on the old, higher index.
  await eventually(() => f.ids() === 'a:up,b:up', { message: 'the change after the restart, long before the 120 s wait ends', timeoutMs: 10_000 })
  t.comment(`followed in ${Date.now() - changedAt} ms with a 120 s wait`)
})

t.test('400 and 500 answers, and 200s that hold no health entry: logged and retried with back-off, membership kept and stale, then resynced', { skip: needsDouble('fault hooks') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  // A 200 whose entries none reads as a health entry is no answer either: published, it would empty the pool.
  for (const answer of [{ status: 400, body: 'Invalid wait time' }, { status: 500, body: 'No cluster leader' }, { status: 403, body: 'ACL not found' }, { status: 200, body: '[{"foo":1}]' }, { status: 200, body: '[null,1]' }]) {
    await t.test(`${answer.status} ${answer.body}`, async t => {
      const name = uniqueService(`err${answer.status}`)
      await registered(t, target, { name, id: 'a', port: 8081 })
      const f = follow(t, target, name, { backoffBaseMs: 100, backoffMaxMs: 400 })
      await eventually(() => f.ids() === 'a:up')
      const mark = double.healthQueries.length
      double.fault(answer)
      double.dropHeldQueries()
      await eventually(() => double.healthQueries.slice(mark).filter(q => q.status === answer.status).length >= 4, { message: 'several failed queries' })
      t.match(f.source.state(), { status: 'disconnected', stale: true }, 'stale, not connected')
      t.equal(f.ids(), 'a:up', 'membership kept')
      const failed = double.healthQueries.slice(mark).filter(q => q.status === answer.status)
      const spanMs = failed.at(-1)!.atMs - failed[0]!.atMs
      t.ok(spanMs >= 3 * 50, `${failed.length} failed queries over ${spanMs} ms: backed off`)
      double.fault(undefined)
      await target.api.register({ name, id: 'b', port: 8082 })
      await eventually(() => f.ids() === 'a:up,b:up', { message: 'recovered and followed' })
      t.match(f.source.state(), { status: 'connected', stale: false })
    })
  }
})

t.test('the loop is rate-limited: a service changing every few ms gets at most one query per interval', async t => {
  const target = await consulTarget(t)
  const name = uniqueService('flap')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const f = follow(t, target, name, { minIntervalMs: 200 })
  await eventually(() => f.ids() === 'a:up')
  const before = f.source.queries
  const startedAt = Date.now()
  let n = 0
  while (Date.now() - startedAt < 1500) await target.api.check('service:a', n++ % 2 === 0 ? 'warn' : 'pass')
  const elapsedMs = Date.now() - startedAt
  const sent = f.source.queries - before
  t.ok(sent <= Math.ceil(elapsedMs / 200) + 2, `${sent} queries in ${elapsedMs} ms for ${n} changes (200 ms spacing)`)
  t.ok(sent >= 2, 'but it does follow')
})

t.test('a wall clock set back an hour does not hold the next query', async t => {
  const clock = steppableWallClock(t)
  const target = await consulTarget(t)
  const name = uniqueService('clock')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const f = follow(t, target, name, { minIntervalMs: 200 })
  await eventually(() => f.ids() === 'a:up', { message: 'first membership' })
  await eventually(() => f.source.queries >= 2, { message: 'the blocking query sent' })
  // The query held now started before the step. Its answer is published at once; the next query,
  // spaced from that start, must not wait an hour.
  clock.step(-3_600_000)
  await registered(t, target, { name, id: 'b', port: 8082 })
  await eventually(() => f.ids() === 'a:up,b:up', { timeoutMs: 5000, message: 'the change that ends the held query' })
  await registered(t, target, { name, id: 'c', port: 8083 })
  const sawC = await eventually(() => f.ids() === 'a:up,b:up,c:up', { timeoutMs: 5000, message: 'the next change, within the 200 ms spacing' })
  t.ok(sawC, 'both changes followed')
  t.match(f.source.state(), { status: 'connected', stale: false })
})

t.test('tag and datacenter options', async t => {
  const target = await consulTarget(t)
  const name = uniqueService('tags')
  await registered(t, target, { name, id: 'blue', port: 8081, tags: ['blue'] })
  await registered(t, target, { name, id: 'green', port: 8082, tags: ['green'] })
  const blue = follow(t, target, name, { tag: 'blue' })
  await eventually(() => blue.ids() === 'blue:up')
  const elsewhere = follow(t, target, name, { datacenter: 'no-such-dc', backoffBaseMs: 50 })
  await eventually(() => elsewhere.source.queries >= 2, { message: 'retrying' })
  t.equal(elsewhere.source.current(), undefined, 'no membership from a datacenter Consul cannot reach')
  t.match(elsewhere.source.state(), { status: 'connecting', stale: true })
})

t.test('an ACL token is sent as X-Consul-Token; an answer filtered for a token that may not read is not published', { skip: needsDouble('ACLs switched on') }, async t => {
  const target = await consulTarget(t, { aclToken: 's3cret', restrictedToken: 'reader-of-nothing' })
  const name = uniqueService('acl')
  await registered(t, target, { name, id: 'a', port: 8081 })
  const withToken = follow(t, target, name)
  await eventually(() => withToken.ids() === 'a:up')
  const restricted = follow(t, { address: target.address, token: 'reader-of-nothing' }, name, { backoffBaseMs: 50 })
  await eventually(() => restricted.source.queries >= 2)
  t.equal(restricted.source.current(), undefined, 'an answer Consul filtered by ACLs is not taken for an empty service')
  t.match(restricted.source.state(), { status: 'connecting' })
})

t.test('TLS to Consul with a CA file', { skip: needsDouble('a TLS listener') }, async t => {
  const certs = await testCertificates(t)
  const double = await startConsulDouble({ tls: { key: certs.key, cert: certs.cert } })
  t.teardown(() => double.close())
  t.match(double.address, /^https:/)
  const name = uniqueService('tls')
  const trusted = follow(t, { address: double.address }, name, { caFile: certs.caFile })
  await eventually(() => trusted.source.current() !== undefined, { message: 'membership over TLS' })
  t.match(trusted.source.state(), { status: 'connected' })
  const untrusted = follow(t, { address: double.address }, name, { backoffBaseMs: 50 })
  await eventually(() => untrusted.source.queries >= 2)
  t.equal(untrusted.source.current(), undefined, 'a certificate from an unknown CA is refused')
})

t.test('invalid registrations are skipped and reported once', async t => {
  const target = await consulTarget(t)
  const name = uniqueService('invalid')
  await registered(t, target, { name, id: 'ok', port: 8081 })
  await registered(t, target, { name, id: 'noport', port: 0 })
  const f = follow(t, target, name)
  await eventually(() => f.ids() === 'ok:up')
  await registered(t, target, { name, id: 'ok2', port: 8082 })
  await eventually(() => f.ids() === 'ok:up,ok2:up')
  const invalid = f.events.flatMap(e => e.type === 'invalid' ? [{ id: e.id, reason: e.reason }] : [])
  t.same(invalid, [{ id: 'noport', reason: 'bad_port' }], 'reported once, not at every answer')
})

t.test('close() ends a held blocking query at once', { skip: needsDouble('its held count') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('close')
  const f = follow(t, target, name, { waitMs: 300_000 })
  await eventually(() => double.held === 1)
  const startedAt = Date.now()
  await f.source.close()
  t.ok(Date.now() - startedAt < 1000, `closed in ${Date.now() - startedAt} ms`)
  await eventually(() => double.held === 0)
})
