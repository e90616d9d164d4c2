// End to end with Consul: the real `fleetgate agent --discovery consul` registers a real backend in the
// Consul double (or a real agent with CONSUL_HTTP_ADDR), and the real `fleetgate proxy --discovery consul`
// routes by it. Registration, TTL, health transitions, drain, maintenance, and a Consul agent that
// restarts without its registrations.

import t, { type Test } from 'tap'
import { request } from 'undici'
import type { AgentStatus } from '../../src/agent/agent.ts'
import { DEMO_BACKEND, FAST, startHealthBackend } from '../helpers/agent.ts'
import { consulTarget, doubleOf, needsDouble, uniqueService, type ConsulTarget } from '../helpers/consul.ts'
import { eventually } from '../helpers/eventually.ts'
import { get, overriding, runFleetgate, startProxy, type FleetgateProcess, type ProxyProcess } from '../helpers/fleet.ts'
import { startRelay } from '../helpers/tcp-relay.ts'
import { freePort } from '../helpers/zookeeper.ts'

interface ConsulAgent extends FleetgateProcess {
  readonly id: string
  status(): Promise<AgentStatus>
  maintenance(draining: boolean): Promise<number>
}

/** `fleetgate agent --discovery consul` for the instance on 127.0.0.1:port; the token goes by environment. */
async function startConsulAgent (t: Test, target: ConsulTarget, service: string, port: number, args: string[] = []): Promise<ConsulAgent> {
  const id = `127.0.0.1-${port}`
  const proc = runFleetgate(t, ['agent', ...overriding([
    '--discovery', 'consul', '--consul', target.address, '--service', service,
    '--advertise', `127.0.0.1:${port}`, '--target', `http://127.0.0.1:${port}`, '--admin-listen', '127.0.0.1:0',
    ...FAST,
  ], args)], target.token ? { FLEETGATE_CONSUL_TOKEN: target.token } : {})
  t.teardown(() => target.api.deregister(args.includes('--id') ? args[args.indexOf('--id') + 1]! : id))
  const adminUrl = (await proc.waitForOutput(/"admin":"(http:\/\/127\.0\.0\.1:\d+)"/, 30_000))[1]!
  return {
    ...proc,
    id,
    status: async () => (await request(`${adminUrl}/status`)).body.json() as Promise<AgentStatus>,
    maintenance: async draining => {
      const res = await request(`${adminUrl}/maintenance`, { method: draining ? 'PUT' : 'DELETE' })
      await res.body.dump()
      return res.statusCode
    },
  }
}

async function consulProxy (t: Test, target: ConsulTarget, service: string, args: string[] = []): Promise<ProxyProcess> {
  return startProxy(t, ['--discovery', 'consul', '--consul', target.address, '--service', service, ...args], target.token ? { FLEETGATE_CONSUL_TOKEN: target.token } : {})
}

/** Resolves with the time the instance's registration went to passing. */
async function passingAt (target: ConsulTarget, service: string, id: string, afterIndex: number): Promise<number> {
  const double = target.double
  if (double) {
    const change = await eventually(() => double.changes.find(c => c.type === 'check' && c.checkId === `service:${id}` && c.status === 'passing'), { timeoutMs: 30_000, message: 'passing' })
    return change!.atMs
  }
  // A real agent: a blocking query with ?passing returns when the instance appears.
  let index = afterIndex
  for (let round = 0; round < 20; round++) {
    const answer = await target.api.health(service, `passing&index=${index}&wait=30s`)
    if (answer.entries.some(e => e.Service.ID === id)) return Date.now()
    index = answer.index
  }
  throw new Error(`${id} never passing`)
}

t.test('an agent registers into Consul and the proxy routes to it as soon as the registration goes to passing', async t => {
  const target = await consulTarget(t)
  const service = uniqueService('join')
  // An empty pool: until the instance arrives every probe is a fast 503, and after it every request is its.
  const proxy = await consulProxy(t, target, service)
  await eventually(() => proxy.ready(), { message: 'proxy ready' })
  t.equal((await get(proxy.url)).status, 503)

  const backend = await startHealthBackend(t, 'a')
  const { index } = await target.api.health(service)
  const passing = passingAt(target, service, `127.0.0.1-${backend.port}`, index)
  await startConsulAgent(t, target, service, backend.port)
  const passedAt = await passing
  // Four probes in flight at a time, and the time the first one reached the instance: the probes' own
  // round trips on a busy machine are not routing time.
  let routed = false
  const probe = async (): Promise<void> => {
    const deadline = Date.now() + 10_000
    while (!routed && Date.now() < deadline) if ((await get(proxy.url)).servedBy === 'a') routed = true
  }
  await Promise.all([probe(), probe(), probe(), probe()])
  t.ok(routed, 'proxy routes to a')
  const routedMs = backend.arrivals[0]!.arrivedAt - passedAt
  // The proxy routes by the new membership from the moment it logs it (the pool takes it synchronously).
  const appliedAt = [...proxy.output().matchAll(/"time":(\d+).*"msg":"membership changed"/g)].map(m => Number(m[1])).at(-1)!
  const appliedMs = appliedAt - passedAt
  t.comment(`registration passing -> proxy routes by it: ${appliedMs} ms -> first request at the new instance: ${routedMs} ms`)
  t.ok(appliedMs < 1000, `the proxy routes to it ${appliedMs} ms after the registration went to passing`)
  // The probes' own scheduling on a loaded machine adds to this one; it is a sanity bound.
  t.ok(routedMs < 1000, `the first request reached it ${routedMs} ms after`)
})

t.test('the registration: ID, Name, Address, Port, Meta, Weights, Tags and a passing TTL check', async t => {
  const target = await consulTarget(t)
  const service = uniqueService('format')
  const backend = await startHealthBackend(t, 'fmt')
  await startConsulAgent(t, target, service, backend.port, ['--weight', '3', '--labels', 'zone=a,tier=web', '--consul-tag', 'blue', '--id', `${service}-1`, '--session-timeout-ms', '3000'])
  const registration = await eventually(() => target.api.service(`${service}-1`), { timeoutMs: 30_000, message: 'registered' })
  t.match(registration, {
    ID: `${service}-1`, Service: service, Address: '127.0.0.1', Port: backend.port, Tags: ['blue'],
    Meta: { zone: 'a', tier: 'web', fleetgate_state: 'up' }, Weights: { Passing: 3, Warning: 1 },
  })
  const check = (await target.api.checks())[`service:${service}-1`]
  t.match(check, { Status: 'passing', ServiceID: `${service}-1` })
  if (target.double) t.same(target.double.checkDefinition(`service:${service}-1`), { status: 'passing', ttlMs: 3000, deregisterAfterMs: 60_000 }, 'TTL 3 s, DeregisterCriticalServiceAfter 1 min')

  const proxy = await consulProxy(t, target, service)
  const status = await eventually(async () => (await proxy.status()).instances[0], { message: 'the proxy reads it' })
  t.match(status, { id: `${service}-1`, address: `127.0.0.1:${backend.port}`, state: 'up', weight: 3, labels: { zone: 'a', tier: 'web', tags: 'blue' } })
})

t.test('failing /health: deregistered after the fall threshold, back after the rise threshold; traffic follows', async t => {
  const target = await consulTarget(t)
  const service = uniqueService('flap')
  const [a, b] = await Promise.all([startHealthBackend(t, 'a'), startHealthBackend(t, 'b')])
  const agentA = await startConsulAgent(t, target, service, a!.port)
  await startConsulAgent(t, target, service, b!.port)
  const proxy = await consulProxy(t, target, service)
  await eventually(async () => (await proxy.status()).instances.length === 2, { timeoutMs: 30_000 })

  a!.healthy = false
  await eventually(async () => (await target.api.service(agentA.id)) === undefined, { timeoutMs: 30_000, message: 'deregistered' })
  await eventually(async () => (await proxy.status()).instances.map(i => i.id).join() === `127.0.0.1-${b!.port}`, { message: 'proxy drops it' })
  for (let i = 0; i < 10; i++) t.equal((await get(proxy.url)).servedBy, 'b')
  a!.healthy = true
  await eventually(async () => (await proxy.status()).instances.length === 2, { timeoutMs: 30_000, message: 'back' })
  t.match(await agentA.status(), { health: 'healthy', registration: { registry: 'consul', key: agentA.id, registered: true, state: 'up' } })
})

t.test('SIGTERM: the registration says draining for --drain-ms, then it is deregistered and the agent exits 0', async t => {
  const target = await consulTarget(t)
  const service = uniqueService('drain')
  const backend = await startHealthBackend(t, 'a')
  const agent = await startConsulAgent(t, target, service, backend.port, ['--drain-ms', '1500'])
  const proxy = await consulProxy(t, target, service)
  await eventually(async () => (await proxy.status()).instances[0]?.state === 'up', { timeoutMs: 30_000 })
  agent.kill('SIGTERM')
  await eventually(async () => (await proxy.status()).instances[0]?.state === 'draining', { message: 'draining in the proxy' })
  t.match((await target.api.service(agent.id))?.Meta, { fleetgate_state: 'draining' })
  await eventually(async () => (await proxy.status()).instances.length === 0, { message: 'gone after the drain' })
  t.equal(await target.api.service(agent.id), undefined, 'deregistered')
  t.same(await agent.exited, { code: 0, signal: null })
})

t.test('maintenance through the agent drains through Meta and comes back', async t => {
  const target = await consulTarget(t)
  const service = uniqueService('maint')
  const backend = await startHealthBackend(t, 'a')
  const agent = await startConsulAgent(t, target, service, backend.port)
  const proxy = await consulProxy(t, target, service)
  await eventually(async () => (await proxy.status()).instances[0]?.state === 'up', { timeoutMs: 30_000 })
  t.equal(await agent.maintenance(true), 200)
  await eventually(async () => (await proxy.status()).instances[0]?.state === 'draining', { message: 'draining' })
  t.equal(await agent.maintenance(false), 200)
  await eventually(async () => (await proxy.status()).instances[0]?.state === 'up', { message: 'up again' })
})

/** The double as the target, and an agent registering instance `a` of a new service in it, with a TTL of 3 s (passed every second). */
async function agentWithTtl3s (t: Test, name: string) {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const service = uniqueService(name)
  const agent = await startConsulAgent(t, target, service, (await startHealthBackend(t, 'a')).port, ['--session-timeout-ms', '3000'])
  return { target, double, service, agent }
}

t.test('the Consul agent restarts without its registrations: the agent registers again', { skip: needsDouble('a restart that forgets') }, async t => {
  const { target, double, service, agent } = await agentWithTtl3s(t, 'lost')
  const proxy = await consulProxy(t, target, service)
  await eventually(async () => (await get(proxy.url)).servedBy === 'a', { timeoutMs: 30_000 })
  await double.restart({ keepState: false, index: 2 })
  t.equal(double.service(agent.id), undefined, 'the registration is gone')
  const lostAt = Date.now()
  await eventually(() => double.service(agent.id), { timeoutMs: 10_000, message: 'registered again' })
  t.comment(`registered again ${Date.now() - lostAt} ms after the restart (TTL 3 s, passed every 1 s)`)
  // The agent's log reaches this process through a pipe: it may land just after the registration did.
  t.ok(await eventually(() => /consul lost the registration/.test(agent.output()), { message: 'the loss logged' }), 'the loss is logged')
  await eventually(async () => (await proxy.status()).instances.length === 1 && (await get(proxy.url)).servedBy === 'a', { message: 'the proxy follows' })
})

t.test('a killed agent stops passing its TTL: the check turns critical and the proxy drops the instance', async t => {
  const target = await consulTarget(t)
  const service = uniqueService('killed')
  const backend = await startHealthBackend(t, 'a')
  const agent = await startConsulAgent(t, target, service, backend.port, ['--session-timeout-ms', '1500'])
  const proxy = await consulProxy(t, target, service)
  await eventually(async () => (await proxy.status()).instances.length === 1, { timeoutMs: 30_000 })
  agent.kill('SIGKILL')
  const killedAt = Date.now()
  await eventually(async () => (await proxy.status()).instances.length === 0, { timeoutMs: 15_000, message: 'dropped once the TTL ran out' })
  t.comment(`dropped ${Date.now() - killedAt} ms after SIGKILL (TTL 1.5 s)`)
  t.equal((await target.api.checks())[`service:${agent.id}`]?.Status, 'critical')

  // Started again over its critical leftover, which Consul keeps critical when re-registered: the TTL is
  // passed at once, not at the first tick, a third of the 30 s TTL later.
  const again = await startConsulAgent(t, target, service, backend.port, ['--session-timeout-ms', '30000'])
  t.equal(again.id, agent.id)
  await again.waitForOutput(/"msg":"registered"/, 30_000)
  const registeredAt = Date.now()
  await eventually(async () => (await proxy.status()).instances.length === 1, { timeoutMs: 30_000, message: 'back in the pool' })
  t.ok(Date.now() - registeredAt < 5_000, `back ${Date.now() - registeredAt} ms after registering (the first tick: 10 s)`)
  t.equal((await target.api.checks())[`service:${agent.id}`]?.Status, 'passing')
})

t.test('Consul down when the agent starts: it keeps trying and registers once Consul is up', { skip: needsDouble('the listener taken down') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  await double.stop()
  const service = uniqueService('late')
  const backend = await startHealthBackend(t, 'a')
  const agent = await startConsulAgent(t, target, service, backend.port)
  await eventually(async () => (await agent.status()).health === 'healthy', { message: 'healthy' })
  t.match(await agent.status(), { registration: { connected: false, registered: false } })
  await double.start()
  await eventually(() => double.service(agent.id), { timeoutMs: 15_000, message: 'registered once Consul is up' })
  await eventually(async () => (await agent.status()).registration.connected, { message: 'connected' })
})

t.test('Consul down while the agent is registered: it says so until Consul is back, then passes the TTL at once', { skip: needsDouble('the listener taken down') }, async t => {
  const { double, agent } = await agentWithTtl3s(t, 'outage')
  await eventually(() => double.checkStatus(`service:${agent.id}`) === 'passing', { timeoutMs: 30_000, message: 'registered, passing' })
  await double.stop()
  const from = agent.output().length
  const failures = () => agent.output().slice(from).match(/consul registration step failed/g)?.length ?? 0
  await eventually(() => failures() >= 3, { timeoutMs: 15_000, message: 'three failed steps' })
  t.equal((await agent.status()).registration.connected, false, 'not connected')
  t.notMatch(agent.output().slice(from), /consul reachable again/, 'a retry with nothing sent did not pass for Consul answering')

  // Back, but refusing: Consul is there, and the agent says so, with the refusal as its last error.
  double.fault({ match: /^\/v1\/agent\//, status: 500, body: 'rpc error making call: No cluster leader' })
  await double.start()
  await eventually(async () => (await agent.status()).registration.connected, { timeoutMs: 15_000, message: 'connected while refused' })
  t.match((await agent.status()).registration.lastError, /500/)
  double.fault(undefined)
  await eventually(() => /consul reachable again/.test(agent.output().slice(from)), { timeoutMs: 15_000, message: 'reachable again' })
  t.equal((await agent.status()).registration.connected, true)
  t.equal(double.checkStatus(`service:${agent.id}`), 'passing', 'still passing')
})

t.test('a TTL pass refused while the service is there (500, 429): the agent backs off instead of registering again in a loop', { skip: needsDouble('fault hooks') }, async t => {
  const { double, agent } = await agentWithTtl3s(t, 'refused-pass')
  await eventually(() => double.checkStatus(`service:${agent.id}`) === 'passing', { timeoutMs: 30_000, message: 'registered, passing' })
  for (const [status, body] of [[500, 'rpc error making call: No cluster leader'], [429, 'rate limit exceeded']] as const) {
    const from = agent.output().length
    const count = (pattern: RegExp): number => agent.output().slice(from).match(pattern)?.length ?? 0
    double.fault({ match: /^\/v1\/agent\/check\/pass\//, status, body })
    await eventually(() => count(/consul registration step failed/g) >= 3, { timeoutMs: 15_000, message: `three failed steps on ${status}` })
    double.fault(undefined)
    // Each failed step may write the registration once (the check might really be gone), never more.
    const rewrites = count(/the registration lost its TTL check/g)
    t.ok(rewrites <= count(/consul registration step failed/g), `${status}: ${rewrites} registrations written again`)
    await eventually(() => /consul reachable again/.test(agent.output().slice(from)), { timeoutMs: 15_000, message: `reachable again after ${status}` })
    t.equal(double.checkStatus(`service:${agent.id}`), 'passing', `passing again after ${status}`)
  }
})

t.test('SIGTERM while Consul has applied a registration but its answer has not come: the agent removes it on the way out', { skip: needsDouble('its service table') }, async t => {
  const target = await consulTarget(t)
  const double = doubleOf(target)
  const relay = await startRelay(double.port)
  t.teardown(() => relay.close())
  relay.hold()
  const agent = await startConsulAgent(t, { ...target, address: `http://127.0.0.1:${relay.port}` }, uniqueService('unanswered'), (await startHealthBackend(t, 'a')).port)
  await eventually(() => double.checkStatus(`service:${agent.id}`) === 'passing', { timeoutMs: 30_000, message: 'registered in Consul, the answer held back' })
  t.equal((await agent.status()).registration.registered, false, 'the agent has had no answer')
  agent.kill('SIGTERM')
  t.equal((await agent.exited).code, 0)
  t.equal(double.service(agent.id), undefined, 'no registration left behind, passing for a TTL')
})

t.test('ACLs: the agent registers with its token and fails without one', { skip: needsDouble('ACLs switched on') }, async t => {
  const target = await consulTarget(t, { aclToken: 'agent-secret' })
  const double = doubleOf(target)
  const service = uniqueService('acl')
  const [a, b] = await Promise.all([startHealthBackend(t, 'a'), startHealthBackend(t, 'b')])
  const withToken = await startConsulAgent(t, target, service, a!.port)
  await eventually(() => double.service(withToken.id), { timeoutMs: 30_000, message: 'registered with the token' })
  const without = await startConsulAgent(t, { ...target, token: undefined }, service, b!.port)
  await eventually(async () => /403/.test((await without.status()).registration.lastError ?? ''), { timeoutMs: 30_000, message: '403 without' })
  t.equal(double.service(without.id), undefined)
})

t.test('wrapper mode: the command does not get the agent\'s Consul token; other variables pass', { skip: needsDouble('ACLs switched on') }, async t => {
  const target = await consulTarget(t, { aclToken: 'agent-secret' })
  const double = doubleOf(target)
  const service = uniqueService('env')
  const port = await freePort()
  const id = `127.0.0.1-${port}`
  t.teardown(() => target.api.deregister(id))
  const show = 'echo "child env: token=[${FLEETGATE_CONSUL_TOKEN-unset}] kept=[${FLEETGATE_TEST_KEPT-unset}]"'
  const agent = runFleetgate(t, [
    'agent', '--discovery', 'consul', '--consul', target.address, '--service', service,
    '--advertise', `127.0.0.1:${port}`, '--target', `http://127.0.0.1:${port}`, '--admin-listen', '127.0.0.1:0', ...FAST,
    '--', 'sh', '-c', `${show}; exec "${process.execPath}" "${DEMO_BACKEND}" --name env --port ${port} --exit-with-parent`,
  ], { FLEETGATE_CONSUL_TOKEN: 'agent-secret', FLEETGATE_TEST_KEPT: 'kept' })
  const [, token, kept] = await agent.waitForOutput(/child env: token=\[([^\]$]*)\] kept=\[([^\]$]*)\]/, 30_000)
  t.equal(token, 'unset', 'FLEETGATE_CONSUL_TOKEN is not in the command\'s environment')
  t.equal(kept, 'kept', 'other variables are')
  await eventually(() => double.service(id), { timeoutMs: 30_000, message: 'the agent registers with its token all the same' })
  agent.kill('SIGTERM')
  t.equal((await agent.exited).code, 0)
})
