// The node (V8) flags a serving proxy process runs with, given on node's command line. V8 reads
// `--memory-reducer` when it sets up the heap, so v8.setFlagsFromString at start-up is too late for it;
// `--allocation-site-pretenuring` could be set at start-up, but is given like the other, so that one list
// says what a proxy runs with. Workers get them from the primary; a single process gets them from whoever
// starts node (the image does).

/**
 * `--no-memory-reducer`: V8's memory reducer shrinks the heap of a process that has gone idle, then
 * keeps it growing slowly for as long as the process stays busy. With a proxy's small old generation
 * under a fast young one, V8 then ran a full collection after nearly every young one: after half a
 * minute idle, 256 KB responses were served at half the rate. A proxy is meant to stay ready for the
 * next burst, so it keeps the heap it grew instead.
 *
 * `--no-allocation-site-pretenuring`: when most objects made at one place in the code outlive a young
 * collection, V8 makes that place's next objects in the old generation straight away. Under load a
 * request's objects often outlive one young collection (while a 64 KB body streams, or behind 1,000
 * connections), but die soon after; made in the old generation, they wait for a full collection instead.
 * Without it, 64 KB uploads were served 9 % faster per core, at a peak of 151–161 MB instead of 183–188.
 */
export const PROXY_NODE_FLAGS: readonly string[] = ['--no-memory-reducer', '--no-allocation-site-pretenuring']

/**
 * The proxy's flags whose option `execArgv` (node's own arguments) does not set either way: an operator
 * who starts node with `--memory-reducer` or `--allocation-site-pretenuring` keeps it.
 */
export function missingNodeFlags (execArgv: readonly string[]): string[] {
  const given = new Set(execArgv.map(optionName))
  return PROXY_NODE_FLAGS.filter(flag => !given.has(optionName(flag)))
}

/**
 * `--no-memory_reducer` → `memory-reducer`: V8 reads `_` as `-`, and `--no-x` or `--nox` as x turned off.
 * (Only the proxy's own options are looked up, so a name that merely starts with "no" does no harm.)
 */
function optionName (arg: string): string {
  return arg.replace(/^--?/, '').split('=')[0]!.replaceAll('_', '-').replace(/^no-?/, '')
}
