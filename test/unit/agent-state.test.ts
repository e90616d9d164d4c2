import t from 'tap'
import { Agent } from '../../src/agent/agent.ts'
import type { ProbeResult } from '../../src/agent/health-check.ts'
import type { Desired, Registrar, RegistrarStatus } from '../../src/agent/registrar.ts'
import { pino } from 'pino'
import { silentLogger, type Logger } from '../../src/logger.ts'
import type { InstanceState } from '../../src/membership/instance.ts'
import { createAgentMetrics, createRegistry, type AgentMetrics } from '../../src/metrics.ts'
import { eventually } from '../helpers/eventually.ts'

/** Records what the agent asks; the registry "says it" at once. */
class RecordingRegistrar implements Registrar {
  calls: string[] = []
  desired: Desired = { kind: 'unset' }
  closed = false
  /** While set, setState is recorded at once but its write resolves only when this does. */
  hold: Promise<void> | undefined
  /** False: the registry is out of reach, and holds nothing whatever is asked. */
  reachable = true
  start (): void { this.calls.push('start') }
  async register (state: InstanceState): Promise<void> { this.#want(`register:${state}`, { kind: 'registered', state }) }
  async setState (state: InstanceState): Promise<void> {
    this.#want(`state:${state}`, { kind: 'registered', state })
    await this.hold
  }
  async deregister (): Promise<void> { this.#want('deregister', { kind: 'absent' }) }
  async close (): Promise<void> { this.closed = true; this.calls.push('close') }
  status (): RegistrarStatus {
    return { registry: 'fake', key: 'k', connected: true, session: 's', desired: this.desired, registered: this.reachable && this.desired.kind === 'registered', state: undefined, lastError: undefined }
  }

  #want (call: string, desired: Desired): void {
    this.calls.push(call)
    this.desired = desired
  }
}

/** A probe that answers from a script, then repeats its last answer (or the whole script, `cycle`). */
function scripted (results: string, cycle = false) {
  let i = 0
  const state = { probes: 0, override: undefined as boolean | undefined }
  const probe = async (): Promise<ProbeResult> => {
    state.probes++
    const at = cycle ? i++ % results.length : Math.min(i++, results.length - 1)
    const ok = state.override ?? results[at] === '1'
    return { ok, detail: ok ? 'HTTP 200' : 'HTTP 503', durationMs: 0 }
  }
  return { probe, state }
}

function build (results: string, options: { drainMs?: number, rise?: number, fall?: number, cycle?: boolean, logger?: Logger } = {}) {
  const registrar = new RecordingRegistrar()
  const { probe, state } = scripted(results, options.cycle)
  const metrics = createAgentMetrics(createRegistry())
  const agent = new Agent({
    service: 'superset', id: 'a', registrar, probe,
    healthIntervalMs: 2, rise: options.rise ?? 2, fall: options.fall ?? 2,
    drainMs: options.drainMs ?? 50, stopTimeoutMs: 1000,
    metrics, logger: options.logger ?? silentLogger,
  })
  return { agent, registrar, state, metrics }
}

/** A logger that keeps its lines, parsed. */
function recordingLogger (): { logger: Logger, lines: Array<{ level: number, msg: string }> } {
  const lines: Array<{ level: number, msg: string }> = []
  return { logger: pino({ level: 'info' }, { write: (line: string) => { lines.push(JSON.parse(line)) } }), lines }
}

async function transitions (metrics: AgentMetrics): Promise<Record<string, number>> {
  const counts: Record<string, number> = {}
  for (const { labels, value } of (await metrics.transitions.get()).values) counts[String(labels.to)] = value
  return counts
}

t.test('registers and deregisters on transitions only', async t => {
  const { agent, registrar, state } = build('1111110000001111')
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => state.probes >= 20, { message: '20 probes' })
  t.same(registrar.calls, ['start', 'register:up', 'deregister', 'register:up'])
})

t.test('a slow start is where the instance starts, not a transition: logged at info, not counted', async t => {
  const { logger, lines } = recordingLogger()
  const { agent, registrar, state, metrics } = build('0', { rise: 2, fall: 2, logger })
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => agent.status().health === 'unhealthy', { message: 'not healthy yet after the fall threshold' })
  t.same(await transitions(metrics), { healthy: 0, unhealthy: 0 }, 'no transition counted')
  t.same(lines.filter(l => l.level >= 40).map(l => l.msg), [], 'nothing at warn')
  t.ok(lines.some(l => l.level === 30 && l.msg === 'instance not healthy yet: not registering'), 'said at info')
  t.same(registrar.calls, ['start', 'deregister'], 'a registration an earlier run left goes all the same')

  state.override = true
  await eventually(() => agent.status().health === 'healthy', { message: 'healthy once it listens' })
  state.override = false
  await eventually(() => agent.status().health === 'unhealthy', { message: 'then unhealthy' })
  t.same(await transitions(metrics), { healthy: 1, unhealthy: 1 }, 'a fall after being healthy is one')
  t.same(lines.filter(l => l.level === 40).map(l => l.msg), ['instance unhealthy: deregistering'], 'and a warning')
  t.same(registrar.calls, ['start', 'deregister', 'register:up', 'deregister'])
})

t.test('health still unknown: an earlier registration is neither kept nor removed', async t => {
  const { agent, registrar, state } = build('10', { rise: 2, fall: 2, cycle: true })
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => state.probes >= 10)
  t.same(registrar.calls, ['start'])
  t.equal(agent.status().health, 'unknown')
  t.equal(await agent.shutdown(), 0)
  t.same(registrar.calls, ['start', 'deregister', 'close'], 'no drain for an instance that was never registered')
})

t.test('asked to register but never registered (registry out of reach): nothing to drain, it stops at once', async t => {
  const { agent, registrar } = build('1', { drainMs: 60_000 })
  registrar.reachable = false
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => registrar.desired.kind === 'registered', { message: 'healthy: registration asked for' })
  const startedAt = Date.now()
  t.equal(await agent.shutdown('SIGTERM'), 0)
  t.ok(Date.now() - startedAt < 5000, `did not wait the 60 s drain (took ${Date.now() - startedAt} ms)`)
  t.same(registrar.calls, ['start', 'register:up', 'deregister', 'close'], 'no draining write')
})

t.test('maintenance drains without stopping and holds through an unhealthy spell', async t => {
  const { agent, registrar, state } = build('1')
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => registrar.desired.kind === 'registered')
  t.equal(await agent.setMaintenance(true), true)
  t.same(registrar.desired, { kind: 'registered', state: 'draining' })
  state.override = false
  await eventually(() => registrar.desired.kind === 'absent', { message: 'deregistered while unhealthy' })
  state.override = true
  await eventually(() => registrar.desired.kind === 'registered', { message: 're-registered after recovery' })
  t.same(registrar.desired, { kind: 'registered', state: 'draining' }, 'comes back still in maintenance')
  await agent.setMaintenance(false)
  t.same(registrar.desired, { kind: 'registered', state: 'up' })
  t.match(agent.status(), { maintenance: false, health: 'healthy', phase: 'running' })
})

t.test('SIGTERM drains: draining, wait drainMs, deregister, close; exit code 0', async t => {
  const { agent, registrar } = build('1', { drainMs: 300 })
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => registrar.desired.kind === 'registered')
  const startedAt = Date.now()
  const code = await agent.shutdown('SIGTERM')
  const tookMs = Date.now() - startedAt
  t.equal(code, 0)
  t.same(registrar.calls.slice(-3), ['state:draining', 'deregister', 'close'])
  t.ok(tookMs >= 290, `drain waited ${tookMs} ms`)
  t.equal(agent.phase, 'stopped')
  t.equal(await agent.done, 0)
  t.equal(await agent.setMaintenance(false), false, 'maintenance no longer applies')
})

t.test('a second signal cuts the drain short', async t => {
  const { agent, registrar } = build('1', { drainMs: 60_000 })
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => registrar.desired.kind === 'registered')
  const startedAt = Date.now()
  const first = agent.shutdown('SIGTERM')
  await eventually(() => registrar.calls.includes('state:draining'))
  const second = agent.shutdown('SIGTERM')
  t.equal(await first, 0)
  t.equal(await second, 0)
  t.ok(Date.now() - startedAt < 5000, 'did not wait the 60 s drain')
  t.same(registrar.calls.slice(-3), ['state:draining', 'deregister', 'close'])
})

t.test('a second signal while the draining write is pending still cuts the drain short', async t => {
  const { agent, registrar } = build('1', { drainMs: 10_000 })
  agent.start()
  t.teardown(() => agent.shutdown())
  await eventually(() => registrar.desired.kind === 'registered')
  let release!: () => void
  registrar.hold = new Promise(resolve => { release = resolve })
  const startedAt = Date.now()
  const first = agent.shutdown('SIGTERM')
  await eventually(() => registrar.calls.includes('state:draining'))
  const second = agent.shutdown('SIGINT')
  release()
  t.equal(await first, 0)
  t.equal(await second, 0)
  t.ok(Date.now() - startedAt < 5000, `did not wait the 10 s drain (took ${Date.now() - startedAt} ms)`)
  t.same(registrar.calls.slice(-3), ['state:draining', 'deregister', 'close'])
})
