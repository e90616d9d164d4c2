// The Consul double answers as Consul does, for every behaviour the source and the registrar rely on.
// With CONSUL_HTTP_ADDR set, the same checks run against a real agent (the ones needing the double's
// knobs and fault hooks are skipped), which is how the double's fidelity is kept honest.

import t, { type Test } from 'tap'
import { request } from 'undici'
import { eventually } from '../helpers/eventually.ts'
import { consulTarget, doubleOf, needsDouble, uniqueService, type ConsulApi } from '../helpers/consul.ts'

async function registered (t: Test, api: ConsulApi, def: Parameters<ConsulApi['register']>[0]): Promise<void> {
  await api.register(def)
  t.teardown(() => api.deregister(def.id))
}

t.test('a registration through the agent shows in health with the node checks, Address falling back to the node', async t => {
  const { api } = await consulTarget(t)
  const name = uniqueService('basic')
  await registered(t, api, { name, id: `${name}-a`, port: 8081, meta: { zone: 'a' }, tags: ['blue'], weight: 3 })
  const answer = await api.health(name)
  t.equal(answer.status, 200)
  t.ok(answer.index >= 1, `X-Consul-Index ${answer.index}`)
  t.equal(answer.entries.length, 1)
  const [entry] = answer.entries
  t.match(entry!.Service, { ID: `${name}-a`, Service: name, Port: 8081, Address: '', Tags: ['blue'], Meta: { zone: 'a' }, Weights: { Passing: 3 } })
  t.type(entry!.Node.Address, 'string')
  t.ok((entry!.Node.Address as string).length > 0, 'Node.Address is what an empty Service.Address means')
  const checkIds = entry!.Checks.map(c => c.CheckID)
  t.ok(checkIds.includes('serfHealth'), 'node check included')
  t.ok(checkIds.includes(`service:${name}-a`), 'the TTL check is service:<id>')
  t.equal(entry!.Checks.find(c => c.CheckID === `service:${name}-a`)!.Status, 'passing')

  const unknown = await api.health(uniqueService('nobody'))
  t.equal(unknown.status, 200)
  t.same(unknown.entries, [], 'an unknown service is []')
  t.ok(unknown.index >= 1)
})

t.test('a blocking query is held until the service changes, and for the wait (plus jitter) when nothing does', async t => {
  const { api } = await consulTarget(t)
  const name = uniqueService('block')
  await registered(t, api, { name, id: `${name}-a`, port: 8081 })
  const first = await api.health(name)

  const idle = await api.health(name, `index=${first.index}&wait=600ms`)
  t.equal(idle.status, 200)
  t.equal(idle.index, first.index, 'same index after the wait')
  t.ok(idle.elapsedMs >= 550, `held ${idle.elapsedMs} ms for wait=600ms`)
  t.ok(idle.elapsedMs < 600 + 600 / 16 + 1500, `held ${idle.elapsedMs} ms, at most wait + wait/16 (+ slack)`)

  const held = api.health(name, `index=${first.index}&wait=30s`)
  const changeAt = Date.now()
  await registered(t, api, { name, id: `${name}-b`, port: 8082 })
  const woken = await held
  t.ok(woken.index > first.index, `index moved ${first.index} -> ${woken.index}`)
  t.equal(woken.entries.length, 2)
  t.ok(Date.now() - changeAt < 5000, 'answered on the change, not at the end of the wait')

  const now = await api.health(name, 'index=0&wait=30s')
  t.ok(now.elapsedMs < 5000, `index=0 does not block (${now.elapsedMs} ms)`)
})

t.test('passing drops entries with any check not passing; TTL checks fail when not passed in time', async t => {
  const { api } = await consulTarget(t)
  const name = uniqueService('passing')
  await registered(t, api, { name, id: `${name}-a`, port: 8081 })
  // Time enough for the checks below on a busy machine before it runs out.
  await registered(t, api, { name, id: `${name}-b`, port: 8082, ttl: '3s' })
  await api.check(`service:${name}-a`, 'fail', 'broken')
  const all = await api.health(name)
  t.equal(all.entries.length, 2, 'without passing: every entry')
  t.equal(all.entries.find(e => e.Service.ID === `${name}-a`)!.Checks.find(c => c.CheckID === `service:${name}-a`)!.Status, 'critical')
  t.same((await api.health(name, 'passing')).entries.map(e => e.Service.ID), [`${name}-b`])
  await api.check(`service:${name}-a`, 'warn')
  t.same((await api.health(name, 'passing')).entries.map(e => e.Service.ID), [`${name}-b`], 'warning is not passing')

  // b's TTL of 3 s runs out.
  await eventually(async () => (await api.health(name, 'passing')).entries.length === 0, { message: 'TTL expired', timeoutMs: 10_000 })
  const expired = (await api.health(name)).entries.find(e => e.Service.ID === `${name}-b`)!.Checks.find(c => c.CheckID === `service:${name}-b`)!
  t.equal(expired.Status, 'critical')
  t.match(expired.Output, /TTL expired/)
  await api.check(`service:${name}-b`, 'pass')
  t.same((await api.health(name, 'passing')).entries.map(e => e.Service.ID), [`${name}-b`], 'a pass brings it back')
})

t.test('maintenance mode is a critical _service_maintenance check: gone with passing, present without', async t => {
  const { api } = await consulTarget(t)
  const name = uniqueService('maint')
  await registered(t, api, { name, id: `${name}-a`, port: 8081 })
  await api.maintenance(`${name}-a`, true, 'deploying')
  const entry = (await api.health(name)).entries[0]!
  const maintenance = entry.Checks.find(c => c.CheckID === `_service_maintenance:${name}-a`)
  t.match(maintenance, { Status: 'critical', Notes: 'deploying', ServiceID: `${name}-a` })
  t.same((await api.health(name, 'passing')).entries, [])
  await api.maintenance(`${name}-a`, false)
  t.equal((await api.health(name, 'passing')).entries.length, 1)
  t.equal((await api.call('PUT', `/v1/agent/service/maintenance/${name}-a`)).status, 400, 'enable is required')
})

t.test('re-registering keeps the check status; deregistering removes the service; unknown ids are 404', async t => {
  const { api } = await consulTarget(t)
  const name = uniqueService('rereg')
  await registered(t, api, { name, id: `${name}-a`, port: 8081 })
  await api.check(`service:${name}-a`, 'fail')
  await api.register({ name, id: `${name}-a`, port: 8081, meta: { fleetgate_state: 'draining' }, status: 'passing' })
  const entry = (await api.health(name)).entries[0]!
  t.equal(entry.Service.Meta && (entry.Service.Meta as Record<string, string>).fleetgate_state, 'draining', 'the new definition is in')
  t.equal(entry.Checks.find(c => c.CheckID === `service:${name}-a`)!.Status, 'critical', 'the status carried over, as Consul does')
  t.equal(await api.deregister(`${name}-a`), 200)
  t.same((await api.health(name)).entries, [])
  t.equal(await api.deregister(`${name}-a`), 404, 'unknown service id')
  t.equal(await api.service(`${name}-a`), undefined)
  t.equal((await api.call('PUT', `/v1/agent/check/pass/service:${name}-a`)).status, 404, 'pass on an unknown check')
})

t.test('tag and dc filters; 400 for bad parameters', async t => {
  const { api } = await consulTarget(t)
  const name = uniqueService('filter')
  await registered(t, api, { name, id: `${name}-blue`, port: 8081, tags: ['blue'] })
  await registered(t, api, { name, id: `${name}-green`, port: 8082, tags: ['green'] })
  t.same((await api.health(name, 'tag=blue')).entries.map(e => e.Service.ID), [`${name}-blue`])
  t.same((await api.health(name, 'tag=blue&tag=green')).entries, [], 'every tag must match')
  const self = JSON.parse(await api.ok('GET', '/v1/agent/self')) as { Config: { Datacenter: string } }
  t.equal((await api.health(name, `dc=${self.Config.Datacenter}`)).entries.length, 2)
  const elsewhere = await api.health(name, 'dc=no-such-dc')
  t.equal(elsewhere.status, 500)
  t.match(elsewhere.text, /No path to datacenter/)
  t.equal((await api.health(name, 'index=1&wait=bogus')).status, 400, 'wait=bogus')
  t.equal((await api.health(name, 'index=-1')).status, 400, 'index=-1')
  t.equal((await api.health(name, 'index=abc')).status, 400, 'index=abc')
})

t.test('catalog registrations on other nodes; the entry carries that node', async t => {
  const { api } = await consulTarget(t)
  const name = uniqueService('catalog')
  const node = `${name}-node`
  await api.ok('PUT', '/v1/catalog/register', { Node: node, Address: '127.0.0.2', Service: { ID: `${name}-x`, Service: name, Port: 9000 } })
  t.teardown(() => api.call('PUT', '/v1/catalog/deregister', { Node: node }))
  const entry = (await api.health(name)).entries[0]!
  t.match(entry, { Node: { Node: node, Address: '127.0.0.2' }, Service: { ID: `${name}-x`, Address: '', Port: 9000 } })
})

t.test('DeregisterCriticalServiceAfter reaps a critical service', { skip: needsDouble('a lower floor than Consul\'s one minute') }, async t => {
  const target = await consulTarget(t, { deregisterMinimumMs: 300, reapIntervalMs: 100 })
  const name = uniqueService('reap')
  await target.api.register({ name, id: `${name}-a`, port: 8081, ttl: '300ms', deregisterAfter: '200ms' })
  t.equal(doubleOf(target).checkDefinition(`service:${name}-a`)!.deregisterAfterMs, 300, 'clamped to the floor')
  await eventually(async () => (await target.api.health(name)).entries.length === 0, { message: 'reaped', timeoutMs: 10_000 })
  t.equal(await target.api.service(`${name}-a`), undefined)
})

t.test('ACLs: reads are filtered to what the token may see, writes refused; an unknown token gets 403', { skip: needsDouble('ACLs switched on') }, async t => {
  const target = await consulTarget(t, { aclToken: 'secret', restrictedToken: 'reader-of-nothing' })
  await target.api.register({ name: 'x', id: 'x-a', port: 8081 })
  const restricted = await request(`${target.address}/v1/health/service/x`, { headers: { 'x-consul-token': 'reader-of-nothing' } })
  t.equal(restricted.statusCode, 200, 'Consul filters a read, it does not refuse it')
  t.equal(restricted.headers['x-consul-results-filtered-by-acls'], 'true', 'and says so to a token')
  t.same(await restricted.body.json(), [])
  const none = await request(`${target.address}/v1/health/service/nothing-here`, { headers: { 'x-consul-token': 'reader-of-nothing' } })
  t.equal(none.headers['x-consul-results-filtered-by-acls'], undefined, 'nothing left out, no header')
  await none.body.dump()
  const bare = await request(`${target.address}/v1/health/service/x`)
  t.equal(bare.statusCode, 200)
  t.equal(bare.headers['x-consul-results-filtered-by-acls'], undefined, 'but not to a request without a token')
  t.same(await bare.body.json(), [])
  const write = await request(`${target.address}/v1/agent/service/register`, { method: 'PUT', body: JSON.stringify({ Name: 'y' }) })
  t.equal(write.statusCode, 403)
  t.equal(await write.body.text(), 'Permission denied')
  const wrong = await request(`${target.address}/v1/health/service/x`, { headers: { 'x-consul-token': 'nope' } })
  t.equal(wrong.statusCode, 403)
  t.equal(await wrong.body.text(), 'ACL not found')
  const answer = await target.api.health('x')
  t.equal(answer.status, 200, 'the right token')
  t.equal(answer.entries.length, 1, 'sees the service')
  const leader = await request(`${target.address}/v1/status/leader`)
  t.equal(leader.statusCode, 200, '/v1/status/leader needs no token')
  await leader.body.dump()
})

t.test('fault hooks: No cluster leader, a dropped long poll, the listener down and up, a lower index', { skip: needsDouble('fault hooks') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const name = uniqueService('faults')
  await target.api.register({ name, id: `${name}-a`, port: 8081 })

  double.fault({ status: 500, body: 'No cluster leader', times: 1 })
  const noLeader = await target.api.health(name)
  t.equal(noLeader.status, 500)
  t.equal(noLeader.text, 'No cluster leader')
  t.equal((await target.api.health(name)).status, 200, 'times: 1')

  const { index } = await target.api.health(name)
  const held = target.api.health(name, `index=${index}&wait=30s`).then(() => 'answered', (err: Error) => `dropped: ${err.message}`)
  await eventually(() => double.held === 1, { message: 'query held' })
  t.equal(double.dropHeldQueries(), 1)
  t.match(await held, /^dropped/)

  const port = double.port
  await double.stop()
  await t.rejects(target.api.health(name), 'refused while down')
  await double.start()
  t.equal(double.port, port, 'same port')
  t.equal((await target.api.health(name)).entries.length, 1, 'state kept')

  await double.restart({ index: 3 })
  const after = await target.api.health(name)
  t.ok(after.index <= 3, `index after the restart: ${after.index}`)
  const stuck = await target.api.health(name, `index=${index}&wait=500ms`)
  t.ok(stuck.elapsedMs >= 450, `a query with the old, higher index waits the whole wait (${stuck.elapsedMs} ms)`)

  await double.restart({ keepState: false })
  t.same((await target.api.health(name)).entries, [], 'an agent restarted without state forgot its services')
})
