// How the proxy's V8 heap grows.

/** How far past what survives a full collection the old generation may grow before the next one. */
export const HEAP_GROWING_PERCENT = 10

/**
 * The V8 flag the proxy runs with unless node's command line sets it: grow the old generation by 10 % past
 * what survives a full collection, where V8 allows up to 4×. A proxy's old generation is mostly requests in
 * flight that outlived two scavenges and die soon after, so at 1,000 connections the default growth nearly
 * doubles what the load adds to RSS. V8 reads the flag at each collection, so it takes effect at runtime.
 */
export function heapGrowthFlag (execArgv: readonly string[]): string | undefined {
  if (execArgv.some(arg => /^--heap[-_]growing[-_]percent(=|$)/.test(arg))) return undefined
  return `--heap-growing-percent=${HEAP_GROWING_PERCENT}`
}
