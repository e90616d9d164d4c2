// The proxy: a Fastify catch-all route that hijacks the raw request and forwards it through the pool,
// plus WebSocket upgrades, the admin listener and a graceful shutdown. createProxy() wires a source to
// all of it and never listens until asked, so tests can build many.

import { createServer, METHODS, type IncomingMessage, type ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { Pool, type Endpoint } from '../balancer/pool.ts'
import type { ProxyConfig } from '../config.ts'
import { splitHostPort } from '../config.ts'
import { ERRORS, listenFor } from '../errors.ts'
import type { Logger } from '../logger.ts'
import { INVALID_REASONS } from '../membership/instance.ts'
import { RemoteSource } from '../membership/remote.ts'
import type { MembershipSource, SourceState } from '../membership/source.ts'
import { createProxyMetrics, createRegistry, type ProxyMetrics } from '../metrics.ts'
import { createAccessLog, rememberClient } from './access-log.ts'
import { buildAdmin } from './admin.ts'
import { Deadlines } from './deadlines.ts'
import { answerError, closeAfterAnswer, closesAfterAnswer, Exchange, markRefused, type ForwardContext } from './forward.ts'
import { cannotForward, carriesBody, lacksHost } from './headers.ts'
import { InstanceMetrics } from './instance-metrics.ts'
import { WaitQueue } from './queue.ts'
import { renderStatusPage } from './status-page.ts'
import { reportTraffic, type ReportedCollectors, type TrafficReport } from './traffic-report.ts'
import { afterEarlierAnswers, answerGoingOut, offersOnlyH2c, proxyUpgrade, refuse, serveWithoutUpgrade, type UpgradeContext } from './upgrade.ts'
import { Upstreams } from './upstreams.ts'

export type ProxyOptions = Pick<ProxyConfig,
  'service' | 'listen' | 'connectTimeoutMs' | 'headersTimeoutMs' | 'idleTimeoutMs' | 'clientKeepAliveTimeoutMs' | 'tries' |
  'ejectBaseMs' | 'ejectMaxMs' | 'ejectAfterErrors' | 'panicThresholdPercent' | 'shutdownTimeoutMs' | 'maxHeaderBytes' |
  'maxConnectionsPerInstance' | 'queueTimeoutMs' | 'slowStartMs' | 'accessLog'> & {
  /** Without one, no admin listener (a worker of a multi-process proxy: the primary has it). */
  readonly adminListen: string | undefined
}

export interface Proxy {
  readonly app: FastifyInstance
  readonly admin: FastifyInstance
  readonly pool: Pool
  readonly source: MembershipSource
  readonly metrics: ProxyMetrics
  /** Starts the source (without waiting for it) and both listeners. */
  listen(): Promise<{ port: number, adminPort: number | undefined }>
  /** Stops accepting, lets in-flight requests finish until shutdownTimeoutMs, then closes the source. */
  close(): Promise<void>
  status(): ProxyStatus
  /** Traffic and pool as plain numbers, for a multi-process proxy's primary to add up (traffic-report.ts). */
  report(): TrafficReport
}

export interface ProxyStatus {
  service: string
  ready: boolean
  source: { kind: string, status: string, stale: boolean, revision: number | null, changedAt: string | null }
  instances: Array<{
    id: string, address: string, state: string, weight: number, labels: Record<string, string>,
    inflight: number, requests: number, errors: number, p50Ms: number | null, p99Ms: number | null, changedAt: string
    /** While the instance is in slow start (--slow-start-ms), when it ends; else null. */
    slowStartUntil: string | null
  }>
  /**
   * The connection limit per instance and process (null: none), and the requests waiting under it now and
   * that waited out the queue timeout (HAProxy's `maxconn`, `qcur` and `timeout queue`).
   */
  queue: { limitPerInstance: number | null, timeoutMs: number, waiting: number, timedOut: number }
}

/** The queue part of /status: the configured limit and timeout, and the counts given. */
export function describeQueue (options: Pick<ProxyOptions, 'maxConnectionsPerInstance' | 'queueTimeoutMs'>, waiting: number, timedOut: number): ProxyStatus['queue'] {
  const limit = options.maxConnectionsPerInstance
  return { limitPerInstance: limit === 0 ? null : limit, timeoutMs: options.queueTimeoutMs, waiting, timedOut }
}

/**
 * Connections the kernel may hold before the proxy accepts them. Node's default (511) drops the SYNs of
 * a burst of new clients, which then wait a 1 s retransmit; the kernel caps it at net.core.somaxconn.
 */
const LISTEN_BACKLOG = 4096

/** While draining, how long a client connection whose response is done may wait for a next request. */
const DRAIN_KEEP_ALIVE_MS = 500

/** Upstream keep-alive, below gunicorn's 2 s default so an idle socket is not reused just as it closes. */
const UPSTREAM_KEEP_ALIVE_MS = 1_500

/** What a pipelined request waiting for the answer before it counts for in Node's flood guard (see proxyRequest). */
const PIPELINED_REQUEST_BYTES = 1024

export function createProxy (options: ProxyOptions, source: MembershipSource, logger: Logger): Proxy {
  const service = options.service
  const log = logger.child({ service })
  const pool = new Pool({
    service,
    ejectBaseMs: options.ejectBaseMs,
    ejectMaxMs: options.ejectMaxMs,
    ejectAfterErrors: options.ejectAfterErrors,
    panicThresholdPercent: options.panicThresholdPercent,
    maxInflight: options.maxConnectionsPerInstance,
    slowStartMs: options.slowStartMs,
  })
  const queue = new WaitQueue()
  const registry = createRegistry()
  const instanceMetrics = new InstanceMetrics()
  const collectors: ReportedCollectors = {
    instanceCounts: () => pool.counts(),
    instanceStates: function * () {
      const now = pool.now()
      for (const endpoint of pool.endpoints()) yield [endpoint.address, endpoint.state(now)] as const
    },
    traffic: instanceMetrics,
    queue,
  }
  const metrics = createProxyMetrics(registry, {
    ...collectors,
    service,
    sourceKind: source.kind,
    discovery: () => {
      const state = source.state()
      return { connected: state.status === 'connected', stale: state.stale }
    },
  })
  const upstreams = new Upstreams({
    connectTimeoutMs: options.connectTimeoutMs,
    keepAliveTimeoutMs: UPSTREAM_KEEP_ALIVE_MS,
    maxHeaderBytes: options.maxHeaderBytes,
    maxConnections: options.maxConnectionsPerInstance,
  })
  const accessLog = createAccessLog(options.accessLog, service)
  const deadlines = new Deadlines(Deadlines.resolutionFor(options.headersTimeoutMs, options.idleTimeoutMs, options.queueTimeoutMs))
  const forward: ForwardContext = {
    service, pool, upstreams, metrics: instanceMetrics, log, accessLog,
    headersTimeoutMs: options.headersTimeoutMs, idleTimeoutMs: options.idleTimeoutMs, deadlines,
    queue, queueTimeoutMs: options.queueTimeoutMs,
    tries: options.tries, retryBudgetPercent: 20, retryBudgetMin: 10, inFlight: 0, retriesInFlight: 0, instanceRetriesInFlight: 0,
  }
  const upgrades: UpgradeContext = {
    service, pool, metrics: instanceMetrics, log, accessLog, tries: options.tries,
    connectTimeoutMs: options.connectTimeoutMs, headersTimeoutMs: options.headersTimeoutMs, queue, sockets: new Set<Duplex>(),
  }
  let closing = false
  let drained: Promise<void> | undefined
  /** Serves the queue once `endpoint`'s ejection has run out. */
  const wakeQueueAfterEjection = (endpoint: Endpoint): void => {
    const ms = endpoint.ejectedUntilMs - pool.now()
    if (ms <= 0) return queue.serveSoon()
    setTimeout(wakeQueueAfterEjection, ms + 1, endpoint).unref()
  }

  source.subscribe(membership => pool.update(membership))
  // A worker's source relays its primary's, which logs the discovery status: not once more per worker.
  wireDiscoveryMetrics(source, metrics, service, source instanceof RemoteSource ? undefined : log)
  pool.onEvent(event => {
    if (event.type === 'added') {
      instanceMetrics.added(event.endpoint)
    } else if (event.type === 'removed') {
      instanceMetrics.removed(event.endpoint)
      void upstreams.release(event.endpoint)
    } else if (event.type === 'changed') {
      // New instances have room for requests waiting; removed ones fail those that had no other.
      queue.serveSoon()
    } else if (event.type === 'ejected') {
      // Which instances waiting requests may use changes with an ejection (panic), and when it runs out.
      queue.serveSoon()
      wakeQueueAfterEjection(event.endpoint)
      instanceMetrics.ejected(event.endpoint, event.reason)
      if (event.reason === 'connect') {
        log.warn({ instance: event.endpoint.address, durationMs: event.durationMs }, 'instance ejected after a failed connect')
      } else {
        log.warn({ instance: event.endpoint.address, durationMs: event.durationMs, serverErrors: options.ejectAfterErrors }, 'instance ejected after server errors in a row')
      }
    } else if (event.type === 'readmitted') {
      queue.serveSoon()
      log.info({ instance: event.endpoint.address }, 'ejected instance answered: back in rotation')
    }
  })

  // A client connection may stay silent as long as the proxy may wait for it: the idle timeout, or the
  // queue, the connect and the instance's answer. Then it is closed, and its request with it.
  const clientIdleMs = Math.max(options.idleTimeoutMs, options.queueTimeoutMs + options.connectTimeoutMs + options.headersTimeoutMs)
  // Fastify gets no logger: the route hijacks every request, and the proxy logs what it has to say through
  // `log`. Given a logger, Fastify listens on every response for its end even with request logging off:
  // 1.4 KB more allocated per request (`--trace-gc-nvp`), and 2–3 % fewer requests served per core on small ones.
  const app = Fastify({
    // While draining, requests on open connections are still served, each with `Connection: close`.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    requestTimeout: 0,
    // A path that is not valid percent-encoding (`/files/100%`) is the instance's business, as it is for
    // Envoy and HAProxy: Fastify's router cannot decode it, and would answer 400 itself.
    frameworkErrors: (error, request, reply) => {
      if (error.code === 'FST_ERR_BAD_URL') return proxyRequest(request as FastifyRequest, reply as FastifyReply)
      // The others concern routes with parameters or constraints, which the proxy has none of.
      reply.hijack()
      const body = JSON.stringify({ error: error.code, message: error.message, service })
      reply.raw.writeHead(400, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) })
      reply.raw.end(body)
    },
    // Requests Node's parser refuses (a malformed head, one over --max-header-bytes, a head still not
    // whole after Node's headers timeout) are answered like the proxy's other errors, and counted.
    clientErrorHandler: (err, socket) => {
      // Nothing to answer on a connection that is gone.
      if (err.code === 'ECONNRESET' || !socket.writable) return void socket.destroy()
      // Nor to a client that ended its side mid-request (an aborted upload): once the answers before it
      // are out, the connection closes, and a request under way counts as a client that left.
      if (err.code === 'HPE_INVALID_EOF_STATE') return afterEarlierAnswers(socket, () => socket.destroy())
      // Answered once, now or after the answers before it.
      if (!markRefused(socket as Socket)) return
      const code = err.code === 'HPE_HEADER_OVERFLOW'
        ? 'FLEETGATE_ERR_HEADERS_TOO_LARGE'
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'FLEETGATE_ERR_CLIENT_TIMEOUT' : 'FLEETGATE_ERR_BAD_REQUEST'
      afterEarlierAnswers(socket, () => {
        // The answer to the request that broke has begun: nothing more can go out on the connection
        // (Node's own rule). One before it that closed the connection leaves nothing to answer on.
        if (answerGoingOut(socket)?.headersSent === true) return void socket.destroy()
        if (!socket.writable) return
        refuse(socket, code, service)
        instanceMetrics.finished(undefined, 'OTHER', ERRORS[code].statusCode, 0)
      })
    },
    serverFactory: handler => {
      // No total time for a request (a long upload is the idle timeout's), but 60 s for its head, as
      // Node gives by default: a client that trickles one in (slowloris) gets 408.
      // An HTTP/1.1 request without Host is refused by the proxy itself (lacksHost): Node's own 400 is
      // neither the proxy's answer nor counted, and Node hands on a request pipelined behind it, which
      // would reach an instance though its answer is never sent.
      const server = createServer({ maxHeaderSize: options.maxHeaderBytes, requestTimeout: 0, headersTimeout: 60_000, requireHostHeader: false }, handler)
      // Fastify applies its connectionTimeout only to a server it makes itself.
      server.setTimeout(clientIdleMs)
      // Node's 5 s default would close connections that a load balancer in front keeps for a minute
      // (AWS ALB, ingress-nginx): it would send its next request as the proxy closes, and fail it.
      server.keepAliveTimeout = options.clientKeepAliveTimeoutMs
      // Node keeps a request's first 1,000 headers and drops the rest unseen, a Content-Length or
      // Transfer-Encoding among them: it still reads the body, which would then not be passed on. It
      // keeps them all instead, and the proxy refuses a head with more than it passes on (forward.ts).
      server.maxHeadersCount = 0
      return server
    },
  })
  // Every method Node parses is routed (WebDAV's PROPFIND, PURGE, QUERY: the instance's business), and
  // as bodyless: Fastify then never looks at a body, which the route streams on raw. A body method's
  // Content-Type would be judged first (`Content-Type: text` got a 415).
  for (const method of METHODS) if (method !== 'CONNECT') app.addHttpMethod(method, { hasBody: false, overrideExisting: true })
  function proxyRequest (request: FastifyRequest, reply: FastifyReply): void {
    reply.hijack()
    const res = reply.raw as ServerResponse
    // A request pipelined behind one still being answered waits until that answer has gone out: as with
    // HAProxy and Envoy, a connection's requests reach the instances one at a time and in order (RFC 9112
    // 9.3.2 allows side by side only for safe methods), and a connection holds one instance connection at
    // most. Node hands the connection to the next answer once the one before has finished, and to none
    // if that one closed it.
    if (res.socket === null) {
      // Node reads a connection no further while its answers hold its high-water mark unsent (16 KB), its
      // guard against a flood of pipelined requests. A request waiting here has no answer yet, so it is
      // counted as a share of that: a client is read at most about 16 requests ahead of its answers.
      const waiting = res as ServerResponse & { _onPendingData: (bytes: number) => void }
      waiting._onPendingData(PIPELINED_REQUEST_BYTES)
      res.once('socket', () => {
        waiting._onPendingData(-PIPELINED_REQUEST_BYTES)
        forwardRequest(request.raw, res)
      })
      return
    }
    forwardRequest(request.raw, res)
  }
  function forwardRequest (req: IncomingMessage, res: ServerResponse): void {
    const http10 = req.httpVersionMinor === 0
    // An HTTP/1.0 request has no transfer codings, so one with Transfer-Encoding is framed faultily (RFC
    // 9112 6.1): a hop in front that reads no chunks takes their bytes for a next request, where Node reads
    // them as this one's body. It is answered, then the connection closes.
    const closes = closing || (http10 && req.headers['transfer-encoding'] !== undefined)
    if (closes) res.setHeader('connection', 'close')
    // Node answers an HTTP/1.0 client that sent `TE: chunked` in chunks, which only HTTP/1.1 may get
    // (RFC 9112 6.1): a body of unknown length is then delimited by closing the connection.
    if (http10) res.useChunkedEncodingByDefault = false
    new Exchange(forward, req, res).start()
    // Once it has started: an upgrade or CONNECT read behind it will get no answer, and is not sent either.
    if (closes) closeAfterAnswer(req.socket)
  }
  app.all('*', proxyRequest)
  /** A request the proxy refused before any instance: counted under instance "none", and logged with --access-log. */
  function countRefusal (req: IncomingMessage, method: string, statusCode: number): void {
    instanceMetrics.finished(undefined, method, statusCode, 0)
    accessLog?.(req, statusCode, undefined, 0, 0, 0)
  }
  if (accessLog !== undefined) app.server.on('connection', rememberClient)
  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    // Node listens for the connection's errors no more: until it is handed on, an error ends it.
    const onError = (): void => { socket.destroy() }
    socket.on('error', onError)
    afterEarlierAnswers(socket, () => {
      socket.off('error', onError)
      // An upgrade pipelined behind an answer that closes the connection would never be answered either.
      if (closing || closesAfterAnswer(req.socket)) return socket.destroy()
      // Refused as a plain request would be: no Host, a second one, a target that is not a path.
      if (lacksHost(req) || cannotForward(req)) {
        refuse(socket, 'FLEETGATE_ERR_BAD_REQUEST', service)
        return countRefusal(req, req.method ?? 'GET', 400)
      }
      // HTTP/2 over cleartext (`curl --http2 http://…`) is not tunnelled, which would send every request
      // of the connection to one instance: as Envoy does, the request is served as HTTP/1.1. So is an
      // upgrade that carries a body (a WebSocket handshake never does): nothing of the client's goes to
      // the instance before it accepts, so one that ignores the upgrade would wait for the body in vain.
      if (offersOnlyH2c(req) || carriesBody(req)) return serveWithoutUpgrade(app.server, req, socket, head)
      proxyUpgrade(upgrades, req, socket, head)
    })
  })
  // A tunnel (CONNECT) is not a request the proxy forwards: 400, rather than the bare close Node gives
  // it without a listener.
  app.server.on('connect', (req: IncomingMessage, socket: Duplex) => {
    socket.on('error', () => socket.destroy())
    afterEarlierAnswers(socket, () => {
      if (closing || closesAfterAnswer(req.socket)) return socket.destroy()
      refuse(socket, 'FLEETGATE_ERR_BAD_REQUEST', service)
      countRefusal(req, 'CONNECT', 400)
    })
  })
  // An expectation other than 100-continue (which Node meets itself) is one the proxy cannot know the
  // instance would meet (RFC 9110 10.1.1): 417, in the proxy's error format and counted, where Node would
  // give its own bare one. The connection closes after it, a body sent along unread.
  app.server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    closeAfterAnswer(req.socket)
    answerError(res, 'FLEETGATE_ERR_EXPECTATION', service, { connection: 'close' })
    countRefusal(req, req.method ?? 'GET', ERRORS.FLEETGATE_ERR_EXPECTATION.statusCode)
  })

  const status = (): ProxyStatus => {
    const state = source.state()
    const now = pool.now()
    // The pool's times never step; shown, each is the wall clock now less the time since.
    const wallNow = Date.now()
    return {
      service,
      ready: !closing && state.membership !== undefined,
      source: describeSource(state),
      instances: [...pool.endpoints()].map(endpoint => {
        const summary = instanceMetrics.summary(endpoint)
        return {
          id: endpoint.instance.id,
          address: endpoint.address,
          state: endpoint.state(now),
          weight: endpoint.weight,
          labels: { ...endpoint.instance.labels },
          inflight: endpoint.inflight,
          requests: endpoint.requests,
          errors: summary.errors,
          p50Ms: milliseconds(summary.p50),
          p99Ms: milliseconds(summary.p99),
          changedAt: new Date(wallNow - (now - endpoint.changedAtMs)).toISOString(),
          slowStartUntil: pool.isSlowStarting(endpoint) ? new Date(wallNow + (endpoint.slowStartUntilMs - now)).toISOString() : null,
        }
      }),
      queue: describeQueue(options, queue.size, queue.timeouts),
    }
  }
  const admin = buildAdmin({
    registry, logger: log, ready: () => !closing && source.current() !== undefined, status,
    statusPage: () => renderStatusPage(status()),
  })

  return {
    app, admin, pool, source, metrics, status,
    report: () => reportTraffic(collectors),
    async listen () {
      source.start().catch(err => log.error({ err }, 'discovery failed to start'))
      const main = splitHostPort(options.listen)
      await listenFor('--listen', () => app.listen({ host: main.host, port: main.port, backlog: LISTEN_BACKLOG }))
      const port = (app.server.address() as { port: number }).port
      if (options.adminListen === undefined) return { port, adminPort: undefined }
      const adminAddress = splitHostPort(options.adminListen)
      await listenFor('--admin-listen', () => admin.listen({ host: adminAddress.host, port: adminAddress.port }))
      const adminPort = (admin.server.address() as { port: number }).port
      log.info({ listen: `${main.host}:${port}`, admin: `${adminAddress.host}:${adminPort}` }, 'fleetgate proxy listening')
      return { port, adminPort }
    },
    // A second call (a signal and the primary's message, both) waits for the same drain.
    close () {
      drained ??= drain()
      return drained
    },
  }

  async function drain (): Promise<void> {
    closing = true
    log.info({ inFlight: forward.inFlight, deadlineMs: options.shutdownTimeoutMs }, 'shutting down: draining in-flight requests')
    const deadline = setTimeout(() => {
      log.warn({ inFlight: forward.inFlight }, 'shutdown deadline passed, closing remaining connections')
      app.server.closeAllConnections()
      for (const socket of upgrades.sockets) socket.destroy()
      void upstreams.destroy()
    }, options.shutdownTimeoutMs)
    for (const socket of upgrades.sockets) socket.end()
    // A response under way at the signal went out keep-alive. Once it has gone out whole, its
    // connection waits for a next request only briefly (which is then served with Connection: close),
    // not for the keep-alive timeout.
    app.server.keepAliveTimeout = DRAIN_KEEP_ALIVE_MS
    await app.close()
    // Connections closed at the deadline end their requests as their sockets' close events come, after
    // the server has closed: waited for, briefly, so each request is finished (and its access line
    // written) before the process exits.
    for (let waits = 0; forward.inFlight > 0 && waits < 100; waits++) await new Promise(resolve => setTimeout(resolve, 10))
    await upstreams.close()
    clearTimeout(deadline)
    deadlines.close()
    await source.close()
    await admin.close()
  }
}

/** Seconds as milliseconds to the microsecond, as /status shows them: 33.89 rather than 33.890143000000535. */
function milliseconds (seconds: number | null): number | null {
  return seconds === null ? null : Math.round(seconds * 1e6) / 1e3
}

/** The source part of /status. */
export function describeSource (state: SourceState): ProxyStatus['source'] {
  return {
    kind: state.kind,
    status: state.status,
    stale: state.stale,
    revision: state.membership?.revision ?? null,
    changedAt: state.membership ? new Date(state.membership.changedAtMs).toISOString() : null,
  }
}

/** The discovery metrics of a source, and its logs when given a logger. */
export function wireDiscoveryMetrics (source: MembershipSource, metrics: ProxyMetrics, service: string, log: Logger | undefined): void {
  // From 0, where the source can count them: a series that first shows at 1 is no increase() to Prometheus.
  if (source.kind === 'zookeeper') metrics.sessionExpirations.labels(service).inc(0)
  if (source.kind !== 'static') for (const reason of INVALID_REASONS) metrics.invalidRegistrations.labels(service, reason).inc(0)
  source.onEvent(event => {
    switch (event.type) {
      case 'membership':
        metrics.membershipChanges.labels(service).inc()
        metrics.membershipLastChange.labels(service).set(event.membership.changedAtMs / 1000)
        break
      case 'invalid':
        metrics.invalidRegistrations.labels(service, event.reason).inc()
        break
      case 'session-expired':
        metrics.sessionExpirations.labels(service).inc()
        break
      case 'status':
        log?.info({ status: event.status, stale: event.stale }, 'discovery status')
        break
      case 'error':
        log?.warn({ err: event.error }, 'discovery error')
        break
    }
  })
}
