// The node (V8) flags a serving proxy process runs with. They work only on node's command line: V8
// reads them when it sets up the heap, so v8.setFlagsFromString at start-up is too late. Workers get
// them from the primary; a single process gets them from whoever starts node (the image does).

/**
 * `--no-memory-reducer`: V8's memory reducer shrinks the heap of a process that has gone idle, then
 * keeps it growing slowly for as long as the process stays busy. A proxy's old generation is small and
 * its young one churns fast, so the headroom left is less than the young generation, and V8 then runs a
 * full collection after nearly every young one. After an idle spell of half a minute, 256 KB responses
 * were served at half the rate, and at 1,000 connections p99 went from 140 ms to 700 ms. A proxy is
 * meant to stay ready for the next burst; it keeps the heap it grew instead.
 */
export const PROXY_NODE_FLAGS: readonly string[] = ['--no-memory-reducer']

/** The proxy's flags that `execArgv` (node's own arguments) lacks. */
export function missingNodeFlags (execArgv: readonly string[]): string[] {
  return PROXY_NODE_FLAGS.filter(flag => !execArgv.includes(flag))
}
