// Safety net for child processes started by test helpers: whatever is still running when the test process
// exits (normally, or on SIGINT/SIGTERM/SIGHUP/SIGALRM, e.g. tap's per-file timeout) gets SIGKILL, by PID.
// Only processes registered here are ever killed, and only while Node still sees them running
// (so a recycled PID is never hit).

import type { ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'

const children = new Set<ChildProcess>()
let installed = false

/** Registers `child` for the kill-on-exit safety net; it unregisters itself when it exits. */
export function track(child: ChildProcess): void {
  install()
  if (child.pid === undefined || !isRunning(child)) return
  children.add(child)
  child.once('exit', () => children.delete(child))
}

/** Processes registered and not yet exited. */
export function tracked(): ReadonlySet<ChildProcess> {
  return children
}

/** A process's start time (clock ticks after boot, field 22 of /proc/<pid>/stat): with its PID, which process it is. */
export function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]
  } catch {
    return undefined
  }
}

/** Kills `pid` only while it is still the process that started at `startTime`: a PID may be reused. */
export function killIfSame(pid: number, startTime: string | undefined, signal: NodeJS.Signals = 'SIGKILL'): void {
  if (startTime === undefined || startTimeOf(pid) !== startTime) return
  try {
    process.kill(pid, signal)
  } catch {} // gone meanwhile
}

/** Whether a process still runs, by PID (signal 0 only checks): for processes started by ours. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

export function isRunning(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null
}

/** SIGKILLs every tracked process that is still running. Synchronous: safe inside an 'exit' handler. */
export function killAllTracked(): void {
  for (const child of children) {
    if (child.pid !== undefined && isRunning(child)) {
      try {
        // A SIGSTOPped process dies on SIGKILL too.
        process.kill(child.pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
  }
  children.clear()
}

function install(): void {
  if (installed) return
  installed = true
  process.once('exit', killAllTracked)
  // SIGALRM is how tap's runner ends a test file that ran past its timeout.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
    const onSignal = (): void => {
      killAllTracked()
      process.removeListener(signal, onSignal)
      // Registered in front (prependListener), we run first and are gone before the other listeners of this
      // same signal look at process.listeners() (tap's signal-exit stands back while a foreign listener is
      // present). Without other listeners, re-raise: the default action (death) was suppressed by ours.
      if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
    }
    process.prependListener(signal, onSignal)
  }
}
