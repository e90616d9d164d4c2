// A private Docker engine per test run: Debian's docker.io `dockerd`, started by hand on a socket in a
// temporary directory, with no bridge, no iptables and no NAT (containers use the host's network, so all
// traffic stays on 127.0.0.1). close() removes every container and network, stops the engine by PID,
// unmounts and deletes its directory, and removes any bridge of the engine's that is left (docker0, br-*).
// FIELD-NOTES §6 has the background.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'

export const DOCKERD = '/usr/sbin/dockerd'
/** Debian's client (20.10), matching the engine; a newer client elsewhere on PATH would work too. */
export const DOCKER = '/usr/bin/docker'
export const DOCKER_COMPOSE = '/usr/bin/docker-compose'
export const INSTALL_HINT = 'install it with: apt-get install -y docker.io docker-compose (or run scripts/test.sh with CI=1)'

const READY_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 30_000

export interface CommandResult {
  code: number | null
  stdout: string
  stderr: string
}

export interface RunOptions {
  cwd?: string
  env?: Record<string, string | undefined>
  /** Written to the command's stdin. */
  input?: string | Buffer
  timeoutMs?: number
}

export interface DockerEngine {
  /** `unix:///tmp/.../docker.sock`, for DOCKER_HOST. */
  readonly host: string
  /** process.env plus DOCKER_HOST, for docker and docker-compose. */
  readonly env: Record<string, string | undefined>
  readonly pid: number | undefined
  /** `docker ARGS`; resolves with the result whatever the exit code. */
  run(args: readonly string[], opts?: RunOptions): Promise<CommandResult>
  /** `docker ARGS`; resolves with stdout (trimmed), rejects with stderr on a non-zero exit. */
  docker(args: readonly string[], opts?: RunOptions): Promise<string>
  /** Any command with DOCKER_HOST set (e.g. docker-compose); rejects on a non-zero exit. */
  exec(file: string, args: readonly string[], opts?: RunOptions): Promise<string>
  /** Last lines of the engine's log. */
  logTail(lines?: number): string
  close(): Promise<void>
}

/** Throws with an install hint when the engine, the client or root rights are missing. */
export function assertDockerEngineAvailable (): void {
  if (!existsSync(DOCKERD)) throw new Error(`the Docker engine is not installed (${DOCKERD} is missing); ${INSTALL_HINT}`)
  if (!existsSync(DOCKER)) throw new Error(`the Docker client is not installed (${DOCKER} is missing); ${INSTALL_HINT}`)
  if (process.getuid?.() !== 0) throw new Error('starting a Docker engine needs root')
}

export async function startDockerEngine (): Promise<DockerEngine> {
  assertDockerEngineAvailable()
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fleetgate-docker-'))
  const host = `unix://${dir}/docker.sock`
  const logFile = path.join(dir, 'dockerd.log')
  const env = { ...process.env, DOCKER_HOST: host }
  const hadDocker0 = links().includes('docker0')

  const fd = openSync(logFile, 'a')
  let child: ChildProcess
  try {
    child = spawn(DOCKERD, [
      '--data-root', path.join(dir, 'data'),
      '--exec-root', path.join(dir, 'exec'),
      '--pidfile', path.join(dir, 'docker.pid'),
      '--host', host,
      // No default bridge (so no docker0), no firewall or forwarding changes on the host: every
      // container here uses the host's network.
      '--bridge', 'none',
      '--iptables=false',
      '--ip6tables=false',
      '--ip-forward=false',
      '--ip-masq=false',
    ], { stdio: ['ignore', fd, fd] })
  } finally {
    closeSync(fd)
  }
  const exited = new Promise<void>(resolve => {
    child.once('exit', () => resolve())
    child.once('error', () => resolve())
  })
  const running = (): boolean => child.exitCode === null && child.signalCode === null

  const logTail = (lines = 30): string => {
    try {
      return readFileSync(logFile, 'utf8').split('\n').slice(-lines - 1).join('\n')
    } catch {
      return '(no log)'
    }
  }

  const run = (file: string, args: readonly string[], opts: RunOptions = {}): Promise<CommandResult> =>
    runCommand(file, args, { ...opts, env: { ...env, ...opts.env } })
  const check = async (file: string, args: readonly string[], opts: RunOptions = {}): Promise<string> => {
    const result = await run(file, args, opts)
    if (result.code !== 0) {
      throw new Error(`${path.basename(file)} ${args.join(' ')} exited ${result.code}:\n${(result.stderr || result.stdout).slice(-4000)}`)
    }
    return result.stdout.trim()
  }

  // Synchronous, so it also runs from an 'exit' handler when the test process dies early.
  let closed = false
  const bridges = new Set<string>()
  const cleanUpSync = (): void => {
    if (closed) return
    closed = true
    process.removeListener('exit', cleanUpSync)
    if (running()) {
      const ids = spawnSync(DOCKER, ['ps', '-aq'], { env, encoding: 'utf8', timeout: 10_000 }).stdout?.split('\n').filter(Boolean) ?? []
      if (ids.length > 0) spawnSync(DOCKER, ['rm', '-f', '-v', ...ids], { env, timeout: 60_000 })
      // A bridge network's interface is br-<first 12 characters of its id>.
      const networks = spawnSync(DOCKER, ['network', 'ls', '-q', '--filter', 'driver=bridge'], { env, encoding: 'utf8', timeout: 10_000 }).stdout?.split('\n').filter(Boolean) ?? []
      for (const id of networks) bridges.add(`br-${id.slice(0, 12)}`)
      spawnSync(DOCKER, ['network', 'prune', '-f'], { env, timeout: 30_000 })
      child.kill('SIGTERM')
      // Wait for the engine to stop its containerd and unmount its layers.
      const deadline = Date.now() + STOP_TIMEOUT_MS
      while (running() && pidAlive(child.pid) && Date.now() < deadline) spawnSync('sleep', ['0.1'])
      if (pidAlive(child.pid)) child.kill('SIGKILL')
    }
    unmountUnder(dir)
    spawnSync('rm', ['-rf', dir])
    // Bridges the engine made and left behind (none is expected: no default bridge, networks pruned).
    if (!hadDocker0) bridges.add('docker0')
    for (const link of links()) if (bridges.has(link)) spawnSync('ip', ['link', 'delete', link])
  }
  process.once('exit', cleanUpSync)
  // Killed by a signal (tap's per-file timeout, Ctrl-C), 'exit' never comes: clean up, then re-raise.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      cleanUpSync()
      process.removeListener(signal, onSignal)
      process.kill(process.pid, signal)
    }
    process.once(signal, onSignal)
  }

  const engine: DockerEngine = {
    host,
    env,
    get pid () { return running() ? child.pid : undefined },
    run: (args, opts) => run(DOCKER, args, opts),
    docker: (args, opts) => check(DOCKER, args, opts),
    exec: (file, args, opts) => check(file, args, opts),
    logTail,
    close: async () => {
      if (closed) return
      if (running()) {
        const ids = (await run(DOCKER, ['ps', '-aq'])).stdout.split('\n').filter(Boolean)
        if (ids.length > 0) await run(DOCKER, ['rm', '-f', '-v', ...ids], { timeoutMs: 60_000 })
        const networks = (await run(DOCKER, ['network', 'ls', '-q', '--filter', 'driver=bridge'])).stdout.split('\n').filter(Boolean)
        for (const id of networks) bridges.add(`br-${id.slice(0, 12)}`)
        await run(DOCKER, ['network', 'prune', '-f'], { timeoutMs: 30_000 })
        child.kill('SIGTERM')
        const timer = setTimeout(() => { if (running()) child.kill('SIGKILL') }, STOP_TIMEOUT_MS)
        await exited
        clearTimeout(timer)
      }
      cleanUpSync()
      await rm(dir, { recursive: true, force: true })
    },
  }

  const deadline = Date.now() + READY_TIMEOUT_MS
  for (;;) {
    if (!running()) {
      cleanUpSync()
      throw new Error(`dockerd exited during startup (code ${child.exitCode}); its log:\n${logTail()}`)
    }
    const version = await run(DOCKER, ['version', '--format', '{{.Server.Version}}'], { timeoutMs: 5000 })
    if (version.code === 0 && version.stdout.trim() !== '') return engine
    if (Date.now() > deadline) {
      cleanUpSync()
      throw new Error(`dockerd did not answer within ${READY_TIMEOUT_MS} ms; its log:\n${logTail()}`)
    }
    await new Promise(resolve => setTimeout(resolve, 100))
  }
}

/** Runs a command to completion, capturing its output; never rejects (a spawn failure is code null). */
export function runCommand (file: string, args: readonly string[], opts: RunOptions = {}): Promise<CommandResult> {
  return new Promise(resolve => {
    const child = spawn(file, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.setEncoding('utf8').on('data', (s: string) => { stdout += s })
    child.stderr.setEncoding('utf8').on('data', (s: string) => { stderr += s })
    const timer = opts.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
        stderr += `\n(killed after ${opts.timeoutMs} ms)`
        child.kill('SIGKILL')
      }, opts.timeoutMs)
    child.once('error', err => {
      clearTimeout(timer)
      resolve({ code: null, stdout, stderr: `${stderr}spawn error: ${err.message}` })
    })
    child.once('close', code => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
    child.stdin.on('error', () => {})
    child.stdin.end(opts.input)
  })
}

/** The host's network interfaces. */
function links (): string[] {
  try {
    return readdirSync('/sys/class/net')
  } catch {
    return []
  }
}

/** Whether the process exists and has not exited (a zombie, exited but not yet reaped, counts as gone). */
function pidAlive (pid: number | undefined): boolean {
  if (pid === undefined) return false
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z'
  } catch {
    return false
  }
}

/** Lazily unmounts whatever the engine left mounted below `dir` (overlay layers, shm), deepest first. */
function unmountUnder (dir: string): void {
  let mounts: string[]
  try {
    mounts = readFileSync('/proc/mounts', 'utf8').split('\n').map(line => line.split(' ')[1] ?? '').filter(m => m.startsWith(`${dir}/`))
  } catch {
    return
  }
  for (const mount of mounts.sort((a, b) => b.length - a.length)) spawnSync('umount', ['-l', mount])
}
