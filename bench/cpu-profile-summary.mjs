// Summarises a .cpuprofile from `node --cpu-prof`: self time by package or file, then by function,
// as a share of all samples and, given the number of requests served while profiling, in µs per request.
//   node bench/cpu-profile-summary.mjs FILE.cpuprofile [REQUESTS] [TOP]

import { readFileSync } from 'node:fs'

const [file, requestsArg, topArg] = process.argv.slice(2)
if (!file) {
  process.stderr.write('usage: node bench/cpu-profile-summary.mjs FILE.cpuprofile [REQUESTS] [TOP]\n')
  process.exit(2)
}
const profile = JSON.parse(readFileSync(file, 'utf8'))
const requests = Number(requestsArg ?? 0)
const top = Number(topArg ?? 30)
const nodes = new Map(profile.nodes.map(n => [n.id, n]))

const selfUs = new Map()
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]
  selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
}

const byFunction = new Map()
const byPackage = new Map()
let total = 0
for (const [id, us] of selfUs) {
  const { functionName, url, lineNumber } = nodes.get(id).callFrame
  const where = url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*?\/(dist|bench|src)\//, '$1/')
  const fn = `${functionName || '(anonymous)'} ${where}${url ? `:${lineNumber + 1}` : ''}`
  const pkg = url.includes('node_modules/')
    ? url.replace(/^.*node_modules\/((@[^/]+\/)?[^/]+).*$/, '$1')
    : url ? where : functionName
  byFunction.set(fn, (byFunction.get(fn) ?? 0) + us)
  byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us)
  total += us
}

const idle = [...selfUs].filter(([id]) => nodes.get(id).callFrame.functionName === '(idle)').reduce((s, [, us]) => s + us, 0)
const line = (name, us) => `${(us / total * 100).toFixed(1).padStart(5)} %${requests ? `${(us / requests).toFixed(2).padStart(8)} µs/req` : ''}  ${name}`
const section = (title, map) => [`\n${title}`, ...[...map].sort((a, b) => b[1] - a[1]).slice(0, top).map(([name, us]) => line(name, us))]
const out = [
  `${file}: ${(total / 1e6).toFixed(2)} s sampled, ${(idle / total * 100).toFixed(1)} % idle${requests ? `, ${((total - idle) / requests).toFixed(1)} µs busy per request` : ''}`,
  ...section('by package or file (self time)', byPackage),
  ...section('by function (self time)', byFunction),
]
process.stdout.on('error', () => {}) // piped into head
process.stdout.write(`${out.join('\n')}\n`)
