// Processes the harness starts: spawned pinned to a core, tracked by PID, measured from /proc, and
// ended by PID only (never by name), on success, failure or Ctrl-C alike.

import { spawn } from 'node:child_process'
import { openSync, closeSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { setPriority } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'

/** Clock ticks per second for /proc/<pid>/stat times; 100 on every Linux this runs on. */
const CLK_TCK = 100

/** Every process started and not yet reaped: PID -> child. */
const started = new Map()

/** `command args` wrapped in taskset, which execs: the PID stays the command's own. */
export function wrapCommand (command, args, cpus) {
  return cpus === undefined ? [command, args] : ['taskset', ['-c', String(cpus), command, ...args]]
}

/**
 * Sets the niceness of every thread of `pid` (Linux applies it per thread). Applied to the harness at
 * start, it is inherited by everything the harness starts: proxies, backends, wrk and ZooKeeper.
 */
export function reniceAllThreads (pid, niceness) {
  for (const tid of readdirSync(`/proc/${pid}/task`)) setPriority(Number(tid), niceness)
}

/**
 * Starts `command args` pinned to `cpus` (a taskset list such as "0" or "1"), with stdout and stderr
 * appended to `logFile`. taskset execs the command, so the child's PID is the command's own.
 */
export function startProcess (name, command, args, { cpus, logFile, env, cwd } = {}) {
  const fd = logFile ? openSync(logFile, 'a') : 'ignore'
  const [file, argv] = wrapCommand(command, args, cpus)
  const child = spawn(file, argv, { stdio: ['ignore', fd, fd], env: { ...process.env, ...env }, cwd })
  if (typeof fd === 'number') closeSync(fd)
  return track(name, child, logFile)
}

/** Tracks a child spawned elsewhere (wrk, through execFile) so that stopAll and killAllSync end it too. */
export function track (name, child, logFile) {
  const entry = { name, child, pid: child.pid, exited: false, exitCode: null, logFile }
  entry.exit = new Promise(resolve => child.once('exit', (code, signal) => {
    entry.exited = true
    entry.exitCode = code ?? signal
    started.delete(child.pid)
    resolve(entry.exitCode)
  }))
  child.once('error', err => { entry.error = err })
  if (child.pid !== undefined) started.set(child.pid, entry)
  return entry
}

/** SIGTERM, then SIGKILL after `graceMs`; only this PID. */
export async function stopProcess (entry, graceMs = 3000) {
  if (!entry || entry.exited) return
  try { process.kill(entry.pid, 'SIGTERM') } catch { return }
  const timer = sleep(graceMs).then(() => 'timeout')
  if (await Promise.race([entry.exit, timer]) === 'timeout') {
    try { process.kill(entry.pid, 'SIGKILL') } catch {}
    await entry.exit
  }
}

export async function stopAll () {
  await Promise.all([...started.values()].map(entry => stopProcess(entry)))
}

/** Synchronous last resort for process exit: SIGKILL whatever is still running, by PID. */
export function killAllSync () {
  for (const entry of started.values()) {
    try { process.kill(entry.pid, 'SIGKILL') } catch {}
  }
}

/** CPU seconds a process (all its threads) has used, in user space and in the kernel (utime, stime: fields 14 and 15). */
export function cpuTimes (pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    // The command name can hold spaces and parentheses; fields start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { user: Number(fields[11]) / CLK_TCK, kernel: Number(fields[12]) / CLK_TCK }
  } catch {
    return { user: 0, kernel: 0 }
  }
}

/** user+system CPU seconds of one process (all its threads). */
export function cpuSeconds (pid) {
  const { user, kernel } = cpuTimes(pid)
  return user + kernel
}

/** The PID and every live descendant (for a proxy that forks workers). */
export function processTree (pid) {
  const children = new Map()
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      if (!children.has(ppid)) children.set(ppid, [])
      children.get(ppid).push(Number(name))
    } catch {}
  }
  const out = []
  const queue = [pid]
  while (queue.length > 0) {
    const p = queue.shift()
    out.push(p)
    queue.push(...(children.get(p) ?? []))
  }
  return out
}

export function treeCpuSeconds (pids) {
  return pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0)
}

export function treeCpuTimes (pids) {
  return pids.map(cpuTimes).reduce((sum, t) => ({ user: sum.user + t.user, kernel: sum.kernel + t.kernel }), { user: 0, kernel: 0 })
}

/** VmHWM (peak RSS) and VmRSS in bytes, summed over `pids`. */
export function memory (pids) {
  let peak = 0
  let rss = 0
  for (const pid of pids) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8')
      peak += Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024
      rss += Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024
    } catch {}
  }
  return { peak, rss }
}

/** Resets VmHWM to the current RSS (Linux >= 4.0), so a peak belongs to one run; false if not allowed. */
export function resetPeak (pids) {
  let ok = true
  for (const pid of pids) {
    try { writeFileSync(`/proc/${pid}/clear_refs`, '5') } catch { ok = false }
  }
  return ok
}

/** Polls `probe` until it returns truthy, at most `timeoutMs`; throws with `what` otherwise. */
export async function eventually (probe, { timeoutMs = 10_000, intervalMs = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  let lastError
  while (Date.now() < deadline) {
    try {
      const value = await probe()
      if (value) return value
    } catch (err) {
      lastError = err
    }
    await sleep(intervalMs)
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${lastError.message}` : ''}`)
}

/**
 * Per-core CPU seconds from /proc/stat: `task` is user+nice+system (time spent in processes),
 * `busy` adds irq and softirq (loopback packet handling often lands there).
 */
export function coreTimes () {
  const out = {}
  for (const line of readFileSync('/proc/stat', 'utf8').split('\n')) {
    const m = /^cpu(\d+) (.*)$/.exec(line)
    if (!m) continue
    const [user, nice, system, , , irq, softirq] = m[2].trim().split(/\s+/).map(Number)
    out[m[1]] = { task: (user + nice + system) / CLK_TCK, busy: (user + nice + system + irq + softirq) / CLK_TCK }
  }
  return out
}

/** The 1-minute load average. */
export function loadAverage () {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0])
}
