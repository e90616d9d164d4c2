// The command line around the commands: usage, help and version, their output streams and exit codes.

import { spawn, spawnSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { isRunning, track } from '../helpers/reaper.ts'
import { freePort } from '../helpers/zookeeper.ts'

const CLI = fileURLToPath(new URL('../../dist/cli.js', import.meta.url))

function fleetgate (...args: string[]): { status: number | null, stdout: string, stderr: string } {
  const run = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 30_000 })
  return { status: run.status, stdout: run.stdout, stderr: run.stderr }
}

t.test('without a command: the usage on stderr, nothing on stdout, exit code 2', async t => {
  const run = fleetgate()
  t.equal(run.status, 2)
  t.equal(run.stdout, '', 'stdout stays empty, as for every usage error')
  t.match(run.stderr, /^fleetgate: FLEETGATE_ERR_CLI_USAGE: no command: expected proxy, agent, help or --version\n\nUsage:\n {2}fleetgate proxy /)
})

t.test('help and --version: on stdout, exit code 0; an unknown command: on stderr, exit code 2', async t => {
  for (const args of [['help'], ['--help'], ['-h'], ['help', 'proxy'], ['proxy', '--help'], ['agent', '-h']]) {
    const run = fleetgate(...args)
    t.equal(run.status, 0, `${args.join(' ')}: exit code 0`)
    t.match(run.stdout, /^Usage:\n/, `${args.join(' ')}: usage on stdout`)
    t.equal(run.stderr, '')
  }
  const { version } = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  t.same(fleetgate('--version'), { status: 0, stdout: `${version}\n`, stderr: '' })
  const unknown = fleetgate('proxi')
  t.equal(unknown.status, 2)
  t.equal(unknown.stdout, '')
  t.match(unknown.stderr, /^fleetgate: FLEETGATE_ERR_CLI_USAGE: unknown command "proxi"/)
})

t.test('a proxy and an agent whose log reader has gone (a shipper restarted, `| head`) still stop on SIGTERM', async t => {
  const zookeeper = `127.0.0.1:${await freePort()}`
  for (const args of [
    ['proxy', '--static', 'http://127.0.0.1:9', '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--workers', '1'],
    ['agent', '--zookeeper', zookeeper, '--advertise', '127.0.0.1:9', '--admin-listen', '127.0.0.1:0'],
  ]) {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    track(child)
    const exited = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>(resolve => child.once('exit', (code, signal) => resolve({ code, signal })))
    t.teardown(() => { if (isRunning(child)) child.kill('SIGKILL') })
    let output = ''
    child.stdout!.setEncoding('utf8').on('data', (s: string) => { output += s })
    await eventually(() => /listening/.test(output), { timeoutMs: 30_000, message: () => `${args[0]} listening; output:\n${output}` })
    // The reader goes: every log line from now on meets a broken pipe, the shutdown's among them.
    child.stdout!.destroy()
    child.stderr!.destroy()
    child.kill('SIGTERM')
    const result = await Promise.race([exited, new Promise<'running'>(resolve => setTimeout(() => resolve('running'), 20_000).unref())])
    t.not(result, 'running', `${args[0]}: exited within 20 s of SIGTERM`)
  }
})
