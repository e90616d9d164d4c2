// Agent: the state machine beside one instance. Health passes rise/fall, and only a transition changes
// the registration; maintenance drains without stopping; SIGTERM drains, deregisters, then stops the
// wrapped command; a command that dies is deregistered at once.

import { FleetgateError } from '../errors.ts'
import type { Logger } from '../logger.ts'
import type { AgentMetrics } from '../metrics.ts'
import { HealthChecker, RiseFall, type Health, type Probe, type ProbeResult } from './health-check.ts'
import type { Registrar, RegistrarEvent, RegistrarStatus } from './registrar.ts'
import type { ChildExit, Supervisor } from './supervisor.ts'

export interface AgentOptions {
  readonly service: string
  readonly id: string
  readonly registrar: Registrar
  readonly probe: Probe
  readonly healthIntervalMs: number
  readonly rise: number
  readonly fall: number
  /** On SIGTERM, how long the registration says draining before it is removed. */
  readonly drainMs: number
  /** How long a wrapped command may take to exit after its signal before it is killed. */
  readonly stopTimeoutMs: number
  readonly supervisor?: Supervisor
  readonly metrics: AgentMetrics
  readonly logger: Logger
}

/** running: following health; draining: shutting down, the registration says draining; stopped: done. */
export type AgentPhase = 'running' | 'draining' | 'stopped'

export interface AgentStatus {
  service: string
  id: string
  phase: AgentPhase
  health: Health
  maintenance: boolean
  lastCheck: { ok: boolean, detail: string, durationMs: number, at: string } | null
  streak: { passes: number, failures: number }
  registration: RegistrarStatus
  command: { pid: number | undefined, running: boolean } | null
}

/** How long a registry write may hold up a shutdown or a child's exit when the registry is unreachable. */
const WRITE_DEADLINE_MS = 2_000

export class Agent {
  readonly #options: AgentOptions
  readonly #log: Logger
  readonly #riseFall: RiseFall
  readonly #checker: HealthChecker
  readonly #labels: { service: string, instance: string }
  #phase: AgentPhase = 'running'
  #maintenance = false
  #lastCheck: (ProbeResult & { atMs: number }) | undefined
  #done: Promise<number>
  #finish!: (code: number) => void
  #shutdown: Promise<number> | undefined
  /** Ends the drain wait early: a second signal, or the wrapped command died. */
  #cutDrain: (() => void) | undefined
  #drainCut = false
  /** Whether health has left unknown: the first rise or fall sets where the instance starts. */
  #settled = false

  constructor (options: AgentOptions) {
    this.#options = options
    this.#log = options.logger.child({ component: 'agent', service: options.service, instance: options.id })
    this.#labels = { service: options.service, instance: options.id }
    this.#riseFall = new RiseFall({ rise: options.rise, fall: options.fall })
    this.#checker = new HealthChecker({
      probe: options.probe,
      intervalMs: options.healthIntervalMs,
      riseFall: this.#riseFall,
      onResult: (result, transition) => this.#onCheck(result, transition),
    })
    this.#done = new Promise(resolve => { this.#finish = resolve })
    options.metrics.registered.set(this.#labels, 0)
    options.metrics.draining.set(this.#labels, 0)
    options.metrics.registryConnected.set(this.#labels, 0)
    // From 0: a series that first shows at 1 is no increase() to Prometheus, and the first fall is the one that matters.
    for (const result of ['pass', 'fail']) options.metrics.healthChecks.inc({ ...this.#labels, result }, 0)
    for (const to of ['healthy', 'unhealthy']) options.metrics.transitions.inc({ ...this.#labels, to }, 0)
  }

  /** Resolves with the process exit code once the agent has stopped (shutdown, or the command exited). */
  get done (): Promise<number> {
    return this.#done
  }

  get phase (): AgentPhase {
    return this.#phase
  }

  start (): void {
    this.#options.registrar.start()
    this.#checker.start()
    this.#options.supervisor?.exited.then(exit => this.#onCommandExit(exit), () => {})
    this.#log.info({ rise: this.#options.rise, fall: this.#options.fall, intervalMs: this.#options.healthIntervalMs }, 'agent started; checking health')
  }

  /**
   * Puts the instance into draining (true) or back to up (false) without stopping anything. It holds
   * through health transitions: an instance that recovers comes back as draining. Resolves once the
   * registry says so (or after a short deadline); false when the agent is shutting down.
   */
  async setMaintenance (draining: boolean): Promise<boolean> {
    if (this.#phase !== 'running') return false
    if (this.#maintenance !== draining) this.#log.info({ maintenance: draining }, draining ? 'maintenance: draining' : 'maintenance over')
    this.#maintenance = draining
    await this.#written(this.#apply())
    return true
  }

  /**
   * SIGTERM: registration to draining, wait drainMs, deregister, stop the command, resolve `done`.
   * An instance that is not registered has nothing to drain and stops at once. A second call cuts the
   * drain wait short; once the command has been asked to stop, each further call passes its signal on to
   * it (as tini does), and --stop-timeout-ms still bounds the wait with SIGKILL.
   */
  shutdown (signal: NodeJS.Signals = 'SIGTERM'): Promise<number> {
    if (this.#shutdown) {
      const supervisor = this.#options.supervisor
      if (this.#phase === 'draining' && !this.#drainCut) {
        this.#log.warn({ signal }, 'second signal: ending the drain now')
        this.#endDrain()
      } else if (supervisor?.stopping) {
        supervisor.passStop(signal)
      } else {
        // Between the drain and the command's stop (the deregistration under way), or stopping already
        // without a command: every step left is under way, each with its deadline.
        this.#log.warn({ signal, command: supervisor ? (supervisor.running ? 'not stopped yet' : 'exited') : 'none' }, 'already stopping')
      }
      return this.#shutdown
    }
    this.#shutdown = this.#drainAndStop(signal)
    this.#shutdown.then(code => this.#finish(code), err => {
      this.#log.error({ err }, 'shutdown failed')
      this.#finish(1)
    })
    return this.#shutdown
  }

  status (): AgentStatus {
    const supervisor = this.#options.supervisor
    const check = this.#lastCheck
    return {
      service: this.#options.service,
      id: this.#options.id,
      phase: this.#phase,
      health: this.#riseFall.health,
      maintenance: this.#maintenance,
      lastCheck: check ? { ok: check.ok, detail: check.detail, durationMs: check.durationMs, at: new Date(check.atMs).toISOString() } : null,
      streak: this.#riseFall.streak,
      registration: this.#options.registrar.status(),
      command: supervisor ? { pid: supervisor.pid, running: supervisor.running } : null,
    }
  }

  /** Registry events, for the metrics (wired by whoever builds the registrar). */
  noteRegistration (event: RegistrarEvent): void {
    const m = this.#options.metrics
    switch (event.type) {
      case 'registered':
        m.registered.set(this.#labels, 1)
        m.draining.set(this.#labels, event.state === 'draining' ? 1 : 0)
        break
      case 'deregistered':
        m.registered.set(this.#labels, 0)
        m.draining.set(this.#labels, 0)
        break
      case 'connected':
        m.registryConnected.set(this.#labels, 1)
        break
      case 'disconnected':
        m.registryConnected.set(this.#labels, 0)
        break
      case 'expired':
        m.registryConnected.set(this.#labels, 0)
        m.sessionExpirations.labels(this.#options.service).inc()
        break
    }
  }

  #onCheck (result: ProbeResult, transition: Health | undefined): void {
    this.#lastCheck = { ...result, atMs: Date.now() }
    this.#options.metrics.healthChecks.inc({ ...this.#labels, result: result.ok ? 'pass' : 'fail' })
    if (!result.ok) this.#log.debug({ detail: result.detail, streak: this.#riseFall.streak }, 'health check failed')
    if (!transition || this.#phase !== 'running') return
    const first = !this.#settled
    this.#settled = true
    if (transition === 'unhealthy' && first) {
      // An instance still starting (not listening yet) was never healthy: that is where it starts, not a
      // change worth a warning or a transition. A registration left by an earlier run goes all the same.
      this.#log.info({ detail: result.detail, fall: this.#options.fall }, 'instance not healthy yet: not registering')
      void this.#apply()
      return
    }
    this.#options.metrics.transitions.inc({ ...this.#labels, to: transition })
    if (transition === 'healthy') {
      this.#log.info({ detail: result.detail, rise: this.#options.rise }, 'instance healthy: registering')
    } else {
      const err = new FleetgateError('FLEETGATE_ERR_AGENT_HEALTH_CHECK', `${result.detail}, ${this.#options.fall} times in a row`)
      this.#log.warn({ err, detail: result.detail, fall: this.#options.fall }, 'instance unhealthy: deregistering')
    }
    void this.#apply()
  }

  /** Tells the registrar what the registration should be now. Only transitions and operators call it. */
  #apply (): Promise<void> {
    const registrar = this.#options.registrar
    switch (this.#riseFall.health) {
      case 'healthy':
        return registrar.register(this.#maintenance ? 'draining' : 'up')
      case 'unhealthy':
        return registrar.deregister()
      case 'unknown':
        // Not known yet: a registration left by an earlier run stays until the first threshold is met.
        return Promise.resolve()
    }
  }

  async #drainAndStop (signal: NodeJS.Signals): Promise<number> {
    const { registrar, supervisor } = this.#options
    this.#phase = 'draining'
    this.#checker.stop()
    // What the registry holds, not what was asked of it: a registration asked for but never written (the
    // registry unreachable since the start, or its write refused) has nothing to drain. One written
    // before the registry went out of reach is still there, for as long as the session lives.
    const registered = registrar.status().registered
    if (registered && !this.#drainCut) {
      const startedAt = performance.now()
      await this.#written(registrar.setState('draining'))
      const details = { signal, drainMs: this.#options.drainMs, writeMs: Math.round(performance.now() - startedAt) }
      const status = registrar.status()
      if (status.state === 'draining') {
        this.#log.info(details, 'draining: no new requests; in-flight ones finish')
      } else {
        // Out of reach (or too slow), the registry still says up, and proxies still send new requests: say
        // so rather than claim a drain. The wait still lets the instance serve those until it ends.
        this.#log.warn({ ...details, connected: status.connected, lastError: status.lastError }, 'draining not written: the registry still says up; waiting the drain anyway')
      }
      await this.#drainWait()
    } else {
      this.#log.info({ signal }, 'not registered: nothing to drain')
    }
    await this.#written(registrar.deregister())
    let code = 0
    if (supervisor) {
      const exit = await supervisor.stop(signal === 'SIGINT' ? 'SIGINT' : 'SIGTERM', this.#options.stopTimeoutMs)
      code = supervisor.exitCode(exit)
    }
    await registrar.close()
    this.#phase = 'stopped'
    this.#log.info({ code }, 'agent stopped')
    return code
  }

  /**
   * Waits for a registry write, but at most WRITE_DEADLINE_MS, and not at all while the registry is
   * unreachable: the registrar keeps trying on its own, and closing the session removes the znode anyway.
   */
  #written (write: Promise<void>): Promise<void> {
    if (!this.#options.registrar.status().connected) return Promise.resolve()
    return withDeadline(write, WRITE_DEADLINE_MS)
  }

  #drainWait (): Promise<void> {
    // A second signal, or the command's exit, while the draining write was pending has already cut it.
    if (this.#drainCut) return Promise.resolve()
    return new Promise(resolve => {
      const timer = setTimeout(() => this.#endDrain(), this.#options.drainMs)
      this.#cutDrain = () => {
        clearTimeout(timer)
        resolve()
      }
    })
  }

  #endDrain (): void {
    this.#drainCut = true
    this.#cutDrain?.()
    this.#cutDrain = undefined
  }

  /** The wrapped command died: the instance is gone, so its registration goes now, not at session expiry. */
  #onCommandExit (exit: ChildExit): void {
    if (this.#phase === 'draining') {
      // Stopping anyway; nobody is left to serve the rest of the drain.
      if (!this.#drainCut) this.#endDrain()
      return
    }
    if (this.#phase !== 'running') return
    this.#log.warn({ code: exit.code, signal: exit.signal }, 'command exited: deregistering now')
    this.#phase = 'stopped'
    this.#checker.stop()
    const { registrar, supervisor } = this.#options
    const stop = async (): Promise<number> => {
      await this.#written(registrar.deregister())
      await supervisor!.reap(this.#options.stopTimeoutMs)
      await registrar.close()
      return supervisor!.exitCode(exit)
    }
    this.#shutdown = stop()
    this.#shutdown.then(code => this.#finish(code), () => this.#finish(1))
  }
}

function withDeadline (promise: Promise<unknown>, ms: number): Promise<void> {
  return new Promise(resolve => {
    const timer = setTimeout(resolve, ms)
    promise.then(() => { clearTimeout(timer); resolve() }, () => { clearTimeout(timer); resolve() })
  })
}
