// Failover: one of three instances SIGKILLed while wrk runs through fleetgate, on the real ZooKeeper.
// Each repeat starts fresh backends, each registered by its own `fleetgate agent`, and a fresh fleetgate
// that follows them; it measures a baseline run, then the same run with the kill at 30 %. The killed
// instance's agent stays up, fails its checks and deregisters it, as on a real host.

import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { LOAD_CPU, ROOT, startBackend, startCompetitor, tail } from './competitors.mjs'
import { eventually, startProcess, stopProcess } from './proc.mjs'
import { runWrk } from './wrk.mjs'
import { request } from 'undici'

/** The agents' health checks: a dead instance leaves the membership after FALL failed checks. */
export const FAILOVER_AGENT = { healthIntervalMs: 500, fall: 3 }

/** fleetgate's own account of the run: answers by status >= 400, retries and ejections, from /metrics. */
async function failureCounters (adminUrl) {
  const res = await request(`${adminUrl}/metrics`, { headersTimeout: 30_000, bodyTimeout: 30_000 })
  const text = await res.body.text()
  const sum = (name, filter = () => true) => text.split('\n')
    .filter(l => l.startsWith(`${name}{`) && filter(l))
    .reduce((total, l) => total + Number(l.slice(l.lastIndexOf(' ') + 1)), 0)
  const byStatus = {}
  for (const line of text.split('\n')) {
    const m = /^fleetgate_requests_total\{.*code="(\d+)".*\} (\d+)/.exec(line)
    if (m && Number(m[1]) >= 400) byStatus[m[1]] = (byStatus[m[1]] ?? 0) + Number(m[2])
  }
  return {
    byStatus,
    retries: sum('fleetgate_retries_total'),
    retriesByReason: Object.fromEntries(text.split('\n').filter(l => l.startsWith('fleetgate_retries_total{')).map(l => [/reason="([^"]+)"/.exec(l)?.[1], Number(l.slice(l.lastIndexOf(' ') + 1))])),
    ejections: sum('fleetgate_ejections_total'),
  }
}

/** The instances in the proxy's membership, from its /status. */
async function membershipSize (adminUrl) {
  const res = await request(`${adminUrl}/status`, { headers: { accept: 'application/json' }, headersTimeout: 5_000, bodyTimeout: 5_000 })
  return (await res.body.json()).instances.length
}

/** `fleetgate agent` for one backend, on the load core, registering it in `service` while it passes its checks. */
function startAgent ({ dir, zk, service, backend }) {
  const logFile = join(dir, `agent-${backend.name}.log`)
  return startProcess(`agent ${backend.name}`, process.execPath, [
    join(ROOT, 'dist', 'cli.js'), 'agent', '--zookeeper', `127.0.0.1:${zk.port}`, '--service', service,
    '--advertise', `127.0.0.1:${backend.port}`, '--target', backend.url, '--health-path', '/1k',
    '--health-interval-ms', String(FAILOVER_AGENT.healthIntervalMs), '--fall', String(FAILOVER_AGENT.fall),
    '--drain-ms', '0', '--admin-listen', '127.0.0.1:0', '--log-level', 'warn',
  ], { cpus: LOAD_CPU, logFile })
}

export async function failover ({ dir, zk, backendKind, repeats, durationS, warmupS, fleetgateArgs, log, connections = 50 }) {
  const results = []
  for (let round = 0; round < repeats; round++) {
    const service = `failover-${round}`
    const backends = []
    const agents = []
    let proxy
    try {
      for (const name of ['fa', 'fb', 'fc']) backends.push(await startBackend({ kind: backendKind, dir, name: `${name}${round}` }))
      for (const backend of backends) agents.push(startAgent({ dir, zk, service, backend }))
      proxy = await startCompetitor({ id: `fleetgate-failover-${round}`, kind: 'fleetgate', zookeeper: `127.0.0.1:${zk.port}`, service, fleetgateArgs, waitReady: false }, { dir, backends })
      await eventually(async () => await membershipSize(proxy.admin) === 3, {
        timeoutMs: 20_000, intervalMs: 100, what: `the 3 agents' registrations in the proxy's membership\n${agents.map(a => tail(a.logFile)).join('\n')}`,
      })
      const wrk = { url: `${proxy.url}/1k`, connections, cpus: LOAD_CPU }
      if (warmupS > 0) await runWrk({ ...wrk, durationS: warmupS })
      const baseline = await runWrk({ ...wrk, durationS })
      const running = runWrk({ ...wrk, durationS })
      await sleep(durationS * 300)
      const victim = backends[2]
      process.kill(victim.entry.pid, 'SIGKILL')
      const killedAt = performance.now()
      const killedAtS = durationS * 0.3
      // When its agent's deregistration reached the proxy: one small request to the admin port every 100 ms.
      const left = eventually(async () => await membershipSize(proxy.admin) === 2, { timeoutMs: 30_000, intervalMs: 100, what: 'the killed instance to leave the membership' })
        .then(() => (performance.now() - killedAt) / 1000)
      left.catch(() => {}) // awaited below, after wrk; a failed wrk run must not leave it unhandled
      const killed = await running
      const leftAfterS = await left
      const result = { baseline, killed, killedAtS, leftAfterS, proxyCounters: await failureCounters(proxy.admin) }
      results.push(result)
      log(`  failover round ${round + 1}/${repeats}: ${killed.socketErrors + killed.statusErrors} failed of ${killed.requests}, p99 ${baseline.p99Ms.toFixed(2)} -> ${killed.p99Ms.toFixed(2)} ms, deregistered after ${leftAfterS.toFixed(2)} s`)
    } finally {
      await stopProcess(proxy?.entry)
      for (const agent of agents) await stopProcess(agent)
      for (const backend of backends) await stopProcess(backend.entry)
    }
  }
  return results
}
