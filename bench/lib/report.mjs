// Turns measured runs into the markdown tables of bench/results/<date>.md.

import { max, mb, median, num, ratio, spread, table } from './stats.mjs'

const pick = (runs, key) => runs.map(r => r[key])

/** One throughput table: a row per competitor, medians with their spread, ratios of medians. */
export function throughputTable ({ scenario, runs }, labels) {
  const med = id => median(pick(runs[id] ?? [], 'rps'))
  const direct = med('direct')
  const haproxy = med('haproxy')
  const peer = med('peer')
  const rows = Object.entries(runs).map(([id, rs]) => {
    const rps = med(id)
    const errors = rs.reduce((sum, r) => sum + r.errorsTotal, 0)
    const kinds = ['connect', 'read', 'write', 'timeout', 'status']
      .map(k => [k, rs.reduce((sum, r) => sum + r.errors[k], 0)]).filter(([, n]) => n > 0)
    return [
      labels[id] ?? id,
      spread(pick(rs, 'rps')),
      spread(pick(rs, 'p50Ms'), 2),
      spread(pick(rs, 'p99Ms'), 2),
      id === 'direct' ? '1.00' : ratio(rps, direct),
      ratio(rps, haproxy),
      ratio(rps, peer),
      spread(pick(rs, 'rpsPerCore')),
      spread(pick(rs, 'proxyCores').map(c => c * 100)),
      id === 'direct' ? '—' : `${num(median(pick(rs, 'userUsPerRequest')), 1)} / ${num(median(pick(rs, 'kernelUsPerRequest')), 1)}`,
      mb(max(pick(rs, 'peakRss'))),
      errors === 0 ? '0' : `${num(errors)} (${kinds.map(([k, n]) => `${k} ${num(n)}`).join(', ')})`,
      `${(median(pick(rs, 'loadCoreBusy')) * 100).toFixed(0)} (${(median(pick(rs, 'backendCores')) * 100).toFixed(0)}) / ${(max(pick(rs, 'foreignOnProxyCore')) * 100).toFixed(0)}`,
    ]
  })
  const header = ['', 'req/s', 'p50 ms', 'p99 ms', '÷ direct', '÷ HAProxy', '÷ Node peer', 'req/s per proxy core',
    'proxy CPU %', 'proxy CPU µs per request: user / kernel', 'peak RSS MB', 'errors', 'load core % (backends) / other load on proxy core %']
  return `### ${scenario.title}\n\n${table(header, rows)}\n`
}
