// A real Prometheus server per test (Debian's `prometheus` package), on a free loopback port with its own
// TSDB directory, plus a small client for its HTTP API. Also finds promtool.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import { request } from 'undici'
import { stringify } from 'yaml'
import { eventually } from './eventually.ts'
import { isRunning, track } from './reaper.ts'
import { freePort } from './zookeeper.ts'

export const PROMETHEUS_INSTALL_HINT = 'install it with: apt-get install -y prometheus (or run scripts/test.sh)'

/** Absolute path of `command` on PATH, or undefined. */
export function which (command: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir !== '' && existsSync(path.join(dir, command))) return path.join(dir, command)
  }
  return undefined
}

/**
 * Where a test needs a binary: its path, or a skip reason outside CI. In CI (CI set) a missing binary is
 * a failure, never a skip, so the check cannot silently stop running.
 */
export function requireBinary (t: Test, command: string, hint: string): string | undefined {
  const found = which(command)
  if (found) return found
  if (process.env.CI) {
    t.fail(`${command} is not installed, and CI must run this test; ${hint}`)
  } else {
    t.plan(0, `${command} is not installed; ${hint}`)
  }
  return undefined
}

/** A promtool run: exit code and everything it printed. */
export function promtool (args: string[]): { code: number | null, output: string } {
  const run = spawnSync(which('promtool') ?? 'promtool', args, { encoding: 'utf8', timeout: 60_000 })
  return { code: run.status, output: `${run.stdout ?? ''}${run.stderr ?? ''}${run.error ? String(run.error) : ''}` }
}

export interface PromSample {
  metric: Record<string, string>
  value: [number, string]
}

export interface PrometheusServer {
  readonly url: string
  /** Instant query; rejects on an API error (a bad expression, say). */
  query(expr: string): Promise<PromSample[]>
  /** GET an API path (e.g. /api/v1/rules) and return its `data`. */
  api<T = unknown>(apiPath: string): Promise<T>
  logTail(lines?: number): string
}

/** Starts `prometheus` with `config` (an object written as YAML) and waits until it is ready. Stopped at teardown. */
export async function startPrometheus (t: Test, binary: string, config: unknown): Promise<PrometheusServer> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'fleetgate-prometheus-'))
  const configFile = path.join(tmp, 'prometheus.yml')
  const logFile = path.join(tmp, 'prometheus.log')
  await writeFile(configFile, stringify(config))
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const fd = openSync(logFile, 'a')
  let child: ChildProcess
  try {
    child = spawn(binary, [
      `--config.file=${configFile}`,
      `--storage.tsdb.path=${path.join(tmp, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ], { cwd: tmp, stdio: ['ignore', fd, fd] })
  } finally {
    closeSync(fd)
  }
  track(child)
  const exited = new Promise<void>(resolve => {
    child.once('exit', () => resolve())
    child.once('error', () => resolve())
  })
  const logTail = (lines = 30): string => {
    try {
      return readFileSync(logFile, 'utf8').split('\n').slice(-lines - 1).join('\n')
    } catch {
      return '(no log)'
    }
  }
  t.teardown(async () => {
    if (isRunning(child)) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => { if (isRunning(child)) child.kill('SIGKILL') }, 10_000)
      await exited
      clearTimeout(timer)
    }
    await rm(tmp, { recursive: true, force: true })
  })

  await eventually(async () => {
    if (!isRunning(child)) throw new Error(`prometheus exited (code ${child.exitCode}):\n${logTail()}`)
    const res = await request(`${url}/-/ready`)
    await res.body.dump()
    return res.statusCode === 200
  }, { timeoutMs: 30_000, intervalMs: 100, message: `prometheus ready on ${url}` })

  const api = async <T>(apiPath: string): Promise<T> => {
    const res = await request(`${url}${apiPath}`)
    const body = await res.body.json() as { status: string, data: T, error?: string }
    if (body.status !== 'success') throw new Error(`prometheus ${apiPath}: ${body.error ?? res.statusCode}`)
    return body.data
  }
  return {
    url,
    api,
    logTail,
    query: async expr => (await api<{ result: PromSample[] }>(`/api/v1/query?query=${encodeURIComponent(expr)}`)).result,
  }
}
