// Summarises a .cpuprofile from `node --cpu-prof`: self time by kind of work, by package or file, then
// by function, as a share of all samples and, given the number of requests served while profiling, in
// µs per request. bench/profile.mjs uses summarize() and KINDS for its side-by-side table.
//   node bench/cpu-profile-summary.mjs FILE.cpuprofile [REQUESTS] [TOP]

import { readFileSync } from 'node:fs'
import { pathToFileURL } from 'node:url'

/** The kinds of work a Node proxy's samples fall into, in the order tables show them. */
export const KINDS = [
  'the two socket writes (writev to the client, writeLatin1String to the instance)',
  'node internals (http, streams, events, timers)',
  'undici and llhttp',
  'the proxy\'s own code',
  'Fastify and the other libraries',
  'V8\'s garbage collector',
  'idle',
  'the rest: V8\'s own work ((program)) and start-up (loading modules)',
]

/** The kind of work (see KINDS) of a sample's function, by where its code is: `url` is empty for native code. */
export function kindOf (functionName, url) {
  if (!url) {
    if (['writev', 'writeLatin1String', 'writeUtf8String', 'writeBuffer'].includes(functionName)) return KINDS[0]
    if (functionName === '(garbage collector)') return KINDS[5]
    if (functionName === '(idle)') return KINDS[6]
    return KINDS[7]
  }
  if (url.startsWith('node:')) return KINDS[1]
  if (url.startsWith('wasm://') || /node_modules\/undici\//.test(url)) return KINDS[2]
  if (url.includes('node_modules/')) return KINDS[4]
  if (/\/(dist\/|bench\/(floor|peer)\.mjs)/.test(url)) return KINDS[3]
  return KINDS[7]
}

/**
 * Self time of a parsed .cpuprofile: { total, idle } in µs, and Maps of µs by package or file, by
 * function and by kind of work (see KINDS).
 */
export function summarize (profile) {
  const nodes = new Map(profile.nodes.map(n => [n.id, n]))
  const selfUs = new Map()
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
  }
  const byFunction = new Map()
  const byPackage = new Map()
  const byKind = new Map(KINDS.map(kind => [kind, 0]))
  let total = 0
  for (const [id, us] of selfUs) {
    const { functionName, url, lineNumber } = nodes.get(id).callFrame
    const where = url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*?\/(dist|bench|src)\//, '$1/')
    const fn = `${functionName || '(anonymous)'} ${where}${url ? `:${lineNumber + 1}` : ''}`
    const pkg = url.includes('node_modules/')
      ? url.replace(/^.*node_modules\/((@[^/]+\/)?[^/]+).*$/, '$1')
      : url ? where : functionName
    const kind = kindOf(functionName, url)
    byFunction.set(fn, (byFunction.get(fn) ?? 0) + us)
    byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us)
    byKind.set(kind, byKind.get(kind) + us)
    total += us
  }
  return { total, idle: byKind.get(KINDS[6]), byPackage, byFunction, byKind }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [file, requestsArg, topArg] = process.argv.slice(2)
  if (!file) {
    process.stderr.write('usage: node bench/cpu-profile-summary.mjs FILE.cpuprofile [REQUESTS] [TOP]\n')
    process.exit(2)
  }
  const requests = Number(requestsArg ?? 0)
  const top = Number(topArg ?? 30)
  const { total, idle, byPackage, byFunction, byKind } = summarize(JSON.parse(readFileSync(file, 'utf8')))
  const line = (name, us) => `${(us / total * 100).toFixed(1).padStart(5)} %${requests ? `${(us / requests).toFixed(2).padStart(8)} µs/req` : ''}  ${name}`
  const section = (title, map, limit = top) => [`\n${title}`, ...[...map].sort((a, b) => b[1] - a[1]).slice(0, limit).map(([name, us]) => line(name, us))]
  const out = [
    `${file}: ${(total / 1e6).toFixed(2)} s sampled, ${(idle / total * 100).toFixed(1)} % idle${requests ? `, ${((total - idle) / requests).toFixed(1)} µs busy per request` : ''}`,
    ...section('by kind of work (self time)', byKind, KINDS.length),
    ...section('by package or file (self time)', byPackage),
    ...section('by function (self time)', byFunction),
  ]
  process.stdout.on('error', () => {}) // piped into head
  process.stdout.write(`${out.join('\n')}\n`)
}
