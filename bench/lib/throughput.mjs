// Throughput scenarios: every competitor, fresh per scenario, measured with wrk in interleaved
// repeats. Each measured run records wrk's summary and, from /proc, the proxy's CPU (in user space and in
// the kernel) and peak RSS, how busy the load core was, and how much CPU other processes took on the
// proxy's core (noise).

import { setTimeout as sleep } from 'node:timers/promises'
import { startCompetitor, LOAD_CPU, PROXY_CPU } from './competitors.mjs'
import { coreTimes, memory, processTree, resetPeak, stopProcess, treeCpuSeconds, treeCpuTimes } from './proc.mjs'
import { runWrk } from './wrk.mjs'

export const SCENARIOS = [
  { id: 'get-1k', title: '1 KB GET, 50 keep-alive connections', path: '/1k', connections: 50, shape: {} },
  { id: 'get-256k', title: '256 KB response, 50 keep-alive connections', path: '/256k', connections: 50, shape: {} },
  { id: 'post-64k', title: '64 KB POST (1 KB answer), 50 keep-alive connections', path: '/1k', connections: 50, shape: { method: 'POST', bodyBytes: 65536 } },
  { id: 'get-1k-c1000', title: '1 KB GET, 1,000 keep-alive connections', path: '/1k', connections: 1000, shape: {} },
  { id: 'get-1k-close', title: '1 KB GET, a new connection per request (Connection: close), 50 connections', path: '/1k', connections: 50, shape: { close: true } },
]

/** One measured wrk run against a started competitor. */
export async function measure (competitor, scenario, { durationS, warmupS, backends }) {
  const url = `${competitor.url}${scenario.path}`
  const wrkOptions = { url, connections: scenario.connections, shape: scenario.shape, cpus: LOAD_CPU }
  if (warmupS > 0) await runWrk({ ...wrkOptions, durationS: warmupS })
  // Let sockets from the warm-up (or the previous competitor) settle before measuring.
  await sleep(300)
  const pids = competitor.entry ? processTree(competitor.entry.pid) : []
  const peakReset = pids.length > 0 && resetPeak(pids)
  const backendPids = backends.map(b => b.entry.pid)
  const cpu0 = treeCpuTimes(pids)
  const backendCpu0 = treeCpuSeconds(backendPids)
  const cores0 = coreTimes()
  const t0 = performance.now()
  const wrk = await runWrk({ ...wrkOptions, durationS })
  const wallS = (performance.now() - t0) / 1000
  const cores1 = coreTimes()
  const treeNow = competitor.entry ? processTree(competitor.entry.pid) : []
  const cpu1 = treeCpuTimes(treeNow)
  const proxyCores = (cpu1.user + cpu1.kernel - cpu0.user - cpu0.kernel) / wallS
  /** The proxy's CPU per request answered, in µs. */
  const perRequest = seconds => pids.length > 0 && wrk.requests > 0 ? seconds * 1e6 / wrk.requests : NaN
  const { peak } = memory(treeNow)
  const core = id => ({ task: (cores1[id].task - cores0[id].task) / wallS, busy: (cores1[id].busy - cores0[id].busy) / wallS })
  return {
    competitor: competitor.spec.id,
    ...wrk,
    errorsTotal: wrk.socketErrors + wrk.statusErrors,
    proxyCores: pids.length > 0 ? proxyCores : NaN,
    // Requests over CPU seconds: both over the same span, unlike wrk's duration and the harness's wall time.
    rpsPerCore: pids.length > 0 && cpu1.user + cpu1.kernel > cpu0.user + cpu0.kernel ? wrk.requests / (cpu1.user + cpu1.kernel - cpu0.user - cpu0.kernel) : NaN,
    userUsPerRequest: perRequest(cpu1.user - cpu0.user),
    kernelUsPerRequest: perRequest(cpu1.kernel - cpu0.kernel),
    peakRss: pids.length > 0 ? peak : NaN,
    peakIsPerRun: peakReset,
    backendCores: (treeCpuSeconds(backendPids) - backendCpu0) / wallS,
    loadCoreBusy: core(LOAD_CPU).busy,
    // Processes on the proxy's core other than the proxy: other people's work, i.e. noise.
    foreignOnProxyCore: Math.max(0, core(PROXY_CPU).task - (pids.length > 0 ? proxyCores : 0)),
  }
}

/**
 * Starts all `specs`, runs `repeats` rounds (the order rotates each round so no competitor always
 * goes first or last), stops them, and returns { scenario, runs: { [id]: [result...] } }.
 */
export async function runScenario (scenario, specs, { dir, backends, repeats, durationS, warmupS, log }) {
  const competitors = []
  try {
    for (const spec of specs) competitors.push(await startCompetitor(spec, { dir, backends }))
    const runs = Object.fromEntries(specs.map(s => [s.id, []]))
    for (let round = 0; round < repeats; round++) {
      const order = competitors.map((_, i) => competitors[(i + round) % competitors.length])
      for (const competitor of order) {
        const result = await measure(competitor, scenario, { durationS, warmupS, backends })
        runs[competitor.spec.id].push(result)
        log(`  ${scenario.id} round ${round + 1}/${repeats} ${competitor.spec.id.padEnd(20)} ${Math.round(result.rps).toString().padStart(7)} req/s  p99 ${result.p99Ms.toFixed(2)} ms  proxy ${(result.proxyCores * 100).toFixed(0)} %  errors ${result.errorsTotal}  other load on core ${PROXY_CPU}: ${(result.foreignOnProxyCore * 100).toFixed(0)} %`)
      }
    }
    return { scenario, runs }
  } finally {
    for (const competitor of competitors) await stopProcess(competitor.entry)
  }
}
