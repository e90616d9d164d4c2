// Supervisor: wrapper mode (`fleetgate agent ... -- COMMAND ARGS`). Runs the instance's command as a child
// with the agent's stdio, passes signals on, and reports its exit so the agent can deregister at once.

import { spawn, type ChildProcess } from 'node:child_process'
import { constants } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { FleetgateError } from '../errors.ts'
import type { Logger } from '../logger.ts'

export interface ChildExit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface SupervisorOptions {
  readonly command: readonly string[]
  readonly env: Readonly<Record<string, string | undefined>>
  readonly logger: Logger
}

/**
 * The agent's own secrets, left out of the command's environment: the Consul ACL token may write any
 * registration of the service (service:write), which the instance has no business with. The agent reads
 * it only from this variable (or a flag, or its config file), never from Consul's CONSUL_HTTP_TOKEN.
 */
export const WITHHELD_VARIABLES: readonly string[] = ['FLEETGATE_CONSUL_TOKEN']

/** How often a stop looks whether the command's process group is gone. */
const GROUP_POLL_MS = 50

export class Supervisor {
  readonly #options: SupervisorOptions
  readonly #log: Logger
  #child: ChildProcess | undefined
  #exit: ChildExit | undefined
  #exited: Promise<ChildExit> | undefined
  /** The signals stop() and passStop() sent: a child that dies of one of them stopped as asked. */
  readonly #stopSignals = new Set<NodeJS.Signals>()

  constructor (options: SupervisorOptions) {
    if (options.command.length === 0) throw new FleetgateError('FLEETGATE_ERR_AGENT_COMMAND', 'no command after --')
    this.#options = options
    this.#log = options.logger.child({ component: 'supervisor' })
  }

  get pid (): number | undefined {
    return this.#child?.pid
  }

  get running (): boolean {
    return this.#child !== undefined && this.#exit === undefined
  }

  /** Whether stop() has asked the command to stop. */
  get stopping (): boolean {
    return this.#stopSignals.size > 0
  }

  /** Resolves once the child has exited (after start()). */
  get exited (): Promise<ChildExit> {
    if (!this.#exited) throw new Error('supervisor not started')
    return this.#exited
  }

  /** Resolves once the command runs; a command that cannot start is a FleetgateError (bad configuration). */
  async start (): Promise<void> {
    const [file, ...args] = this.#options.command as [string, ...string[]]
    // Its own process group: a command that does not exec its server (a shell script, `sh -c`) takes it
    // along when signalled, and a Ctrl-C or a signal to the agent's group reaches the agent alone, which
    // drains before it passes the signal on.
    const env = { ...this.#options.env }
    for (const name of WITHHELD_VARIABLES) delete env[name]
    const child = spawn(file, args, { stdio: 'inherit', env, detached: true })
    this.#child = child
    this.#exited = new Promise(resolve => {
      child.once('exit', (code, signal) => {
        this.#exit = { code, signal }
        this.#log.info({ pid: child.pid, code, signal }, 'command exited')
        resolve(this.#exit)
      })
    })
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve)
      child.once('error', err => {
        reject(new FleetgateError('FLEETGATE_ERR_AGENT_COMMAND', `${file}: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err }))
      })
    })
    child.on('error', err => this.#log.warn({ err }, 'command error'))
    this.#log.info({ pid: child.pid, command: this.#options.command }, 'command started')
  }

  /**
   * Passes a signal on to the child, if it still runs: to it alone, as tini does. A server's master
   * (gunicorn's) handles it and tells its workers what they need; sent to them too, a reload (SIGHUP)
   * or a new binary (SIGUSR2) would kill every worker at once.
   */
  signal (signal: NodeJS.Signals): void {
    if (!this.running) return
    this.#log.info({ pid: this.#child!.pid, signal }, 'forwarding signal')
    this.#child!.kill(signal)
  }

  /**
   * Sends `signal` to the command's whole process group, and waits until all of it has exited: a shell
   * that does not exec its server is gone at once while the server still drains. Whatever is left after
   * `timeoutMs` gets SIGKILL. The exit is the child's own.
   */
  async stop (signal: NodeJS.Signals, timeoutMs: number): Promise<ChildExit> {
    if (!this.#child) return { code: 0, signal: null }
    if (this.#exit) {
      await this.reap(timeoutMs)
      return this.#exit
    }
    this.#stopSignals.add(signal)
    this.#log.info({ pid: this.#child.pid, signal }, 'stopping the command')
    this.#stopGroup(signal)
    await this.#untilGroupGone(timeoutMs)
    return await this.exited
  }

  /**
   * A stop signal that comes once the command has been asked to stop: passed on to its whole group, as the
   * stop was, whatever the command makes of it (gunicorn stops at once on SIGINT or SIGQUIT after a
   * graceful SIGTERM). The stop timeout still ends with SIGKILL.
   */
  passStop (signal: NodeJS.Signals): void {
    if (!this.#child || !this.stopping) return
    this.#stopSignals.add(signal)
    this.#log.warn({ pid: this.#child.pid, signal }, 'the command is stopping; passing the signal on')
    this.#stopGroup(signal)
  }

  /**
   * After the child exited by itself: stops what it left running in its group (SIGTERM, then SIGKILL
   * after `timeoutMs`), so nothing of the instance outlives the agent.
   */
  async reap (timeoutMs: number): Promise<void> {
    if (!this.#child || !this.#groupAlive()) return
    this.#log.warn({ pid: this.#child.pid }, 'the command left processes behind; stopping them')
    this.#stopGroup('SIGTERM')
    await this.#untilGroupGone(timeoutMs)
  }

  /** Waits until the child and its group have exited; SIGKILLs the group after `timeoutMs`. */
  async #untilGroupGone (timeoutMs: number): Promise<void> {
    const deadline = performance.now() + timeoutMs
    while (this.running || this.#groupAlive()) {
      if (performance.now() >= deadline) {
        this.#log.warn({ pid: this.#child!.pid, timeoutMs }, 'command did not stop in time; killing it')
        this.#signalGroup('SIGKILL')
        await this.exited
        return
      }
      await sleep(GROUP_POLL_MS)
    }
  }

  /**
   * A stop signal, then SIGCONT, as systemd sends them: a process stopped with SIGSTOP (by hand, or a
   * debugger) holds the signal until it is continued, and would wait for SIGKILL.
   */
  #stopGroup (signal: NodeJS.Signals): void {
    this.#signalGroup(signal)
    this.#signalGroup('SIGCONT')
  }

  #signalGroup (signal: NodeJS.Signals): void {
    try {
      process.kill(-this.#child!.pid!, signal)
    } catch {} // the group is gone
  }

  /** Whether any process of the command's group is left (signal 0 only checks). */
  #groupAlive (): boolean {
    try {
      process.kill(-this.#child!.pid!, 0)
      return true
    } catch {
      return false
    }
  }

  /**
   * The agent's exit code for the child's exit: its own code; 0 if it died of a signal stop() or
   * passStop() sent (it stopped as asked); 128 + the signal number for any other signal, as shells report it.
   */
  exitCode (exit: ChildExit): number {
    if (exit.code !== null) return exit.code
    if (exit.signal && this.#stopSignals.has(exit.signal)) return 0
    return 128 + (exit.signal ? constants.signals[exit.signal] ?? 0 : 0)
  }
}
