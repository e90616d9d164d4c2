// Profiles the Node proxies under the benchmark's 1 KB load and prints where their CPU time goes, side
// by side. Each competitor is started as bench/run.mjs starts it, pinned to core 0, with
// `node --cpu-prof`; three NGINX backends and wrk share core 1. After a warm-up and the measured run, a
// SIGTERM ends it and node writes the profile, which covers the process from start to exit.
// Start it after `npm run bench` has installed and built everything once.
//   node bench/profile.mjs [--competitors fleetgate,floor,peer] [--connections N] [--duration S]
//                          [--warmup S] [--top N] [--dir DIR]

import { mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { KINDS, summarize } from './cpu-profile-summary.mjs'
import { PROXY_NODE_FLAGS, startBackend, startCompetitor } from './lib/competitors.mjs'
import { cpuSeconds, killAllSync, stopAll, stopProcess } from './lib/proc.mjs'
import { table } from './lib/stats.mjs'
import { runWrk } from './lib/wrk.mjs'

const { values: opts } = parseArgs({
  options: {
    competitors: { type: 'string', default: 'fleetgate,floor' },
    connections: { type: 'string', default: '50' },
    duration: { type: 'string', default: '8' },
    warmup: { type: 'string', default: '2' },
    top: { type: 'string', default: '12' },
    dir: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
})
if (opts.help) {
  process.stdout.write(readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(0, 8).join('\n') + '\n')
  process.exit(0)
}
/** A bad flag: its message, and exit code 2. */
function usageError (message) {
  process.stderr.write(`bench/profile.mjs: ${message}\n`)
  process.exit(2)
}
const NODE_KINDS = { fleetgate: 'fleetgate', floor: 'the Node floor', peer: 'the Node peer' }
const competitors = opts.competitors.split(',')
for (const kind of competitors) if (!(kind in NODE_KINDS)) usageError(`--competitors: ${JSON.stringify(kind)} is not one of ${Object.keys(NODE_KINDS).join(', ')}`)
const [connections, durationS, warmupS, top] = ['connections', 'duration', 'warmup', 'top'].map(key => {
  const value = /^[0-9]+$/.test(opts[key]) ? Number(opts[key]) : NaN
  if (!(value >= 1)) usageError(`--${key} = ${JSON.stringify(opts[key])}: expected a whole number above 0`)
  return value
})

const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'fleetgate-profile-'))
process.on('SIGINT', () => { killAllSync(); process.exit(130) })
const results = []
try {
  const backends = []
  for (const name of ['a', 'b', 'c']) backends.push(await startBackend({ kind: 'nginx', dir, name }))
  for (const kind of competitors) {
    const profileDir = join(dir, `${kind}-profile`)
    // fleetgate gets the proxy's node flags from startCompetitor; the floor runs with them in bench/run.mjs too.
    const nodeArgs = [...(kind === 'floor' ? PROXY_NODE_FLAGS : []), '--cpu-prof', '--cpu-prof-dir', profileDir]
    const competitor = await startCompetitor({ id: `${kind}-profiled`, kind, nodeArgs }, { dir, backends })
    const url = `${competitor.url}/1k`
    const warm = await runWrk({ url, connections, durationS: warmupS })
    const cpu0 = cpuSeconds(competitor.entry.pid)
    const run = await runWrk({ url, connections, durationS })
    const cpu = cpuSeconds(competitor.entry.pid) - cpu0
    await stopProcess(competitor.entry, 15_000)
    const file = readdirSync(profileDir).find(name => name.endsWith('.cpuprofile'))
    if (!file) throw new Error(`${kind} wrote no profile in ${profileDir}`)
    const summary = summarize(JSON.parse(readFileSync(join(profileDir, file), 'utf8')))
    const errors = warm.socketErrors + warm.statusErrors + run.socketErrors + run.statusErrors
    results.push({ kind, file: join(profileDir, file), summary, requests: warm.requests + run.requests, rps: run.rps, perCore: run.requests / cpu, errors })
    process.stdout.write(`${NODE_KINDS[kind]}: ${Math.round(run.rps).toLocaleString('en')} req/s, ${Math.round(run.requests / cpu).toLocaleString('en')} per core, ${errors} errors; profile ${join(profileDir, file)}\n`)
  }
} finally {
  await stopAll()
}

const share = (us, total) => `${(us / total * 100).toFixed(1)} %`
process.stdout.write(`\nShares of each profile's samples (start-up, ${warmupS} s of warm-up and ${durationS} s of load at ${connections} connections):\n\n`)
process.stdout.write(table(['', ...results.map(r => NODE_KINDS[r.kind])], [
  ...KINDS.map(kind => [kind, ...results.map(r => share(r.summary.byKind.get(kind), r.summary.total))]),
  ['busy µs per request answered (start-up included)', ...results.map(r => ((r.summary.total - r.summary.idle) / r.requests).toFixed(1))],
]) + '\n')
for (const r of results) {
  process.stdout.write(`\n${NODE_KINDS[r.kind]}: the ${top} functions with the most self time\n`)
  const functions = [...r.summary.byFunction].filter(([name]) => !name.startsWith('(idle)')).sort((a, b) => b[1] - a[1]).slice(0, top)
  for (const [name, us] of functions) process.stdout.write(`${share(us, r.summary.total).padStart(7)}  ${name}\n`)
}
process.stdout.write(`\nProfiles and logs: ${dir}\n`)
