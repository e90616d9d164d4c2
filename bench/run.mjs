// The benchmark: fleetgate side by side with HAProxy, NGINX, the Node peer (fastify + @fastify/reply-from),
// the Node floor (node:http + undici, nothing else) and a direct connection, then fleetgate's own failover
// and discovery figures. Prints every table and writes bench/results/<date>.md (or <date>-<commit>.md
// beside an earlier run). Start it with `npm run bench`.
//   node bench/run.mjs [--quick] [--repeats N] [--duration S] [--warmup S] [--backend nginx|node]
//                      [--scenarios ID,...] [--skip throughput,workers,failover,discovery]
//                      [--fleetgate-args "ARGS"] [--changes N] [--scale N,N] [--nice=N] [--out FILE]

import { spawnSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { lastOfEach, LOAD_CPU, PROXY_CPU, PROXY_NODE_FLAGS, ROOT, startBackend } from './lib/competitors.mjs'
import { convergence, resyncCost, scale, startBenchZooKeeper } from './lib/discovery.mjs'
import { FAILOVER_AGENT, failover } from './lib/failover.mjs'
import { killAllSync, loadAverage, reniceAllThreads, stopAll, stopProcess } from './lib/proc.mjs'
import { throughputTable } from './lib/report.mjs'
import { max, median, num, percentile, table } from './lib/stats.mjs'
import { runScenario, SCENARIOS } from './lib/throughput.mjs'

const { values: opts } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    repeats: { type: 'string' },
    duration: { type: 'string' },
    warmup: { type: 'string' },
    backend: { type: 'string', default: 'nginx' },
    scenarios: { type: 'string' },
    skip: { type: 'string', default: '' },
    'fleetgate-args': { type: 'string', default: '' },
    changes: { type: 'string' },
    scale: { type: 'string' },
    out: { type: 'string' },
    nice: { type: 'string' },
    help: { type: 'boolean', short: 'h', default: false },
  },
})
if (opts.help) {
  process.stdout.write(readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(0, 7).join('\n') + '\n')
  process.exit(0)
}

const quick = opts.quick
const config = {
  repeats: Number(opts.repeats ?? (quick ? 1 : 3)),
  durationS: Number(opts.duration ?? (quick ? 3 : 8)),
  warmupS: Number(opts.warmup ?? (quick ? 1 : 2)),
  backend: opts.backend,
  changes: Number(opts.changes ?? (quick ? 20 : 100)),
  sizes: (opts.scale ?? '1000,10000').split(',').map(Number),
  skip: new Set(opts.skip.split(',').filter(Boolean)),
  fleetgateArgs: opts['fleetgate-args'].split(/\s+/).filter(Boolean),
  nice: opts.nice === undefined ? undefined : Number(opts.nice),
}
if (config.nice !== undefined && !Number.isInteger(config.nice)) throw new Error(`--nice must be an integer, not ${opts.nice}`)
const scenarios = opts.scenarios ? SCENARIOS.filter(s => opts.scenarios.split(',').includes(s.id)) : SCENARIOS
if (!['nginx', 'node'].includes(config.backend)) throw new Error(`--backend must be nginx or node, not ${config.backend}`)

const out = []
const log = line => process.stdout.write(`${line}\n`)
/** A section of the results file, echoed to stdout. */
const emit = text => {
  out.push(text)
  log(`\n${text}`)
}

const dir = mkdtempSync(join(tmpdir(), 'fleetgate-bench-'))
let cleaned = false
/** The ZooKeeper of the failover and discovery figures while it runs: a Ctrl-C stops it and removes its data too. */
let benchZk
/** The session's autogroup niceness before --nice changed it; restored at exit (the shell shares it). */
let autogroupBefore
function raiseAutogroup (niceness) {
  try {
    autogroupBefore = /nice (-?\d+)/.exec(readFileSync('/proc/self/autogroup', 'utf8'))?.[1]
    writeFileSync('/proc/self/autogroup', String(niceness))
  } catch {}
}
function restoreAutogroup () {
  if (autogroupBefore === undefined) return
  try { writeFileSync('/proc/self/autogroup', autogroupBefore) } catch {}
  autogroupBefore = undefined
}

async function cleanup () {
  if (cleaned) return
  cleaned = true
  restoreAutogroup()
  await benchZk?.close().catch(() => {})
  await stopAll()
  rmSync(dir, { recursive: true, force: true })
}
process.on('exit', () => {
  restoreAutogroup()
  killAllSync()
  if (!cleaned) rmSync(dir, { recursive: true, force: true })
})
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    log(`\n${signal}: stopping everything the benchmark started`)
    cleanup().finally(() => process.exit(130))
  })
}

/** Runs a short command; its stdout and stderr together (`nginx -v` answers on stderr). */
function sh (command, args) {
  const r = spawnSync(command, args, { encoding: 'utf8' })
  if (r.error) return `(${command}: ${r.error.message})`
  return `${r.stdout ?? ''}${r.stderr ?? ''}`.trim()
}

function machine () {
  const gitCommit = sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])
  const dirty = sh('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src']) !== ''
  return {
    nproc: cpus().length,
    cpu: cpus()[0]?.model ?? 'unknown',
    kernel: sh('uname', ['-r']),
    node: process.version,
    haproxy: sh('haproxy', ['-v']).split('\n')[0],
    nginx: sh('nginx', ['-v']),
    wrk: sh('wrk', ['-v']).split('\n')[0],
    fleetgate: `${gitCommit}${dirty ? ' (src/ has uncommitted changes)' : ''}`,
  }
}

/** `--workers` exists once fleetgate can serve on several cores; the harness then pins it to one for the main tables. */
function fleetgateHasWorkers () {
  return /--workers\b/.test(sh(process.execPath, [join(ROOT, 'dist', 'cli.js'), 'help', 'proxy']))
}

async function main () {
  // The harness's own work (wrk's parent, the discovery load loops) belongs on the load core.
  sh('taskset', ['-a', '-cp', LOAD_CPU, String(process.pid)])
  // On a shared machine, --nice=-10 (root) gives everything measured priority over other people's work;
  // whatever the harness starts inherits it. With autogroup scheduling (sched_autogroup_enabled=1), nice
  // only ranks tasks within one session, so the session's autogroup gets the same niceness.
  if (config.nice !== undefined) {
    reniceAllThreads(process.pid, config.nice)
    raiseAutogroup(config.nice)
  }
  const startedAt = new Date()
  const info = machine()
  const loadAtStart = loadAverage()
  const workers = fleetgateHasWorkers()
  const fleetgateArgs = lastOfEach([...(workers ? ['--workers', '1'] : []), ...config.fleetgateArgs])
  log(`fleetgate benchmark: ${config.repeats} repeat(s) of ${config.durationS} s (+${config.warmupS} s warm-up), ${config.backend} backends, work dir ${dir}`)

  const specs = [
    { id: 'direct', kind: 'direct' },
    { id: 'haproxy', kind: 'haproxy' },
    { id: 'nginx', kind: 'nginx' },
    { id: 'peer', kind: 'peer' },
    // The floor is a minimal proxy on fleetgate's engine: it runs with the node flags fleetgate runs with.
    { id: 'floor', kind: 'floor', nodeArgs: [...PROXY_NODE_FLAGS] },
    { id: 'fleetgate', kind: 'fleetgate', fleetgateArgs },
  ]
  const labels = {
    direct: 'direct to one backend',
    haproxy: 'HAProxy (nbthread 1)',
    nginx: 'NGINX (1 worker)',
    peer: 'Node peer (fastify + reply-from)',
    floor: 'Node floor (node:http + undici, nothing else)',
    fleetgate: `**fleetgate**${fleetgateArgs.length ? ` \`${fleetgateArgs.join(' ')}\`` : ''}`,
  }
  const sections = { throughput: [], workers: undefined, failover: undefined, convergence: undefined, scale: undefined, resync: undefined }

  const backends = []
  if (!config.skip.has('throughput') || (workers && !config.skip.has('workers')) || !config.skip.has('discovery')) {
    for (const name of ['a', 'b', 'c', 'd']) backends.push(await startBackend({ kind: config.backend, dir, name }))
  }
  const three = backends.slice(0, 3)
  const runOptions = { dir, backends: three, repeats: config.repeats, durationS: config.durationS, warmupS: config.warmupS, log }

  if (!config.skip.has('throughput')) {
    for (const scenario of scenarios) {
      const result = await runScenario(scenario, specs, runOptions)
      sections.throughput.push(result)
      emit(throughputTable(result, labels))
    }
  }

  if (workers && !config.skip.has('workers')) {
    const scenario = SCENARIOS[0]
    const workerSpecs = [
      { id: 'fleetgate-w1', kind: 'fleetgate', fleetgateArgs: lastOfEach(['--workers', '1', ...config.fleetgateArgs]) },
      { id: 'fleetgate-w2', kind: 'fleetgate', cpus: `${PROXY_CPU},${LOAD_CPU}`, fleetgateArgs: lastOfEach(['--workers', '2', ...config.fleetgateArgs]) },
    ]
    const result = await runScenario(scenario, workerSpecs, runOptions)
    sections.workers = result
    emit(workersSection(result))
  } else if (!workers) {
    emit('### fleetgate on 1 and 2 workers\n\nSkipped: `fleetgate help proxy` lists no `--workers` flag yet.\n')
  }

  // Failover and the discovery figures run on one real ZooKeeper.
  const zk = !config.skip.has('failover') || !config.skip.has('discovery') ? benchZk = await startBenchZooKeeper() : undefined
  try {
    if (!config.skip.has('failover')) {
      sections.failover = await failover({ dir, zk, backendKind: config.backend, repeats: config.repeats, durationS: Math.max(config.durationS, 5), warmupS: config.warmupS, fleetgateArgs, log, connections: 50 })
      emit(failoverSection(sections.failover, 50))
    }
    if (!config.skip.has('discovery')) {
      sections.convergence = await convergence({ zk, dir, backends, changes: config.changes, fleetgateArgs, log })
      emit(convergenceSection(sections.convergence, fleetgateArgs))
      if (workers) {
        // The default deployment: the primary holds the session and hands memberships to the workers.
        const args = lastOfEach(['--workers', '2', ...config.fleetgateArgs])
        sections.convergenceWorkers = await convergence({ zk, dir, backends, changes: config.changes, fleetgateArgs: args, log, id: 'fleetgate-zk-workers' })
        emit(convergenceSection(sections.convergenceWorkers, args))
      }
      sections.scale = await scale({ zk, dir, backends, sizes: config.sizes, samples: quick ? 2 : 5, fleetgateArgs, log })
      sections.resync = await resyncCost({ zk, dir, backends, size: max(config.sizes), fleetgateArgs })
      emit(scaleSection(sections.scale, sections.resync))
    }
  } finally {
    benchZk = undefined
    await zk?.close()
  }

  for (const backend of backends) await stopProcess(backend.entry)
  const loadAtEnd = loadAverage()
  emit(targetsSection(sections))

  const head = [
    `# fleetgate benchmark, ${startedAt.toISOString().slice(0, 10)}${quick ? ' (quick)' : ''}`,
    '',
    `Made by \`npm run bench${process.argv.length > 2 ? ` -- ${process.argv.slice(2).join(' ')}` : ''}\` (bench/run.mjs), started ${startedAt.toISOString()}, took ${Math.round((Date.now() - startedAt) / 60000)} min.`,
    '',
    table(['machine', ''], [
      ['cores (nproc)', String(info.nproc)],
      ['CPU', info.cpu],
      ['kernel', info.kernel],
      ['node', info.node],
      ['HAProxy', info.haproxy],
      ['NGINX', info.nginx],
      ['wrk', info.wrk],
      ['fleetgate commit', info.fleetgate],
      ['load average (1 min) at start / end', `${loadAtStart} / ${loadAtEnd}`],
      ['niceness of everything measured', config.nice === undefined ? 'unchanged (0)' : String(config.nice)],
    ]),
    '',
    `Method: the proxy under test runs pinned to core ${PROXY_CPU} (\`taskset -c ${PROXY_CPU}\`), single-process (fleetgate as`,
    `its image starts it, \`node ${PROXY_NODE_FLAGS.join(' ')} dist/cli.js proxy\`; the Node floor with the same node flags; the Node peer with node's defaults);`,
    `wrk (\`-t1\`), the ${config.backend === 'nginx' ? 'NGINX (one process each)' : 'node:http'} backends and this harness share core ${LOAD_CPU}. Every competitor is started fresh per`,
    `scenario; each row is ${config.repeats} run(s) of ${config.durationS} s after a ${config.warmupS} s warm-up, the order of competitors rotating`,
    'between rounds. Cells show the median and (min–max). Ratios are of median req/s. "req/s per proxy core" is req/s',
    'divided by the CPU the proxy used (utime+stime from /proc/<pid>/stat over the run), which the next but one',
    'column splits into user and kernel time per request answered. Peak RSS is VmHWM, reset before each run through',
    '/proc/<pid>/clear_refs, the highest of the runs. Errors are wrk socket errors plus answers >= 400, added up over',
    'the runs. The last column is how busy the load core was (median; in brackets the backends\' share) and the most',
    `CPU that processes other than the proxy took on core ${PROXY_CPU} in any run: other people's work on a shared machine,`,
    'i.e. the noise.',
    '',
  ]
  const file = opts.out ?? resultsFile(startedAt.toISOString().slice(0, 10))
  mkdirSync(join(file, '..'), { recursive: true })
  writeFileSync(file, `${head.join('\n')}\n${out.join('\n')}\n`)
  log(`\nload average at start ${loadAtStart}, at end ${loadAtEnd}; results written to ${file}`)
}

/**
 * bench/results/<date>.md; when a run of that day is there already (perhaps the one a README quotes),
 * <date>-<commit>.md, then -2, -3: a second run never overwrites a first. Quick runs share one file.
 */
function resultsFile (date) {
  const dir = join(ROOT, 'bench', 'results')
  if (quick) return join(dir, `${date}-quick.md`)
  const commit = sh('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])
  let file = join(dir, `${date}.md`)
  for (let n = 1; existsSync(file); n++) file = join(dir, `${date}-${commit}${n > 1 ? `-${n}` : ''}.md`)
  return file
}

function workersSection ({ runs }) {
  const w1 = median(runs['fleetgate-w1'].map(r => r.rps))
  const w2 = median(runs['fleetgate-w2'].map(r => r.rps))
  const rows = Object.entries(runs).map(([id, rs]) => [
    id === 'fleetgate-w1' ? `\`--workers 1\` (core ${PROXY_CPU})` : `\`--workers 2\` (cores ${PROXY_CPU},${LOAD_CPU}, shared with wrk)`,
    num(median(rs.map(r => r.rps))), median(rs.map(r => r.p99Ms)).toFixed(2),
    (median(rs.map(r => r.proxyCores)) * 100).toFixed(0), num(median(rs.map(r => r.rpsPerCore))), (max(rs.map(r => r.peakRss)) / 1048576).toFixed(0),
    String(rs.reduce((s, r) => s + r.errorsTotal, 0)),
  ])
  return `### fleetgate on 1 and 2 workers (1 KB GET, 50 connections)\n\nIndicative only: with 2 workers fleetgate shares core ${LOAD_CPU} with wrk and the backends, and on a busy machine the 1-worker row loses more to other people's work on core ${PROXY_CPU} (compare req/s per core used). Scaling 1 → 2 workers: **${(w2 / w1).toFixed(2)}×**.\n\n${table(['', 'req/s', 'p99 ms', 'CPU % (all processes)', 'req/s per core used', 'peak RSS MB (sum)', 'errors'], rows)}\n`
}

function failoverSection (results, connections) {
  const rows = results.map((r, i) => [
    String(i + 1), num(r.killed.requests), String(r.killed.socketErrors + r.killed.statusErrors),
    Object.entries(r.proxyCounters.byStatus).filter(([code]) => code !== '499').map(([code, n]) => `${n}× ${code}`).join(', ') || '—',
    Object.entries(r.proxyCounters.retriesByReason).map(([reason, n]) => `${n} ${reason.replaceAll('_', ' ')}`).join(', ') || '0',
    r.baseline.p99Ms.toFixed(2), r.killed.p99Ms.toFixed(2), (r.killed.p99Ms - r.baseline.p99Ms).toFixed(2), r.killed.maxMs.toFixed(1),
    r.leftAfterS.toFixed(2),
  ])
  const failed = results.reduce((s, r) => s + r.killed.socketErrors + r.killed.statusErrors, 0)
  const added = median(results.map(r => r.killed.p99Ms - r.baseline.p99Ms))
  return `### Failover: one of 3 instances SIGKILLed under load (fleetgate on ZooKeeper, 1 KB GET, ${connections} connections)

Each instance is registered in ZooKeeper by its own \`fleetgate agent\` (health check every ${FAILOVER_AGENT.healthIntervalMs} ms, \`--fall ${FAILOVER_AGENT.fall}\`), and fleetgate follows that membership. The kill (of the instance, not its agent, which fails its checks and deregisters it) comes ${(results[0]?.killedAtS ?? 0).toFixed(1)} s into a ${results[0] ? Math.round(results[0].killed.seconds) : '?'} s wrk run; the baseline is the same run just before, without a kill, on a fresh fleetgate, fresh instances and fresh agents each round. Until the deregistration arrives, fleetgate's retries and ejection carry the requests; the last column is when it arrived (from fleetgate's \`/status\`). Failed requests (wrk socket errors and answers >= 400) in all: **${failed}**; added p99 (median): **${added.toFixed(2)} ms**. The status codes and retries are fleetgate's own counters (\`fleetgate_requests_total\`, \`fleetgate_retries_total\`; 499s, requests wrk abandoned when it stopped, are left out).

${table(['round', 'requests', 'failed', 'fleetgate answered', 'retries', 'p99 ms baseline', 'p99 ms with kill', 'added p99 ms', 'max ms with kill', 'out of the membership after s'], rows)}
`
}

function convergenceSection (c, args) {
  const row = (label, v, published) => [label, String(v.length), percentile(v, 50).toFixed(2), percentile(v, 99).toFixed(2), max(v).toFixed(2), `${percentile(published, 50).toFixed(0)} / ${percentile(published, 99).toFixed(0)}`]
  return `### Discovery: convergence on a real ZooKeeper${args.length ? ` (fleetgate \`${args.join(' ')}\`)` : ''}\n\nA fourth instance's znode is created and deleted again and again (${c.created.length} creates and ${c.deleted.length} deletes measured) while 8 keep-alive loops send GET /1k through fleetgate (3 other instances registered). Create: from the create call to the first answer from the new instance. Delete: from the delete call to the last answer from the removed instance among requests sent after the call (0 if none). Answer end times make both upper bounds; both include ZooKeeper's own acknowledgement of the write (median ${percentile(c.writes, 50).toFixed(2)} ms, p99 ${percentile(c.writes, 99).toFixed(2)} ms). ${c.timeouts} change(s) timed out (2 s), ${c.errors} non-200 answer(s). Startup with 3 instances: spawn to first proxied answer ${num(c.readyMs)} ms. The last column is the time to the proxy's log line for the new membership (whole ms; the rest is the proxy routing the next requests).\n\n${table(['change', 'samples', 'p50 ms', 'p99 ms', 'max ms', 'of which to fleetgate\'s publish, p50 / p99 ms'], [row('create → first request routed to it', c.created, c.createPublished), row('delete → last request routed to it', c.deleted, c.deletePublished)])}\n`
}

function scaleSection (results, resync) {
  const rows = results.map(r => {
    const creates = r.changes.filter(c => c.kind === 'create')
    const deletes = r.changes.filter(c => c.kind === 'delete')
    const fmt = (xs, key, d = 0) => xs.length === 0 ? '—' : `${median(xs.map(x => x[key])).toFixed(d)} (${Math.min(...xs.map(x => x[key])).toFixed(d)}–${Math.max(...xs.map(x => x[key])).toFixed(d)})`
    return [num(r.size), num(r.known), num(r.firstMembershipMs), num(r.readyMs), (r.rssAfterReady / 1048576).toFixed(0), (r.peakRss / 1048576).toFixed(0),
      fmt(creates, 'ms'), fmt(creates, 'ackMs'), fmt(creates, 'reads'), fmt(deletes, 'ms'), fmt(deletes, 'ackMs'), fmt(deletes, 'reads'), `${num(r.metricsMs)} ms, ${num(r.metricsBytes / 1024)} KB`, `${num(r.statusMs)} ms, ${num(r.statusBytes / 1024)} KB`]
  })
  const resyncLine = resync ? `\n\nA periodic full resync (\`--resync-interval-ms\`, 30 s by default) at ${num(resync.size)} instances cost about **${num(resync.packetsPerResync)} ZooKeeper requests** each (measured with a 4 s period over 3 periods).` : ''
  return `### Discovery: scale on a real ZooKeeper\n\nInstances registered as Curator JSON before fleetgate starts (nothing listens on their ports; no traffic). First membership: from spawning \`fleetgate proxy\` to its log line for the first published membership (node's own startup included), and to \`/readyz\` answering 200. One change: from the create/delete call to the published membership's log timestamp (the proxy runs with \`--log-level info\` here, so the change is observed without polling the proxy), median (min–max) of ${(results[0]?.changes.length ?? 0) / 2} samples each, and of it the time ZooKeeper took to acknowledge the write (it logs the write to disk first; the watch fires once it is applied); its ZooKeeper requests are the change in \`mntr\`'s zk_packets_received less the harness's own 2 requests (a ping can add 1). The last columns are one \`/metrics\` scrape and one \`/status\` (JSON, timed first) after the changes.${resyncLine}\n\n${table(['instances', 'in first membership', 'first membership ms', '/readyz ms', 'RSS MB at ready', 'peak RSS MB', 'create: ms', 'of which ZK ack ms', 'create: ZK requests', 'delete: ms', 'of which ZK ack ms', 'delete: ZK requests', '/metrics scrape', '/status'], rows)}\n`
}

/** The floor's figure for a target, formatted; '—' when the run did not measure it. */
function floorFigure (value, format) {
  return Number.isFinite(value) ? format(value) : '—'
}

/** The performance targets, each checked against this run's figures. */
function targetsSection (s) {
  const rows = []
  const get = id => s.throughput.find(t => t.scenario.id === id)
  const verdict = ok => (ok === undefined ? 'not measured' : ok ? 'met' : '**not met**')
  /** A ratio to two places, or to as many more as it takes not to round it onto the other side of its target. */
  const ratio = (x, meets) => {
    let digits = 2
    while (digits < 6 && meets(Number(x.toFixed(digits))) !== meets(x)) digits++
    return x.toFixed(digits)
  }
  const perCore = (t, id) => median((t?.runs[id] ?? []).map(r => r.rpsPerCore))
  const p99 = (t, id) => median((t?.runs[id] ?? []).map(r => r.p99Ms))
  const g1k = get('get-1k')
  if (g1k) {
    const fg = perCore(g1k, 'fleetgate')
    const peerRatio = fg / perCore(g1k, 'peer')
    const haRatio = fg / perCore(g1k, 'haproxy')
    const floorHa = perCore(g1k, 'floor') / perCore(g1k, 'haproxy')
    rows.push(['req/s per core ≥ 1.5× the Node peer (1 KB)', `${ratio(peerRatio, x => x >= 1.5)}×`, verdict(peerRatio >= 1.5)])
    rows.push(['req/s per core ≥ 0.5× HAProxy (1 KB)', `${ratio(haRatio, x => x >= 0.5)}×`, verdict(haRatio >= 0.5), floorFigure(floorHa, x => `${x.toFixed(2)}× HAProxy`)])
    const p99Ratio = p99(g1k, 'fleetgate') / p99(g1k, 'haproxy')
    const floorP99 = p99(g1k, 'floor')
    rows.push(['p99 at 50 connections ≤ 2× HAProxy', `${p99(g1k, 'fleetgate').toFixed(2)} ms vs ${p99(g1k, 'haproxy').toFixed(2)} ms (${ratio(p99Ratio, x => x <= 2)}×)`, verdict(p99Ratio <= 2),
      floorFigure(floorP99, x => `${x.toFixed(2)} ms (${(x / p99(g1k, 'haproxy')).toFixed(2)}×)`)])
  }
  for (const [c, label] of [[s.convergence, ''], [s.convergenceWorkers, ', --workers 2']]) {
    if (!c) continue
    const p = percentile([...c.created, ...c.deleted], 99)
    rows.push([`convergence p99 ≤ 50 ms${label}`, `${p.toFixed(2)} ms (creates and deletes together)`, verdict(p <= 50 && c.timeouts === 0)])
  }
  const big = s.scale?.find(r => r.size === 10_000)
  if (big) {
    const slowest = big.changes.reduce((a, b) => (b.ms > a.ms ? b : a))
    const ms = slowest.ms
    // The ZooKeeper requests of the costlier kind of change, by that kind's median: a create reads the
    // children list and the new child, a delete only the list.
    const costliest = (changes) => {
      const medians = ['create', 'delete'].map(kind => median(changes.filter(c => c.kind === kind).map(c => c.reads))).filter(Number.isFinite)
      return medians.length > 0 ? Math.max(...medians) : NaN
    }
    const reads = costliest(big.changes)
    const small = s.scale.find(r => r.size === 1000)
    const smallReads = small ? costliest(small.changes) : NaN
    rows.push(['10,000 instances: first membership ≤ 5 s', `${num(big.firstMembershipMs)} ms from spawn (${big.known} instances)`, verdict(big.firstMembershipMs <= 5000 && big.known === 10_000)])
    rows.push(['10,000 instances: one change ≤ 50 ms', `${ms.toFixed(1)} ms (slowest sample, from the call; ZooKeeper's acknowledgement took ${slowest.ackMs} ms of it)`, verdict(ms <= 50)])
    rows.push(['10,000 instances: one change costs O(1) reads', `${reads} ZooKeeper requests at most (the median of creates or of deletes${Number.isFinite(smallReads) ? `; ${smallReads} at 1,000` : ''})`, verdict(reads <= 4 && (!Number.isFinite(smallReads) || reads <= smallReads + 1))])
  }
  if (s.failover) {
    const failed = s.failover.reduce((sum, r) => sum + r.killed.socketErrors + r.killed.statusErrors, 0)
    rows.push(['zero failed requests in failover', String(failed), verdict(failed === 0)])
  }
  const c1000 = get('get-1k-c1000')
  if (c1000) {
    const rss = max(c1000.runs.fleetgate.map(r => r.peakRss)) / 1048576
    const floorRss = max((c1000.runs.floor ?? []).map(r => r.peakRss)) / 1048576
    rows.push(['RSS ≤ 120 MB at 1,000 connections', `${rss.toFixed(0)} MB peak`, verdict(rss <= 120), floorFigure(floorRss, x => `${x.toFixed(0)} MB peak`)])
  }
  if (s.workers) {
    const w1 = median(s.workers.runs['fleetgate-w1'].map(r => r.rps))
    const w2 = median(s.workers.runs['fleetgate-w2'].map(r => r.rps))
    rows.push(['scaling 1 → 2 workers (indicative)', `${(w2 / w1).toFixed(2)}×`, 'reported'])
  }
  return `### Targets, from this run\n\nThe last column is the same figure for the Node floor (node:http and undici with nothing else, \`bench/floor.mjs\`), where it applies: how far a minimal proxy on the same engine got on this host in this run.\n\n${table(['target', 'measured', '', 'the Node floor'], rows.map(row => row.length === 3 ? [...row, '—'] : row))}\n`
}

main().then(cleanup, async err => {
  process.stderr.write(`bench failed: ${err.stack ?? err}\n`)
  await cleanup()
  process.exitCode = 1
})
