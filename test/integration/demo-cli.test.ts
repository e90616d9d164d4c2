// The demo's command line: a bad flag stops it before anything starts, with exit code 2 and a message
// naming the flag, the value given and what is expected, as fleetgate's own commands do.

import { spawn } from 'node:child_process'
import { rm } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { isRunning, track } from '../helpers/reaper.ts'

const DEMO = fileURLToPath(new URL('../../dist/demo.js', import.meta.url))

/**
 * Runs the demo with `args`; one still running after `waitMs` (ZooKeeper, agents, proxy started) is
 * stopped with SIGINT.
 */
async function demo (args: string[], { env = process.env, waitMs = 10_000 } = {}): Promise<{ code: number | null, stdout: string, stderr: string, started: boolean }> {
  const child = spawn(process.execPath, [DEMO, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env })
  track(child)
  let stdout = ''
  let stderr = ''
  child.stdout!.setEncoding('utf8').on('data', (s: string) => { stdout += s })
  child.stderr!.setEncoding('utf8').on('data', (s: string) => { stderr += s })
  const exited = new Promise<number | null>(resolve => child.once('exit', code => resolve(code)))
  const early = await Promise.race([exited, new Promise<'running'>(resolve => setTimeout(() => resolve('running'), waitMs))])
  if (early !== 'running') return { code: early, stdout, stderr, started: false }
  if (isRunning(child)) child.kill('SIGINT')
  return { code: await exited, stdout, stderr, started: true }
}

t.test('demo: a bad --port or --instances exits 2, naming the flag, the value and what is expected', async t => {
  const cases: Array<[string[], RegExp]> = [
    [['--port', 'abc'], /--port = "abc": expected a port from 0 to 65535 \(0: any free port\)/],
    // JavaScript reads these as numbers: "" as 0 (any free port), "1e3" as 1000.
    [['--port', ''], /--port = "": expected a port from 0 to 65535/],
    [['--port', '1e3'], /--port = "1e3": expected a port from 0 to 65535/],
    [['--port', '65536'], /--port = "65536": expected a port from 0 to 65535/],
    [['--instances', '10'], /--instances = "10": expected an integer from 1 to 9/],
    [['--instances', '0x2'], /--instances = "0x2": expected an integer from 1 to 9/],
  ]
  for (const [args, message] of cases) {
    const run = await demo(args)
    t.notOk(run.started, `${args.join(' ')}: stops before starting anything`)
    t.equal(run.code, 2, `${args.join(' ')}: exit code 2`)
    t.match(run.stderr, message, `${args.join(' ')}: ${run.stderr}`)
    t.match(run.stderr, /FLEETGATE_ERR_CONFIG_INVALID/)
  }
})

t.test('demo: an unknown flag or a stray argument is a usage error, exit code 2', async t => {
  for (const args of [['--bogus'], ['stray'], ['--port']]) {
    const run = await demo(args)
    t.equal(run.code, 2, `${args.join(' ')}: exit code 2`)
    t.match(run.stderr, /FLEETGATE_ERR_CLI_USAGE/)
    t.match(run.stderr, /Usage: node dist\/demo\.js/)
  }
  const help = await demo(['--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /^Usage: node dist\/demo\.js/)
})

t.test('demo: a process that stops before the fleet is up ends the demo at once, with the end of its log', async t => {
  // Every process the demo starts reads FLEETGATE_* settings; this one only the proxy has, and it is bad.
  const run = await demo(['--port', '0'], { env: { ...process.env, FLEETGATE_SLOW_START_MS: 'soon' }, waitMs: 25_000 })
  t.teardown(async () => {
    const logs = run.stdout.match(/Logs kept in (\/\S*fleetgate-demo-[^/\s]+)/)?.[1]
    if (logs) await rm(logs, { recursive: true, force: true })
  })
  t.notOk(run.started, `it stops by itself, before its 30 s wait for the fleet is out: ${run.stdout}`)
  t.equal(run.code, 1, 'exit code 1')
  t.match(run.stdout, /\[demo\] proxy stopped before the fleet was up; the end of its log:\n.*FLEETGATE_SLOW_START_MS = "soon": expected milliseconds/, 'names the process and shows why')
  t.notMatch(run.stdout, /did not come up in 30 s/)
  t.match(run.stdout, /stopping: agents drain first, then the proxy and ZooKeeper\n\[demo\] stopped\./, 'and stops the rest')
})
