// ConsulRegistrar: holds the instance's service registration in the local Consul agent, with a TTL check
// the registrar passes while the agent wants the instance registered. It converges on what the agent asked
// after every failure, and registers again when Consul lost the registration (an agent restarted empty).

import { FleetgateError } from '../errors.ts'
import type { ConsulClient, ConsulResponse } from '../consul/client.ts'
import { answerError, goDuration, requestError } from '../consul/client.ts'
import type { Logger } from '../logger.ts'
import type { InstanceState } from '../membership/instance.ts'
import { META_STATE } from '../membership/consul.ts'
import { DesiredRegistration, type Desired, type Registrar, type RegistrarEvent, type RegistrarStatus } from './registrar.ts'

export interface ConsulRegistrarOptions {
  readonly client: ConsulClient
  readonly service: string
  /** The Consul service ID. */
  readonly id: string
  readonly host: string
  readonly port: number
  readonly weight: number
  /** Written as Service.Meta keys (see consulMeta). */
  readonly labels: Readonly<Record<string, string>>
  readonly tags: readonly string[]
  /** The TTL check's TTL: how soon Consul fails the instance when this agent stops passing it. */
  readonly ttlMs: number
  readonly logger: Logger
  readonly onEvent?: (event: RegistrarEvent) => void
}

/** Consul refuses a DeregisterCriticalServiceAfter below one minute. */
const MIN_DEREGISTER_AFTER_MS = 60_000
const REQUEST_TIMEOUT_MS = 5_000
const RETRY_BASE_MS = 250
const RETRY_MAX_MS = 5_000
/** How long close() may spend removing a registration that is still there. */
const CLOSE_DEADLINE_MS = 2_000
/** Consul's rule for Meta keys; `consul-` is reserved, `fleetgate_` is ours. */
const META_KEY = /^[A-Za-z0-9_-]{1,128}$/
const MAX_META_KEYS = 64
const MAX_META_VALUE = 512

/** The instance's labels as Service.Meta, checked against Consul's rules so a bad label fails at start. */
export function consulMeta (labels: Readonly<Record<string, string>>): Record<string, string> {
  const meta: Record<string, string> = {}
  for (const [key, value] of Object.entries(labels)) {
    if (!META_KEY.test(key) || key.startsWith('consul-') || key.startsWith('fleetgate_')) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--labels: ${JSON.stringify(key)} cannot be a Consul Meta key: expected letters, digits, "_" and "-", not starting with "consul-" or "fleetgate_"`)
    }
    if (value.length > MAX_META_VALUE) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--labels: the value of ${JSON.stringify(key)} is longer than Consul's ${MAX_META_VALUE} characters`)
    }
    meta[key] = value
  }
  if (Object.keys(meta).length >= MAX_META_KEYS) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--labels: at most ${MAX_META_KEYS - 1} labels with Consul (it allows ${MAX_META_KEYS} Meta keys; fleetgate uses one)`)
  }
  return meta
}

export class ConsulRegistrar implements Registrar {
  readonly #options: ConsulRegistrarOptions
  readonly #log: Logger
  readonly #meta: Record<string, string>
  readonly #checkId: string
  readonly #stop = new AbortController()
  readonly #desired = new DesiredRegistration()
  #registered = false
  #state: InstanceState | undefined
  /** Consul is known to hold no registration of ours (deregistered, or found missing). */
  #knownAbsent = false
  /** A registration was sent since the last removal: Consul may hold it though no answer said so. */
  #maybeRegistered = false
  #connected = false
  #lastError: string | undefined
  #failures = 0
  #running = false
  #dirty = false
  /** The next pass through the loop sends the TTL pass (or, with nothing registered, a liveness probe). */
  #tickDue = false
  #tickTimer: NodeJS.Timeout | undefined
  #retryTimer: NodeJS.Timeout | undefined
  #loopDone: Promise<void> = Promise.resolve()
  #closed = false
  /** Consul answered a request of the current step (an error answer too: it is there). */
  #answered = false

  constructor (options: ConsulRegistrarOptions) {
    this.#options = options
    this.#meta = consulMeta(options.labels)
    this.#checkId = `service:${options.id}`
    this.#log = options.logger.child({ component: 'registrar', consul: options.client.address.origin, serviceId: options.id })
  }

  /** How often the TTL is passed: a third of it, so two passes may fail before Consul fails the check. */
  get passIntervalMs (): number {
    return Math.max(100, Math.floor(this.#options.ttlMs / 3))
  }

  start (): void {
    if (this.#closed || this.#tickTimer) return
    this.#tickTimer = setInterval(() => {
      this.#tickDue = true
      this.#request()
    }, this.passIntervalMs)
    this.#tickTimer.unref()
    this.#tickDue = true
    this.#request()
  }

  register (state: InstanceState): Promise<void> {
    return this.#want({ kind: 'registered', state })
  }

  setState (state: InstanceState): Promise<void> {
    return this.#want({ kind: 'registered', state })
  }

  deregister (): Promise<void> {
    return this.#want({ kind: 'absent' })
  }

  /**
   * Stops passing the TTL and removes a registration that is still there (within a short deadline). If
   * Consul cannot be reached, the TTL check fails on its own and Consul reaps the service after
   * DeregisterCriticalServiceAfter.
   */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearInterval(this.#tickTimer)
    clearTimeout(this.#retryTimer)
    this.#desired.releaseAll()
    // Ends a step still waiting on Consul; the removal below has its own deadline.
    this.#stop.abort()
    await this.#loopDone
    if (this.#registered || this.#maybeRegistered || this.#desired.current.kind === 'registered') {
      try {
        await this.#deregisterNow(AbortSignal.timeout(CLOSE_DEADLINE_MS))
      } catch (err) {
        this.#log.warn({ err }, 'could not deregister on close; the TTL check will fail and Consul will reap the service')
      }
    }
    this.#markAbsent()
    await this.#options.client.close()
  }

  status (): RegistrarStatus {
    return {
      registry: 'consul',
      key: this.#options.id,
      connected: this.#connected,
      session: undefined,
      desired: this.#desired.current,
      registered: this.#registered,
      state: this.#registered ? this.#state : undefined,
      lastError: this.#lastError,
    }
  }

  #want (desired: Desired): Promise<void> {
    if (this.#closed) return Promise.resolve()
    const done = this.#desired.want(desired)
    this.#request()
    return done
  }

  #request (): void {
    if (this.#closed) return
    if (this.#running) {
      this.#dirty = true
      return
    }
    clearTimeout(this.#retryTimer)
    this.#loopDone = this.#loop()
  }

  async #loop (): Promise<void> {
    this.#running = true
    try {
      do {
        this.#dirty = false
        const version = this.#desired.version
        try {
          this.#answered = false
          const settled = await this.#converge(this.#desired.current)
          // A step with nothing to send proves nothing about Consul.
          if (this.#answered) this.#noteReachable()
          if (settled) this.#desired.reached(version)
          if (!settled) this.#dirty = true
        } catch (err) {
          if (this.#closed) return
          this.#noteFailure(err)
          // An error answer (a failure without a network cause) is Consul answering: it is there.
          if ((err as { cause?: unknown }).cause === undefined) this.#noteAnswered()
          const capped = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** Math.min(this.#failures - 1, 20))
          this.#retryTimer = setTimeout(() => this.#request(), capped / 2 + Math.random() * capped / 2)
          this.#retryTimer.unref()
          return
        }
      } while (this.#dirty && !this.#closed)
    } finally {
      this.#running = false
    }
  }

  /** One step towards `desired`; false when it must run again (the registration was found missing). */
  async #converge (desired: Desired): Promise<boolean> {
    const tick = this.#tickDue
    this.#tickDue = false
    try {
      return await this.#step(desired, tick)
    } catch (err) {
      // The TTL pass (or the probe) that was due did not get through: the retry sends it again.
      if (tick) this.#tickDue = true
      throw err
    }
  }

  async #step (desired: Desired, tick: boolean): Promise<boolean> {
    if (desired.kind === 'registered') {
      if (!this.#registered || this.#state !== desired.state) {
        await this.#register(desired.state)
        // Over a leftover (a crashed run's, gone critical), Consul keeps the check's status: passed now,
        // not a third of the TTL later.
        return this.#passTtl(true)
      }
      if (tick) return this.#passTtl()
      return true
    }
    if (desired.kind === 'absent' && !this.#knownAbsent) {
      await this.#deregisterNow()
      this.#log.info('deregistered')
      this.#knownAbsent = true
      this.#markAbsent()
      return true
    }
    // Nothing to write: a cheap call that needs no ACL keeps registry_connected honest.
    if (tick) await this.#call('GET', '/v1/status/leader')
    return true
  }

  async #register (state: InstanceState): Promise<void> {
    const { service, id, host, port, weight, tags, ttlMs } = this.#options
    // Consul may apply it even if its answer never comes (a timeout, a lost connection, close()): from
    // now on, a removal must be sent.
    this.#knownAbsent = false
    this.#maybeRegistered = true
    await this.#call('PUT', '/v1/agent/service/register', {
      ID: id,
      Name: service,
      Address: host,
      Port: port,
      Tags: tags,
      Meta: { ...this.#meta, [META_STATE]: state },
      Weights: { Passing: weight, Warning: 1 },
      Check: {
        CheckID: this.#checkId,
        Name: 'fleetgate agent',
        Notes: 'Passed by fleetgate agent while the instance is healthy',
        TTL: goDuration(ttlMs),
        DeregisterCriticalServiceAfter: goDuration(Math.max(MIN_DEREGISTER_AFTER_MS, ttlMs * 6)),
        // A new check starts critical otherwise. Re-registering an existing one keeps its status in Consul.
        Status: 'passing',
      },
    })
    const created = !this.#registered
    this.#registered = true
    this.#knownAbsent = false
    this.#state = state
    this.#log.info({ state, created }, created ? 'registered' : 'registration updated')
    this.#emit({ type: 'registered', state, created })
  }

  /** Passes the TTL. A refusal means the check is gone or never was: look, and register again if so. */
  async #passTtl (justRegistered = false): Promise<boolean> {
    const path = `/v1/agent/check/pass/${encodeURIComponent(this.#checkId)}`
    const res = await this.#send('PUT', path)
    if (res.status === 200) return true
    // The check was just written, or Consul asks to slow down: registering again would be refused again
    // at once, in a loop without back-off. Fail the step: the retry backs off.
    if (justRegistered || res.status === 429) throw answerError('PUT', path, res)
    // Consul answers 404 (newer) or 500 "does not have associated TTL" (older) for an unknown check; don't
    // guess from the text: ask whether the service is there.
    const lookup = await this.#send('GET', `/v1/agent/service/${encodeURIComponent(this.#options.id)}`)
    if (lookup.status === 404) {
      this.#log.warn({ pass: res.status }, 'consul lost the registration (agent restarted?); registering again')
      this.#markAbsent()
      return false
    }
    if (lookup.status === 200) {
      // The service is there but its check is not (someone re-registered it without ours): write ours again.
      this.#log.warn({ pass: res.status }, 'the registration lost its TTL check; registering again')
      this.#registered = false
      return false
    }
    throw answerError('PUT', path, res)
  }

  async #deregisterNow (signal?: AbortSignal): Promise<void> {
    const path = `/v1/agent/service/deregister/${encodeURIComponent(this.#options.id)}`
    const res = await this.#send('PUT', path, undefined, signal)
    // Not there is what we wanted.
    if (res.status !== 200 && res.status !== 404) throw answerError('PUT', path, res)
  }

  async #call (method: 'GET' | 'PUT', path: string, body?: unknown): Promise<ConsulResponse> {
    const res = await this.#send(method, path, body)
    if (res.status !== 200) throw answerError(method, path, res)
    return res
  }

  async #send (method: 'GET' | 'PUT', path: string, body?: unknown, signal?: AbortSignal): Promise<ConsulResponse> {
    try {
      const res = await this.#options.client.request({
        method, path, body, headersTimeoutMs: REQUEST_TIMEOUT_MS, signal: signal ?? this.#stop.signal,
      })
      this.#answered = true
      return res
    } catch (err) {
      throw requestError(method, path, err)
    }
  }

  #noteReachable (): void {
    if (this.#failures > 0) this.#log.info({ failures: this.#failures }, 'consul reachable again')
    this.#failures = 0
    this.#lastError = undefined
    this.#noteAnswered()
  }

  #noteAnswered (): void {
    if (!this.#connected) {
      this.#connected = true
      this.#emit({ type: 'connected', newSession: false })
    }
  }

  #noteFailure (err: unknown): void {
    this.#failures++
    const wrapped = new FleetgateError('FLEETGATE_ERR_AGENT_REGISTRATION', this.#options.id, { cause: err })
    const text = err instanceof Error ? err.message : String(err)
    // Once per streak at warn level (and when the error changes); the retries at debug.
    const level = this.#failures === 1 || text !== this.#lastError ? 'warn' : 'debug'
    this.#log[level]({ err: wrapped, failures: this.#failures, desired: this.#desired.current.kind }, 'consul registration step failed; will retry')
    this.#lastError = text
    // A network error or a timeout means Consul is out of reach; an HTTP error answer means it is there.
    const unreachable = (err as { cause?: unknown }).cause !== undefined
    if (unreachable && this.#connected) {
      this.#connected = false
      this.#emit({ type: 'disconnected' })
    }
  }

  #markAbsent (): void {
    this.#maybeRegistered = false
    if (!this.#registered) return
    this.#registered = false
    this.#emit({ type: 'deregistered' })
  }

  #emit (event: RegistrarEvent): void {
    try {
      this.#options.onEvent?.(event)
    } catch (err) {
      this.#log.error({ err }, 'registrar event listener failed')
    }
  }
}
