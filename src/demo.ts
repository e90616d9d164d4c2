// `npm run demo`: a working fleet on this machine in one command. A local ZooKeeper, three stand-in
// backends each wrapped by its own `fleetgate agent`, and `fleetgate proxy` in front; prints the URLs and
// how to add, drain or remove an instance; Ctrl-C drains the agents and stops everything.
//
//   node dist/demo.js [--port 8080] [--instances 3]

import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { mkdtemp, readFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { request } from 'undici'
import { FleetgateError, isFleetgateError } from './errors.ts'
import { startLocalZooKeeper, type LocalZooKeeper } from './zookeeper/local-server.ts'

const CLI = fileURLToPath(new URL('./cli.js', import.meta.url))
const BACKEND = fileURLToPath(new URL('./demo/backend.js', import.meta.url))
const SERVICE = 'demo'
const NAMES = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i']
/** Short drain and health period: the demo should react while you watch. */
const AGENT_FLAGS = ['--health-interval-ms', '500', '--drain-ms', '2000', '--session-timeout-ms', '4000']

interface Child {
  readonly name: string
  readonly process: ChildProcess
  readonly exited: Promise<void>
  /** Its log file, complete once `logged` resolves (after the process and its stdio have closed). */
  readonly log: string
  readonly logged: Promise<void>
}

interface Instance {
  readonly name: string
  readonly port: number
  readonly adminPort: number
  readonly agent: Child
}

const USAGE = 'Usage: node dist/demo.js [--port 8080] [--instances 3]\n  --port 0 picks any free port.\n'

/**
 * A flag's whole number, written in decimal digits as fleetgate's own settings are: JavaScript would also
 * read "" as 0, and "1e3" or "0x50" as numbers.
 */
function wholeNumber (flag: string, value: string | undefined, fallback: number, min: number, max: number, expected: string): number {
  if (value === undefined) return fallback
  const number = /^[0-9]{1,6}$/.test(value) ? Number(value) : NaN
  if (!(number >= min && number <= max)) throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `${flag} = ${JSON.stringify(value)}: expected ${expected}`)
  return number
}

async function main (): Promise<number> {
  let values: { port?: string, instances?: string, help?: boolean }
  try {
    values = parseArgs({
      options: { port: { type: 'string' }, instances: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      strict: true,
    }).values
  } catch (err) {
    throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', (err as Error).message, { cause: err })
  }
  if (values.help) {
    process.stdout.write(USAGE)
    return 0
  }
  const count = wholeNumber('--instances', values.instances, 3, 1, NAMES.length, `an integer from 1 to ${NAMES.length}`)
  const wanted = wholeNumber('--port', values.port, 8080, 0, 65535, 'a port from 0 to 65535 (0: any free port)')

  const logs = await mkdtemp(join(tmpdir(), 'fleetgate-demo-'))
  const children: Child[] = []
  let zookeeper: LocalZooKeeper | undefined
  let stopping: Promise<number> | undefined
  /** Set once every instance is up; before that, the wait below reports a process that stops. */
  let up = false

  // Children run in their own process groups, so Ctrl-C reaches only this process, which then stops
  // them in order: agents (drain), proxy, ZooKeeper. If this process dies anyway, they go with it.
  process.on('exit', () => {
    for (const child of children) if (running(child.process)) child.process.kill('SIGKILL')
    zookeeper?.kill()
  })
  const start = (name: string, args: string[]): Child => {
    const logFile = join(logs, `${name}.log`)
    const log = createWriteStream(logFile)
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, env: process.env })
    // Two sources, one file: it ends when both have, not when the first does.
    child.stdout!.pipe(log, { end: false })
    child.stderr!.pipe(log, { end: false })
    const logged = new Promise<void>(resolve => {
      log.once('error', () => resolve())
      child.once('close', () => log.end(resolve))
    })
    const exited = new Promise<void>(resolve => child.once('exit', (code, signal) => {
      if (up && !stopping) say(`${name} exited (${signal ?? `code ${code}`}); its log: ${logFile}`)
      resolve()
    }))
    const entry = { name, process: child, exited, log: logFile, logged }
    children.push(entry)
    return entry
  }
  const stopAll = async (): Promise<number> => {
    say('stopping: agents drain first, then the proxy and ZooKeeper')
    const agents = children.filter(c => c.name.startsWith('agent-'))
    await Promise.all(agents.map(c => stopChild(c, 'SIGTERM', 10_000)))
    await Promise.all(children.filter(c => !agents.includes(c)).map(c => stopChild(c, 'SIGTERM', 10_000)))
    await zookeeper?.stop()
    say(`stopped. Logs kept in ${logs}`)
    return 0
  }
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      say(`${signal} again: killing everything now`)
      process.exit(130)
    }
    stopping = stopAll()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  say('starting a local ZooKeeper')
  zookeeper = await startLocalZooKeeper({ port: await freePort(), env: process.env })
  if (stopping) return stopping

  const proxyPort = wanted === 0 ? await freePort() : await isFree(wanted) ? wanted : await freePort()
  if (wanted !== 0 && proxyPort !== wanted) say(`port ${wanted} is taken; the proxy uses ${proxyPort}`)
  const proxyAdminPort = await freePort()
  start('proxy', [CLI, 'proxy', '--zookeeper', zookeeper.connectString, '--service', SERVICE,
    '--listen', `127.0.0.1:${proxyPort}`, '--admin-listen', `127.0.0.1:${proxyAdminPort}`, '--shutdown-timeout-ms', '5000'])

  const instances: Instance[] = []
  for (const name of NAMES.slice(0, count)) {
    const port = await freePort()
    const adminPort = await freePort()
    const agent = start(`agent-${name}`, agentCommand(zookeeper.connectString, name, port, adminPort, process.execPath))
    instances.push({ name, port, adminPort, agent })
  }

  say(`waiting for ${count} instances to pass their health checks and register`)
  const proxyUrl = `http://127.0.0.1:${proxyPort}`
  const adminUrl = `http://127.0.0.1:${proxyAdminPort}`
  const deadline = performance.now() + 30_000
  while (!stopping && (await upInstances(adminUrl)) < count) {
    // A process that stops now (a bad setting in the environment, a port taken meanwhile) will not come
    // back: say why at once rather than wait out the deadline.
    const gone = children.find(c => !running(c.process))
    if (gone) {
      await gone.logged
      const tail = (await readFile(gone.log, 'utf8').catch(() => '')).trimEnd().split('\n').slice(-10).join('\n')
      say(`${gone.name} stopped before the fleet was up; the end of its log:\n${tail}`)
      stopping = stopAll()
      await stopping
      return 1
    }
    if (performance.now() > deadline) {
      say(`the fleet did not come up in 30 s; see the logs in ${logs}`)
      stopping = stopAll()
      await stopping
      return 1
    }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
  if (stopping) return stopping
  up = true

  const spare = await freePort()
  const nextName = NAMES[count] ?? 'x'
  const rows = instances.map(i => `  ${i.name.padEnd(9)} ${String(i.agent.process.pid).padEnd(10)} ${`http://127.0.0.1:${i.adminPort}/status`.padEnd(36)} http://127.0.0.1:${i.port}/`)
  const first = instances[0]!
  process.stdout.write(`
fleetgate demo fleet is up: ${count} instances of "${SERVICE}" behind the proxy.

  proxy         ${proxyUrl}/   (each answer names the instance that served it)
  status page   ${adminUrl}/status
  metrics       ${adminUrl}/metrics
  zookeeper     ${zookeeper.connectString}   (instances register under /services/${SERVICE})
  logs          ${logs}/

  instance  agent pid  agent status                         backend
${rows.join('\n')}

Try it (in another terminal):
  curl -s ${proxyUrl}/                                       # repeat: the instances take turns
  curl -X POST http://127.0.0.1:${first.port}/health/fail    # ${first.name} fails its health check and leaves; /health/pass brings it back
  curl -X PUT http://127.0.0.1:${first.adminPort}/maintenance      # drain ${first.name} without stopping it; DELETE to undo
  kill -TERM ${first.agent.process.pid}                                      # remove ${first.name}: it drains, deregisters, stops
Add an instance:
  ${['node', CLI, ...agentCommand(zookeeper.connectString, nextName, spare, 0).slice(1)].join(' ')}

Ctrl-C stops everything.
`)
  say(`pids: zookeeper=${zookeeper.pid} ${children.map(c => `${c.name}=${c.process.pid}`).join(' ')}`)
  // Runs until a signal; stopAll() then resolves with the exit code.
  return await new Promise<number>(resolve => {
    const wait = setInterval(() => {
      if (stopping) {
        clearInterval(wait)
        resolve(stopping)
      }
    }, 100)
  })
}

function agentCommand (zookeeper: string, name: string, port: number, adminPort: number, node = 'node'): string[] {
  return [CLI, 'agent', '--zookeeper', zookeeper, '--service', SERVICE, '--id', `demo-${name}`,
    '--advertise', `127.0.0.1:${port}`, '--target', `http://127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`,
    ...AGENT_FLAGS, '--', node, BACKEND, '--name', name, '--port', String(port), '--exit-with-parent']
}

async function upInstances (adminUrl: string): Promise<number> {
  try {
    // Bounded: a port that accepts and never answers must not hold the wait past its deadline.
    const res = await request(`${adminUrl}/status`, { headers: { accept: 'application/json' }, headersTimeout: 2000, bodyTimeout: 2000 })
    const status = await res.body.json() as { instances?: Array<{ state: string }> }
    return status.instances?.filter(i => i.state === 'up').length ?? 0
  } catch {
    return 0
  }
}

async function stopChild (child: Child, signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
  if (!running(child.process)) return
  child.process.kill(signal)
  const timer = setTimeout(() => { if (running(child.process)) child.process.kill('SIGKILL') }, timeoutMs)
  await child.exited
  clearTimeout(timer)
}

function running (child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null
}

function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

function isFree (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

function say (message: string): void {
  process.stdout.write(`[demo] ${message}\n`)
}

main().then(
  code => process.exit(code),
  err => {
    // A bad flag exits 2, as fleetgate's own commands do.
    const usage = isFleetgateError(err, 'FLEETGATE_ERR_CLI_USAGE') || isFleetgateError(err, 'FLEETGATE_ERR_CONFIG_INVALID')
    process.stderr.write(`fleetgate demo: ${isFleetgateError(err) ? `${err.code}: ` : ''}${(err as Error).message}\n${usage ? `\n${USAGE}` : ''}`)
    process.exit(usage ? 2 : 1)
  },
)
