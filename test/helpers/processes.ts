// Child processes for end-to-end tests (e.g. `node dist/cli.js proxy ...`): output captured in memory,
// wait for a log line, signal, await exit. Anything still running when the test process exits is
// SIGKILLed (reaper.ts).

import { spawn, type ChildProcess } from 'node:child_process'
import { isRunning, track } from './reaper.ts'

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | null
}

export interface SpawnOptions {
  cwd?: string
  /** Added to (not replacing) process.env. */
  env?: Record<string, string | undefined>
  /** Also copy the child's output to this process's stderr, prefixed with the name (debugging). */
  echo?: boolean
  /** Label used in echo and error messages. Default: the command's basename. */
  name?: string
}

export interface SpawnedProcess {
  readonly name: string
  readonly child: ChildProcess
  readonly pid: number | undefined
  readonly running: boolean
  /** Everything written to stdout so far. */
  stdout(): string
  /** Everything written to stderr so far. */
  stderr(): string
  /** Complete lines from stdout and stderr, in arrival order. */
  lines(): readonly string[]
  /** Resolves with the first line (stdout or stderr, from line index `fromLine` on) matching `re`.
   * Rejects on timeout (default 10 s) or when the process exits first, with the output's tail. */
  waitForLine(re: RegExp, timeoutMs?: number, fromLine?: number): Promise<RegExpMatchArray>
  /** Sends a signal (default SIGTERM) if the process is still running. */
  kill(signal?: NodeJS.Signals): void
  /** SIGTERM, then SIGKILL if it has not exited after `graceMs` (default 5 s). */
  stop(graceMs?: number): Promise<ExitStatus>
  readonly exited: Promise<ExitStatus>
  /** Last lines of combined output, for assertion messages. */
  tail(lines?: number): string
}

export function spawnProcess(command: string, args: readonly string[], opts: SpawnOptions = {}): SpawnedProcess {
  const name = opts.name ?? command.split('/').pop() ?? command
  const child = spawn(command, args, {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  track(child)

  let out = ''
  let err = ''
  const lines: string[] = []
  const partial = { stdout: '', stderr: '' }
  const waiters = new Set<() => void>()

  const onChunk = (stream: 'stdout' | 'stderr') => (chunk: Buffer) => {
    const text = chunk.toString('utf8')
    if (stream === 'stdout') out += text
    else err += text
    if (opts.echo) process.stderr.write(text.replace(/^(?=.)/gm, `[${name}] `))
    const pieces = (partial[stream] + text).split('\n')
    partial[stream] = pieces.pop() ?? ''
    for (const line of pieces) lines.push(line.replace(/\r$/, ''))
    if (pieces.length > 0) waiters.forEach((w) => w())
  }
  child.stdout?.on('data', onChunk('stdout'))
  child.stderr?.on('data', onChunk('stderr'))

  const exited = new Promise<ExitStatus>((resolve) => {
    let spawnFailed = false
    child.once('error', (e) => {
      // spawn failure (ENOENT...): no 'exit' will follow
      spawnFailed = true
      err += `spawn error: ${e.message}\n`
      resolve({ code: null, signal: null })
    })
    // 'close' rather than 'exit': all output has been read by then.
    child.once('close', (code, signal) => {
      if (spawnFailed) return
      for (const stream of ['stdout', 'stderr'] as const) {
        if (partial[stream] !== '') lines.push(partial[stream])
        partial[stream] = ''
      }
      resolve({ code, signal })
    })
  })
  let done = false
  void exited.then(() => {
    done = true
    waiters.forEach((w) => w())
  })

  const tail = (n = 30): string => lines.slice(-n).join('\n') + (partial.stdout || partial.stderr ? `\n${partial.stdout}${partial.stderr}` : '')

  const waitForLine = (re: RegExp, timeoutMs = 10_000, fromLine = 0): Promise<RegExpMatchArray> =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      let next = fromLine
      const check = (): void => {
        for (; next < lines.length; next++) {
          const match = (lines[next] ?? '').match(re)
          if (match) {
            finish()
            resolve(match)
            return
          }
        }
        if (done) {
          finish()
          reject(new Error(`${name} exited before printing a line matching ${re}; output tail:\n${tail()}`))
        }
      }
      const timer = setTimeout(() => {
        finish()
        reject(new Error(`${name} printed no line matching ${re} within ${timeoutMs} ms; output tail:\n${tail()}`))
      }, timeoutMs)
      const finish = (): void => {
        clearTimeout(timer)
        waiters.delete(check)
      }
      waiters.add(check)
      check()
    })

  const kill = (signal: NodeJS.Signals = 'SIGTERM'): void => {
    if (isRunning(child)) child.kill(signal)
  }

  const stop = async (graceMs = 5000): Promise<ExitStatus> => {
    kill('SIGTERM')
    const timer = setTimeout(() => kill('SIGKILL'), graceMs)
    try {
      return await exited
    } finally {
      clearTimeout(timer)
    }
  }

  return {
    name,
    child,
    get pid() {
      return child.pid
    },
    get running() {
      return isRunning(child)
    },
    stdout: () => out,
    stderr: () => err,
    lines: () => lines,
    waitForLine,
    kill,
    stop,
    exited,
    tail,
  }
}

/** Runs a Node script with the current Node binary, e.g. spawnNode(['dist/cli.js', 'proxy', '--config', f]). */
export function spawnNode(args: readonly string[], opts: SpawnOptions = {}): SpawnedProcess {
  return spawnProcess(process.execPath, args, { name: 'node', ...opts })
}
