// Forwarding one request: pick an instance, stream the request to it and its answer back, and retry on
// a different instance when that is safe (nothing was sent, or an idempotent request got no answer).

import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import { errors, type Dispatcher } from 'undici'
import type { Endpoint, Pool } from '../balancer/pool.ts'
import { ERRORS, type ErrorCode } from '../errors.ts'
import type { Logger } from '../logger.ts'
import type { AccessLog } from './access-log.ts'
import type { Deadlines, Timed } from './deadlines.ts'
import { cannotForward, carriesBody, clientResponseHeaders, hasUnsupportedTransferCoding, lacksHost, originForm, upstreamRequestHeaders } from './headers.ts'
import type { InstanceMetrics } from './instance-metrics.ts'
import type { Waiter, WaitQueue } from './queue.ts'
import type { Upstreams } from './upstreams.ts'

/** Everything an exchange needs that outlives it; one per proxy. */
export interface ForwardContext {
  readonly service: string
  readonly pool: Pool
  readonly upstreams: Upstreams
  readonly metrics: InstanceMetrics
  readonly log: Logger
  /** With --access-log: a line per request. */
  readonly accessLog: AccessLog | undefined
  readonly tries: number
  /** The instance's time to answer a sent request with its headers, and to send each next body chunk. */
  readonly headersTimeoutMs: number
  readonly idleTimeoutMs: number
  readonly deadlines: Deadlines
  /** Requests waiting for an instance under its connection limit, and how long they may wait. */
  readonly queue: WaitQueue
  readonly queueTimeoutMs: number
  /**
   * Envoy-style retry budget for requests that may have reached an instance, beyond each failed
   * instance's own allowance: retries in flight may not exceed this share of requests in flight...
   */
  readonly retryBudgetPercent: number
  /** ...but a few are always allowed. */
  readonly retryBudgetMin: number
  inFlight: number
  /** Retries on the shared budget... */
  retriesInFlight: number
  /** ...and on failed instances' own allowances. */
  instanceRetriesInFlight: number
}

/** The client sent no more of its request body for the idle timeout, while its instance was ready for more. */
class ClientStalledError extends Error {
  constructor () {
    super('the client stopped sending its request body')
  }
}

/**
 * Connections whose answer under way closes them: one with `Connection: close` set before its request
 * started (while draining), or answered so before its request's body was read (a 501, a 408). Node
 * still hands on a request pipelined behind such an answer (read past the unread body once the answer
 * is out), and no answer of it is ever sent: it is not sent to an instance either.
 */
const closingConnections = new WeakSet<Socket>()

/**
 * Connections on which Node's parser refused a request: the proxy answers it with its own 4xx, and counts
 * it (server.ts). An upload whose body turns out malformed midway is that request.
 */
const refusedConnections = new WeakSet<Socket>()

/** Marks the connection's request as refused by Node's parser; false if it was already (Node reports each chunk it reads after it). */
export function markRefused (socket: Socket): boolean {
  if (refusedConnections.has(socket)) return false
  refusedConnections.add(socket)
  return true
}

/** Whether the connection's answer under way closes it, so requests read behind it get no answer (see above). */
export function closesAfterAnswer (socket: Socket): boolean {
  return closingConnections.has(socket)
}

/** The answer under way on the connection closes it (see above). */
export function closeAfterAnswer (socket: Socket): void {
  closingConnections.add(socket)
}

/** Whether an instance's raw response head has `Connection: close`. */
function closesConnection (rawHeaders: readonly Buffer[]): boolean {
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i]!.length === 10 && rawHeaders[i]!.toString('latin1').toLowerCase() === 'connection' &&
      /(^|,)\s*close\s*(,|$)/i.test(rawHeaders[i + 1]!.toString('latin1'))) return true
  }
  return false
}

/** Answers the proxy's error `code` as JSON (README, Errors), with `extraHeaders`. */
export function answerError (res: ServerResponse, code: ErrorCode, service: string, extraHeaders?: Record<string, string>): void {
  const statusCode = ERRORS[code].statusCode
  const body = JSON.stringify({ error: code, message: ERRORS[code].message, service })
  // The reason is given: a rejected one from the instance's answer would otherwise still be set.
  res.writeHead(statusCode, STATUS_CODES[statusCode], {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    // The service is unavailable for now: no instance took the request, none is live or has room.
    ...(statusCode === 503 ? { 'retry-after': '1' } : {}),
    ...extraHeaders,
  })
  res.end(body)
}

/** Errors where the connection never carried the request: safe to send anywhere else. */
const CONNECT_FAILURES = new Set([
  'ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT',
])
/** The connection broke before any answer: the instance may have started work. */
const RESETS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED'])
const IDEMPOTENT = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE'])
/** Most header lines a request may have (Node's own default); Envoy takes 100, HAProxy 101. */
const MAX_REQUEST_HEADERS = 1_000
/** What Node rejects in a reason phrase: undici reads it as UTF-8, and an instance may send any bytes. */
const INVALID_REASON = /[^\t\x20-\x7e\x80-\xff]/

/**
 * One client request, through as many tries as it takes. A handler of undici's core dispatch
 * interface (onConnect, onHeaders, onData, onComplete, onError): the one its connections call
 * directly. The newer onResponse* interface is a wrapper over it that parses every response header
 * into an object, which the proxy would only have to rebuild.
 */
export class Exchange implements Dispatcher.DispatchHandler, Timed, Waiter {
  readonly #ctx: ForwardContext
  readonly #req: IncomingMessage
  readonly #res: ServerResponse
  readonly #startedAt = performance.now()
  readonly #hasBody: boolean
  #headers: string[] | undefined
  #endpoint: Endpoint | undefined
  #tried: Set<Endpoint> | undefined
  #tries = 0
  /** Body bytes of the answer relayed from the instance, for the access log. */
  #bytes = 0
  #attemptOpen = false
  #queued = false
  /** Whose allowance a retry of this request took: the instance that failed it, or the shared budget. */
  #retryCharge: Endpoint | 'shared' | undefined
  #lastFailure: ErrorCode = 'FLEETGATE_ERR_UPSTREAM_CONNECT'
  /** Why the next try is a retry: counted once it is sent, not when no instance is left to take it. */
  #retryReason: 'connect_failure' | 'reset_before_response' | undefined
  /** The try's failure is counted as the instance's error already: the 502, 503 or 504 that ends on it is not another. */
  #errorCounted = false
  /** The try went to an ejected instance (panic): its answer ends the ejection. */
  #sentWhileEjected = false
  #abort: ((reason?: Error) => void) | undefined
  #resume: (() => void) | undefined
  #responded = false
  #clientGone = false
  #finished = false
  #onDrain: (() => void) | undefined
  // Timed: the queue timeout, or the attempt's headers or idle deadline, kept by ctx.deadlines.
  deadline = Infinity
  previousTimed: Timed | undefined = undefined
  nextTimed: Timed | undefined = undefined
  watched = false

  constructor (ctx: ForwardContext, req: IncomingMessage, res: ServerResponse) {
    this.#ctx = ctx
    this.#req = req
    this.#res = res
    this.#hasBody = carriesBody(req)
    ctx.inFlight++
    res.on('close', this.#onClientClose)
  }

  /**
   * Sends the request to the next instance not tried yet, waits in the queue if all of those are at
   * their connection limit, or answers the error if none is left.
   */
  start (): void {
    const ctx = this.#ctx
    if (this.#tries === 0 && !this.#queued) {
      // Behind an answer that closes the connection: no answer of this request will ever be sent.
      if (closingConnections.has(this.#req.socket)) return this.#finish(undefined)
      // More header lines than the proxy passes on (server.ts has Node keep every one it reads).
      if (this.#req.rawHeaders.length > 2 * MAX_REQUEST_HEADERS) return this.#fail('FLEETGATE_ERR_HEADERS_TOO_LARGE')
      // Its body is not read as a body: the connection closes after the answer.
      if (this.#hasBody && hasUnsupportedTransferCoding(this.#req)) return this.#fail('FLEETGATE_ERR_TRANSFER_CODING', { connection: 'close' })
      // The connection closes after the 400: nothing pipelined behind it is sent.
      if (lacksHost(this.#req)) return this.#fail('FLEETGATE_ERR_BAD_REQUEST', { connection: 'close' })
      // A second Host, `OPTIONS *`: the client's fault, and no instance would take it.
      if (cannotForward(this.#req)) return this.#fail('FLEETGATE_ERR_BAD_REQUEST')
      // A new request queues behind those already waiting, even if room has just opened (an ejection ran
      // out): they go first.
      if (ctx.queue.size > 0) {
        this.#enqueue()
        return ctx.queue.serveSoon()
      }
    }
    const endpoint = ctx.pool.pick(this.#tried)
    // Room comes back when a request ends or an ejection runs out, and each wakes the queue.
    if (!endpoint && ctx.pool.atLimit(this.#tried)) {
      if (!this.#queued) this.#enqueue()
      return
    }
    if (this.#queued) this.#leaveQueue()
    if (!endpoint) {
      if (this.#tries === 0) {
        this.#ctx.metrics.noLiveInstance()
        this.#fail('FLEETGATE_ERR_NO_LIVE_INSTANCE')
      } else {
        this.#fail(this.#lastFailure)
      }
      return
    }
    // What could throw comes before the attempt is counted.
    this.#headers ??= upstreamRequestHeaders(this.#req)
    const upstream = ctx.upstreams.get(endpoint)
    this.#tries++
    if (this.#retryReason !== undefined) {
      ctx.metrics.retry(this.#retryReason)
      this.#retryReason = undefined
    }
    this.#endpoint = endpoint
    this.#errorCounted = false
    this.#sentWhileEjected = ctx.pool.isEjected(endpoint)
    this.#abort = undefined
    this.#attemptOpen = true
    endpoint.started(this.#startedAt)
    upstream.dispatch({
      path: originForm(this.#req.url),
      method: this.#req.method as Dispatcher.HttpMethod,
      headers: this.#headers,
      body: this.#hasBody ? this.#req : null,
    }, this)
  }

  onConnect (abort: (reason?: Error) => void): void {
    this.#abort = abort
    if (this.#clientGone) return abort(new Error('client closed the connection'))
    // The request is being sent. A body being uploaded is timed like any body, by the idle timeout
    // between chunks; the instance's time to answer starts once the whole request is sent.
    this.#ctx.deadlines.watch(this, this.#hasBody ? this.#ctx.idleTimeoutMs : this.#ctx.headersTimeoutMs)
  }

  onBodySent (): void {
    this.#ctx.deadlines.refresh(this, this.#ctx.idleTimeoutMs)
  }

  onRequestSent (): void {
    // An instance may answer before it has read the whole upload: then its body is being timed already.
    if (this.#hasBody && !this.#responded) this.#ctx.deadlines.watch(this, this.#ctx.headersTimeoutMs)
  }

  /** Waiting in ctx.queue: every instance it may use is at its connection limit. */
  get queued (): boolean {
    return this.#queued
  }

  get restricted (): boolean {
    return this.#tried !== undefined
  }

  onDeadline (): void {
    if (this.#queued) {
      this.#leaveQueue()
      this.#ctx.queue.timeouts++
      // A retry that waited in vain answers what failed it: it was sent before.
      return this.#fail(this.#tries > 0 ? this.#lastFailure : 'FLEETGATE_ERR_QUEUE_TIMEOUT')
    }
    // An upload that stalls while its instance would take more is the client's: 408, as HAProxy answers.
    const clientStalled = this.#hasBody && !this.#req.complete && !this.#req.isPaused()
    this.#abort?.(clientStalled ? new ClientStalledError() : this.#responded ? new errors.BodyTimeoutError() : new errors.HeadersTimeoutError())
  }

  onHeaders (statusCode: number, rawHeaders: Buffer[], resume: () => void, statusText: string): boolean {
    // 1xx informational answers (103 Early Hints) are not passed on; the final answer follows.
    if (statusCode < 200) {
      this.#ctx.deadlines.watch(this, this.#ctx.headersTimeoutMs)
      return true
    }
    this.#ctx.deadlines.watch(this, this.#ctx.idleTimeoutMs)
    if (this.#clientGone) {
      this.#ctx.pool.reportAnswer(this.#endpoint!, statusCode, this.#sentWhileEjected)
      this.#responded = true
      return true
    }
    this.#resume = resume
    // Should the head not pass Node's checks, this throws before anything reached the client: undici
    // aborts the request and onError answers 502.
    // A 204 ends with its head, and states no length (RFC 9110 8.6): one from the instance would tell a
    // client to read that much of the next answer as this one's body.
    const headers = clientResponseHeaders(rawHeaders, statusCode === 204)
    // A reason phrase Node would not write (`404 中文`) is replaced by the standard one, as Envoy does.
    if (INVALID_REASON.test(statusText)) statusText = STATUS_CODES[statusCode] ?? ''
    // An instance that answers before it has the whole upload (a 413, a 401) and closes takes no more of
    // it, and the rest would stay unread, the client stuck sending it: the client's connection closes
    // after the answer too, and says so, as the instance's did.
    if (this.#hasBody && !this.#req.complete && closesConnection(rawHeaders)) {
      closeAfterAnswer(this.#req.socket)
      this.#res.setHeader('connection', 'close')
    }
    if (this.#res.getHeaderNames().length === 0) {
      this.#res.writeHead(statusCode, statusText, headers)
    } else {
      // Headers set already (Connection: close while draining): Node would merge a list given to
      // writeHead with setHeader, which keeps only the last of repeated headers such as Set-Cookie.
      for (let i = 0; i < headers.length; i += 2) this.#res.appendHeader(headers[i]!, headers[i + 1]!)
      this.#res.writeHead(statusCode, statusText)
    }
    // Only once its head passed: one that does not is a broken answer, which onError counts.
    this.#ctx.pool.reportAnswer(this.#endpoint!, statusCode, this.#sentWhileEjected)
    this.#responded = true
    return true
  }

  onData (chunk: Buffer): boolean {
    if (this.#clientGone) return true
    this.#bytes += chunk.length
    if (this.#res.write(chunk)) {
      this.#ctx.deadlines.refresh(this, this.#ctx.idleTimeoutMs)
      return true
    }
    // The client reads slower than the instance sends: pause the instance until the client drains.
    // Meanwhile the instance is not idle, it is held back: no deadline (the client has its own timeout).
    this.#ctx.deadlines.refresh(this, Infinity)
    this.#onDrain ??= () => {
      this.#ctx.deadlines.refresh(this, this.#ctx.idleTimeoutMs)
      this.#resume!()
    }
    this.#res.once('drain', this.#onDrain)
    return false
  }

  onComplete (): void {
    this.#endAttempt()
    // Once the response finishes, Node "dumps" a request nobody read: it resumes the stream so that
    // unread body bytes are drained, and 'end' and 'close' follow over the next ticks. A request without
    // a body that is parsed to its end has nothing to drain, and nothing here waits for those events,
    // yet that was a seventh of the proxy's time on small GETs. Node skips requests marked dumped, and
    // such a request then never emits 'end' or 'close': listen on the response instead.
    if (!this.#hasBody && this.#req.complete) (this.#req as IncomingMessage & { _dumped?: boolean })._dumped = true
    if (!this.#clientGone) this.#res.end()
    this.#finish(this.#res.statusCode)
  }

  onError (error: Error): void {
    const endpoint = this.#endpoint!
    const code = (error as NodeJS.ErrnoException).code ?? ''
    // A 304 may carry the Content-Length its full answer would have (RFC 9110 8.6), and a 204 one it must
    // not; neither has a body, and undici takes that for a body cut short. The answer is whole.
    if (code === 'UND_ERR_RES_CONTENT_LENGTH_MISMATCH' && this.#responded && (this.#res.statusCode === 304 || this.#res.statusCode === 204)) return this.onComplete()
    this.#endAttempt()
    if (code === 'UND_ERR_INVALID_ARG') {
      // A request Node parsed but undici will not send, of a kind start() does not know to refuse: the
      // client's fault, not the instance's, and no other would take it.
      // Nothing reached the instance: not one of its requests on the status page either.
      endpoint.requests--
      this.#endpoint = undefined
      if (this.#clientGone) return this.#finish(499)
      return this.#fail('FLEETGATE_ERR_BAD_REQUEST')
    }
    const connectFailure = CONNECT_FAILURES.has(code)
    // Held against the instance even when the client has left meanwhile: a connect still pending then
    // ran on to its failure, and the next requests must not wait on the same instance.
    if (connectFailure) {
      this.#ctx.metrics.connectFailure(endpoint)
      this.#ctx.pool.reportConnectFailure(endpoint)
      this.#errorCounted = true
    }
    if (this.#clientGone) return this.#finish(499)
    // The rest of the body will not come: the connection cannot carry another request.
    if (error instanceof ClientStalledError) {
      if (!this.#responded) return this.#fail('FLEETGATE_ERR_CLIENT_TIMEOUT', { connection: 'close' })
      // The instance answered early and waits for the rest of the upload: the cut is the client's doing.
      this.#res.destroy()
      return this.#finish(this.#res.statusCode)
    }

    if (this.#responded) {
      // Mid-body: the status line is gone; all that is left is to cut the client off likewise.
      this.#ctx.metrics.cutOff(endpoint, this.#res.statusCode)
      this.#ctx.log.warn({ err: error, instance: endpoint.address }, 'response cut off by the instance')
      this.#res.destroy(error)
      return this.#finish(this.#res.statusCode)
    }
    // No answer came, and not for the client's doing: a reset, a timeout or a broken answer is the
    // instance's failure, as a 5xx is (Envoy's consecutive_5xx counts these too). An answer head over
    // --max-header-bytes is the proxy's own limit, not a fault of the instance's.
    // (A request whose body was read whole is destroyed too: only an aborted one is the client's doing.)
    const clientsDoing = code.startsWith('UND_ERR_REQ_') || this.#req.readableAborted
    if (!connectFailure && !clientsDoing && code !== 'UND_ERR_HEADERS_OVERFLOW') {
      this.#ctx.pool.reportServerError(endpoint)
      // The instance's error on the status page, as a failed connect is, even when a retry elsewhere succeeds.
      this.#ctx.metrics.failedBeforeAnswer(endpoint)
      this.#errorCounted = true
    }
    const bodyIntact = !this.#hasBody || (!this.#req.readableDidRead && !this.#req.destroyed)
    const reset = RESETS.has(code)
    const retryable = bodyIntact && (connectFailure || (reset && IDEMPOTENT.has(this.#req.method ?? '')))
    // A failed connect sent nothing and loaded no instance: it is requeued outside the retry budget,
    // which guards instances against retry storms of requests they may already have worked on.
    if (retryable && this.#tries < this.#ctx.tries && (connectFailure || this.#chargeRetry(endpoint))) {
      (this.#tried ??= new Set()).add(endpoint)
      this.#lastFailure = code === 'UND_ERR_CONNECT_TIMEOUT'
        ? 'FLEETGATE_ERR_UPSTREAM_TIMEOUT'
        : connectFailure ? 'FLEETGATE_ERR_UPSTREAM_CONNECT' : 'FLEETGATE_ERR_UPSTREAM_RESET'
      this.#retryReason = connectFailure ? 'connect_failure' : 'reset_before_response'
      return this.start()
    }
    if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_CONNECT_TIMEOUT') return this.#fail('FLEETGATE_ERR_UPSTREAM_TIMEOUT')
    if (connectFailure) return this.#fail('FLEETGATE_ERR_UPSTREAM_CONNECT')
    if (reset) return this.#fail('FLEETGATE_ERR_UPSTREAM_RESET')
    if (clientsDoing) {
      // The client's own body broke (aborted upload, wrong length): nobody is left to answer.
      this.#res.destroy()
      return this.#finish(499)
    }
    this.#ctx.log.warn({ err: error, instance: endpoint.address }, 'upstream protocol error')
    this.#fail('FLEETGATE_ERR_UPSTREAM_PROTOCOL')
  }

  #endAttempt (): void {
    const ctx = this.#ctx
    ctx.deadlines.unwatch(this)
    if (!this.#attemptOpen) return
    this.#attemptOpen = false
    this.#endpoint!.inflight--
    ctx.metrics.ended(this.#endpoint!)
    ctx.queue.serveSoon()
  }

  #enqueue (): void {
    const ctx = this.#ctx
    this.#queued = true
    ctx.queue.add(this)
    ctx.deadlines.watch(this, ctx.queueTimeoutMs)
  }

  #leaveQueue (): void {
    this.#queued = false
    this.#ctx.queue.delete(this)
    this.#ctx.deadlines.unwatch(this)
  }

  /**
   * Whether a request that may have reached `failed` can be sent again, and whose allowance it takes.
   * An instance that dies takes with it every request it was carrying, and each of its connections
   * fails once: as many retries as it recently carried at once are allowed on its own account, so
   * losing an instance fails no idempotent request. Those accounts together may not hold more than one
   * instance's worth, so a fleet that resets everywhere (overload) gets no more than that plus the
   * shared budget (Envoy's: a share of all requests in flight, with room for a few).
   */
  #chargeRetry (failed: Endpoint): boolean {
    if (this.#retryCharge !== undefined) return true
    const ctx = this.#ctx
    const allowance = failed.recentPeakInflight
    if (failed.retriesInFlight < allowance && ctx.instanceRetriesInFlight < allowance) {
      failed.retriesInFlight++
      ctx.instanceRetriesInFlight++
      this.#retryCharge = failed
      return true
    }
    if (ctx.retriesInFlight < Math.max(ctx.retryBudgetMin, (ctx.inFlight * ctx.retryBudgetPercent) / 100)) {
      ctx.retriesInFlight++
      this.#retryCharge = 'shared'
      return true
    }
    return false
  }

  #fail (code: ErrorCode, extraHeaders?: Record<string, string>): void {
    const statusCode = ERRORS[code].statusCode
    if (extraHeaders?.connection === 'close') closeAfterAnswer(this.#req.socket)
    if (!this.#clientGone && !this.#res.headersSent) answerError(this.#res, code, this.#ctx.service, extraHeaders)
    this.#finish(statusCode)
  }

  /**
   * The request is done with; `undefined`: it is not counted, never answered nor sent, or answered by
   * the proxy's refusal of what Node's parser could not read, which counts it.
   */
  #finish (statusCode: number | undefined): void {
    if (this.#finished) return
    this.#finished = true
    // Its body broke off where Node's parser refused it: the client got the proxy's 400, counted as such.
    if (statusCode === 499 && !this.#req.complete && refusedConnections.has(this.#req.socket)) statusCode = undefined
    if (this.#retryCharge === 'shared') {
      this.#ctx.retriesInFlight--
    } else if (this.#retryCharge !== undefined) {
      this.#retryCharge.retriesInFlight--
      this.#ctx.instanceRetriesInFlight--
    }
    this.#retryCharge = undefined
    this.#ctx.inFlight--
    if (statusCode !== undefined) {
      const seconds = (performance.now() - this.#startedAt) / 1000
      this.#ctx.metrics.finished(this.#endpoint, this.#req.method ?? 'GET', statusCode, seconds, this.#errorCounted)
      this.#ctx.accessLog?.(this.#req, statusCode, this.#endpoint, this.#tries, seconds, this.#bytes)
    }
  }

  /** The client went away: stop the upstream request too. */
  readonly #onClientClose = (): void => {
    if (this.#clientGone || this.#finished || this.#res.writableFinished) return
    this.#clientGone = true
    if (this.#queued) {
      this.#leaveQueue()
      return this.#finish(499)
    }
    this.#abort?.(new Error('client closed the connection'))
  }
}
