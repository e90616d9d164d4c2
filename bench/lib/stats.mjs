// Small statistics and number formatting for the result tables.

export function median (values) {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (v.length === 0) return NaN
  const mid = Math.floor(v.length / 2)
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2
}

/** Nearest-rank percentile, q in [0, 100]. */
export function percentile (values, q) {
  const v = values.filter(Number.isFinite).sort((a, b) => a - b)
  if (v.length === 0) return NaN
  return v[Math.min(v.length - 1, Math.max(0, Math.ceil((q / 100) * v.length) - 1))]
}

export const min = values => Math.min(...values.filter(Number.isFinite))
export const max = values => Math.max(...values.filter(Number.isFinite))

/** 12345.6 -> "12,346"; digits after the point on request. */
export function num (value, digits = 0) {
  if (!Number.isFinite(value)) return '—'
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
}

/** Median with the spread of all runs: "12,346 (12,001–12,700)"; the spread is left out for one run. */
export function spread (values, digits = 0) {
  const finite = values.filter(Number.isFinite)
  if (finite.length === 0) return '—'
  const m = num(median(finite), digits)
  return finite.length === 1 ? m : `${m} (${num(min(finite), digits)}–${num(max(finite), digits)})`
}

export function ratio (a, b) {
  return Number.isFinite(a) && Number.isFinite(b) && b > 0 ? (a / b).toFixed(2) : '—'
}

export function mb (bytes) {
  return Number.isFinite(bytes) && bytes > 0 ? (bytes / 1048576).toFixed(0) : '—'
}

/** A GitHub-flavoured markdown table. */
export function table (header, rows) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`]
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`)
  return lines.join('\n')
}
