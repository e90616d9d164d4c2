// A local standalone ZooKeeper 3.8 (Debian's `zookeeper` package) in a temp directory, for the demo
// fleet: ready in about half a second, gone with its directory at stop(). FIELD-NOTES section 4.

import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { delimiter, join } from 'node:path'
import { FleetgateError } from '../errors.ts'

export const ZOOKEEPER_JAR = '/usr/share/java/zookeeper.jar'
export const SLF4J_JAR = '/usr/share/java/slf4j-simple.jar'
const INSTALL_HINT = 'install it with: sudo apt-get install -y zookeeper default-jre-headless'
const READY_TIMEOUT_MS = 20_000

export interface LocalZooKeeper {
  readonly connectString: string
  readonly port: number
  readonly dir: string
  readonly logFile: string
  readonly pid: number
  /** SIGTERM (SIGKILL after 5 s), then remove the directory. */
  stop(): Promise<void>
  /** SIGKILL at once, synchronously: for an exit handler. */
  kill(): void
}

export async function startLocalZooKeeper (options: { port: number, env?: Readonly<Record<string, string | undefined>> }): Promise<LocalZooKeeper> {
  const env = options.env ?? {}
  if (!existsSync(ZOOKEEPER_JAR)) {
    throw new FleetgateError('FLEETGATE_ERR_LOCAL_ZOOKEEPER', `${ZOOKEEPER_JAR} is missing; ${INSTALL_HINT}`)
  }
  if (!(env.PATH ?? '').split(delimiter).some(dir => dir !== '' && existsSync(join(dir, 'java')))) {
    throw new FleetgateError('FLEETGATE_ERR_LOCAL_ZOOKEEPER', `java is not on PATH; ${INSTALL_HINT}`)
  }
  const dir = await mkdtemp(join(tmpdir(), 'fleetgate-zookeeper-'))
  const logFile = join(dir, 'zookeeper.log')
  const configFile = join(dir, 'zoo.cfg')
  await writeFile(configFile, [
    'tickTime=500',
    'minSessionTimeout=1000',
    'maxSessionTimeout=20000',
    `dataDir=${join(dir, 'data')}`,
    `clientPort=${options.port}`,
    'clientPortAddress=127.0.0.1',
    'admin.enableServer=false',
    '4lw.commands.whitelist=srvr,ruok,mntr,stat',
    '',
  ].join('\n'))

  const fd = openSync(logFile, 'a')
  let child: ChildProcess
  try {
    child = spawn('java', [
      '-Xmx256m', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1',
      '-cp', `${ZOOKEEPER_JAR}:${SLF4J_JAR}`,
      'org.apache.zookeeper.server.ZooKeeperServerMain', configFile,
    // Its own process group: a Ctrl-C meant for the demo must not stop ZooKeeper before the agents drain.
    ], { cwd: dir, stdio: ['ignore', fd, fd], env: { ...env }, detached: true })
  } finally {
    closeSync(fd)
  }
  const exited = new Promise<void>(resolve => {
    child.once('exit', () => resolve())
    child.once('error', () => resolve())
  })
  let spawnError: Error | undefined
  child.once('error', err => { spawnError = err })
  const running = (): boolean => child.exitCode === null && child.signalCode === null && spawnError === undefined

  const stop = async (): Promise<void> => {
    if (running()) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => { if (running()) child.kill('SIGKILL') }, 5000)
      await exited
      clearTimeout(timer)
    }
    await rm(dir, { recursive: true, force: true })
  }

  // The client port opens before the database is loaded, and `ruok` says imok already then; `srvr`
  // names the mode only once the server really serves.
  const deadline = performance.now() + READY_TIMEOUT_MS
  for (;;) {
    if (!running()) {
      await stop()
      throw new FleetgateError('FLEETGATE_ERR_LOCAL_ZOOKEEPER', spawnError ? `${spawnError.message}; ${INSTALL_HINT}` : `it exited at start; see ${logFile}`)
    }
    const answer = await fourLetterWord(options.port, 'srvr')
    if (answer.includes('Mode:')) break
    if (performance.now() > deadline) {
      await stop()
      throw new FleetgateError('FLEETGATE_ERR_LOCAL_ZOOKEEPER', `not serving on port ${options.port} after ${READY_TIMEOUT_MS} ms`)
    }
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  const kill = (): void => { if (running()) child.kill('SIGKILL') }
  return { connectString: `127.0.0.1:${options.port}`, port: options.port, dir, logFile, pid: child.pid!, stop, kill }
}

function fourLetterWord (port: number, word: string): Promise<string> {
  return new Promise(resolve => {
    let answer = ''
    const socket = connect(port, '127.0.0.1')
    socket.setTimeout(1000, () => socket.destroy())
    socket.on('connect', () => socket.end(word))
    socket.on('data', (chunk: Buffer) => { answer += chunk.toString() })
    socket.on('error', () => {})
    socket.on('close', () => resolve(answer))
  })
}
