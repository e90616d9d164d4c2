// Failover: one of three backends SIGKILLed while wrk runs through fleetgate. Each repeat starts fresh
// backends and a fresh fleetgate, measures a baseline run, then the same run with the kill at 30 %.

import { setTimeout as sleep } from 'node:timers/promises'
import { LOAD_CPU, startBackend, startCompetitor } from './competitors.mjs'
import { stopProcess } from './proc.mjs'
import { runWrk } from './wrk.mjs'
import { request } from 'undici'

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

export async function failover ({ dir, backendKind, repeats, durationS, warmupS, fleetgateArgs, log, connections = 50 }) {
  const results = []
  for (let round = 0; round < repeats; round++) {
    const backends = []
    let proxy
    try {
      for (const name of ['fa', 'fb', 'fc']) backends.push(await startBackend({ kind: backendKind, dir, name: `${name}${round}` }))
      proxy = await startCompetitor({ id: `fleetgate-failover-${round}`, kind: 'fleetgate', fleetgateArgs }, { dir, backends })
      const wrk = { url: `${proxy.url}/1k`, connections, cpus: LOAD_CPU }
      if (warmupS > 0) await runWrk({ ...wrk, durationS: warmupS })
      const baseline = await runWrk({ ...wrk, durationS })
      const running = runWrk({ ...wrk, durationS })
      await sleep(durationS * 300)
      const victim = backends[2]
      process.kill(victim.entry.pid, 'SIGKILL')
      const killedAtS = durationS * 0.3
      const killed = await running
      const result = { baseline, killed, killedAtS, proxyCounters: await failureCounters(proxy.admin) }
      results.push(result)
      log(`  failover round ${round + 1}/${repeats}: ${killed.socketErrors + killed.statusErrors} failed of ${killed.requests}, p99 ${baseline.p99Ms.toFixed(2)} -> ${killed.p99Ms.toFixed(2)} ms`)
    } finally {
      await stopProcess(proxy?.entry)
      for (const backend of backends) await stopProcess(backend.entry)
    }
  }
  return results
}
