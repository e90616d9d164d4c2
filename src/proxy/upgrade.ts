// WebSocket (and any HTTP/1.1 Upgrade) proxying: after the handshake the bytes are the instance's and
// the client's, so the proxy writes the request head itself and splices the two sockets.

import type { IncomingMessage, Server, ServerResponse } from 'node:http'
import { connect, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { Endpoint, Pool } from '../balancer/pool.ts'
import { ERRORS, type ErrorCode } from '../errors.ts'
import type { Logger } from '../logger.ts'
import type { AccessLog } from './access-log.ts'
import { originForm, upstreamRequestHeaders } from './headers.ts'
import type { InstanceMetrics } from './instance-metrics.ts'
import type { WaitQueue } from './queue.ts'

export interface UpgradeContext {
  readonly service: string
  readonly pool: Pool
  readonly metrics: InstanceMetrics
  readonly log: Logger
  /** With --access-log: a line per upgrade request, at its answer. */
  readonly accessLog: AccessLog | undefined
  readonly tries: number
  readonly connectTimeoutMs: number
  /** How long the instance has to answer the handshake once it is sent. */
  readonly headersTimeoutMs: number
  /** Requests waiting for a connection: an upgrade that ends frees one. */
  readonly queue: WaitQueue
  /** Sockets of upgraded connections, so shutdown can end them after its deadline. */
  readonly sockets: Set<Duplex>
}

export function proxyUpgrade (ctx: UpgradeContext, req: IncomingMessage, client: Duplex, head: Buffer): void {
  client.on('error', () => client.destroy())
  const startedAt = performance.now()
  const seconds = (): number => (performance.now() - startedAt) / 1000
  const method = req.method ?? 'GET'
  const tried = new Set<Endpoint>()
  /** Counts the upgrade's answer (and logs it, with --access-log): `status` as the client got it, 499 if it left first. */
  const finished = (endpoint: Endpoint | undefined, status: number, errorCounted = false): void => {
    const s = seconds()
    ctx.metrics.finished(endpoint, method, status, s, errorCounted)
    ctx.accessLog?.(req, status, endpoint, tried.size, s, 0)
  }
  /**
   * Answers the error and counts it like any other answer, against the last instance tried (if any);
   * `errorCounted`: its failed connect is that instance's error already.
   */
  const fail = (code: ErrorCode, last: Endpoint | undefined, errorCounted = false): void => {
    if (code === 'FLEETGATE_ERR_NO_LIVE_INSTANCE') ctx.metrics.noLiveInstance()
    refuse(client, code, ctx.service)
    finished(last, ERRORS[code].statusCode, errorCounted)
  }
  const attempt = (): void => {
    // An upgrade is not queued behind the connection limit (a WebSocket may stay open for hours, and
    // queued requests would time out behind it), but it counts toward it while it lasts.
    const endpoint = ctx.pool.pick(tried, false)
    if (!endpoint) {
      // Only a failed connect leads to another try: the last one's is counted as its error already.
      return tried.size === 0 ? fail('FLEETGATE_ERR_NO_LIVE_INSTANCE', undefined) : fail('FLEETGATE_ERR_UPSTREAM_CONNECT', [...tried].pop(), true)
    }
    // A try after a failed connect is a retry: counted once it is sent, as a request's is.
    if (tried.size > 0) ctx.metrics.retry('connect_failure')
    tried.add(endpoint)
    const sentWhileEjected = ctx.pool.isEjected(endpoint)
    endpoint.started(startedAt)
    const upstream = connect({ host: endpoint.instance.host, port: endpoint.instance.port, timeout: ctx.connectTimeoutMs })
    let connected = false
    let ended = false
    const end = (): void => {
      if (ended) return
      ended = true
      endpoint.inflight--
      ctx.metrics.ended(endpoint)
      ctx.sockets.delete(client)
      ctx.queue.serveSoon()
    }
    // A client that leaves while the connect is pending takes the attempt with it: connected later, it
    // would hold its connection slot and a socket to the instance until the instance hung up.
    const clientGone = (): void => {
      upstream.destroy()
      end()
      finished(endpoint, 499)
    }
    client.once('close', clientGone)
    upstream.once('timeout', () => upstream.destroy(Object.assign(new Error('connect timeout'), { code: 'UND_ERR_CONNECT_TIMEOUT' })))
    upstream.on('error', err => {
      // Once connected, 'close' follows and ends the upgrade; a client that left has ended it already.
      if (connected || ended) return
      client.off('close', clientGone)
      end()
      ctx.metrics.connectFailure(endpoint)
      ctx.pool.reportConnectFailure(endpoint)
      ctx.log.debug({ err, instance: endpoint.address }, 'upgrade connect failed')
      if (tried.size < ctx.tries && !client.destroyed) return attempt()
      fail((err as NodeJS.ErrnoException).code === 'UND_ERR_CONNECT_TIMEOUT' ? 'FLEETGATE_ERR_UPSTREAM_TIMEOUT' : 'FLEETGATE_ERR_UPSTREAM_CONNECT', endpoint, true)
    })
    upstream.once('connect', () => {
      client.off('close', clientGone)
      connected = true
      upstream.setTimeout(0)
      ctx.pool.reportConnected(endpoint)
      ctx.sockets.add(client)
      // Latin-1, as Node read the head: a header's bytes go on as they came, as on any other request.
      upstream.write(requestHead(req) + '\r\n', 'latin1')
      splice(client, upstream, head, ctx.headersTimeoutMs, {
        // The upgrade counts with the status the instance answered (101, or a refusal such as 403), and
        // lasts until then; the session after it is not a request.
        answered: status => {
          ctx.pool.reportAnswer(endpoint, status, sentWhileEjected)
          finished(endpoint, status)
        },
        unanswered: code => {
          ctx.pool.reportServerError(endpoint)
          fail(code, endpoint)
        },
        clientLeft: () => finished(endpoint, 499),
        closed: end,
      })
    })
  }
  attempt()
}

/**
 * Runs `then` once the answers Node is still writing on the connection have all gone out: a request read
 * behind them (pipelined), and taken out of Node's hands, is answered after them, not in their middle
 * (RFC 9112 9.3.2). An answer whose own request is still being read is not waited for: that request broke
 * off where Node's parser refused what followed, and will never end.
 */
export function afterEarlierAnswers (socket: Duplex, then: () => void): void {
  const writing = answerGoingOut(socket)
  if (writing !== undefined && writing.req.complete) {
    writing.once('finish', () => setImmediate(afterEarlierAnswers, socket, then))
    return
  }
  if (!socket.destroyed) then()
}

/**
 * Node's record of the answer going out on the connection (not part of its API); when it finishes, the
 * next one queued behind it takes its place.
 */
export function answerGoingOut (socket: Duplex): ServerResponse | undefined {
  return (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage ?? undefined
}

/** Whether an upgrade asks for nothing but HTTP/2 over cleartext (`Upgrade: h2c`). */
export function offersOnlyH2c (req: IncomingMessage): boolean {
  const upgrade = req.headers.upgrade
  return upgrade !== undefined && upgrade.split(',').every(protocol => protocol.trim().toLowerCase() === 'h2c')
}

/**
 * Hands an upgrade request back to the HTTP server as a plain one: its head again, without Upgrade,
 * HTTP2-Settings and their Connection tokens, then what came behind it (its body, further requests).
 * Node parses it all afresh, so the request is served and the connection kept like any other
 * (RFC 9110 7.8: a server may ignore an upgrade).
 */
export function serveWithoutUpgrade (server: Server, req: IncomingMessage, socket: Duplex, head: Buffer): void {
  const raw = req.rawHeaders
  let text = `${req.method} ${req.url} HTTP/${req.httpVersion}\r\n`
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    const lower = name.toLowerCase()
    if (lower === 'upgrade' || lower === 'http2-settings') continue
    if (lower === 'connection') {
      const kept = raw[i + 1]!.split(',').map(token => token.trim()).filter(token => token !== '' && !UPGRADE_TOKENS.has(token.toLowerCase()))
      if (kept.length > 0) text += `${name}: ${kept.join(', ')}\r\n`
      continue
    }
    text += `${name}: ${raw[i + 1]}\r\n`
  }
  // Header strings are latin1, as Node read them: written back so, they are the bytes that came.
  socket.unshift(Buffer.concat([Buffer.from(`${text}\r\n`, 'latin1'), head]))
  server.emit('connection', socket)
}

const UPGRADE_TOKENS = new Set(['upgrade', 'http2-settings'])

function requestHead (req: IncomingMessage): string {
  const headers = upstreamRequestHeaders(req, true)
  let head = `${req.method} ${originForm(req.url)} HTTP/1.1\r\n`
  for (let i = 0; i < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`
  return head
}

interface SpliceEvents {
  answered (status: number): void
  unanswered (code: ErrorCode): void
  clientLeft (): void
  closed (): void
}

/**
 * Joins the client and the instance, to which the handshake has been sent. Nothing goes to the client
 * before the instance answers, so an instance that hangs up first, or stays silent for
 * `headersTimeoutMs`, gets the client an error answer instead of a dropped connection. Nothing of the
 * client's goes to the instance before it accepts the upgrade (101): bytes sent behind the handshake
 * would otherwise reach an instance that refused it as further requests, past the proxy's header
 * handling. Until then they wait in the client's socket, and `head` (what came with the handshake) here.
 */
function splice (client: Duplex, upstream: Socket, head: Buffer, headersTimeoutMs: number, on: SpliceEvents): void {
  upstream.setNoDelay(true)
  let answered = false
  let timedOut = false
  let closed = false
  const timer = setTimeout(() => {
    timedOut = true
    upstream.destroy()
  }, headersTimeoutMs)
  let partial: Buffer | undefined
  const onFirst = (chunk: Buffer): void => {
    // The status line can come in pieces: it is read whole (a first line longer than any is broken).
    const first = partial === undefined ? chunk : Buffer.concat([partial, chunk])
    if (first.indexOf(0x0a) < 0 && first.length < STATUS_LINE_MAX) {
      partial = first
      return
    }
    const status = statusOf(first)
    // An interim answer (103 Early Hints, an unasked 100) is not the instance's answer to the upgrade: as
    // on any other request, it is not passed on, and the one after it is read. Its head is read whole.
    if (status >= 100 && status < 200 && status !== 101) {
      const end = first.indexOf('\r\n\r\n')
      if (end >= 0) {
        partial = undefined
        if (end + 4 < first.length) onFirst(first.subarray(end + 4))
        return
      }
      // One longer than any is taken for the answer, and refuses the upgrade.
      if (first.length < INTERIM_HEAD_MAX) {
        partial = first
        return
      }
    }
    upstream.off('data', onFirst)
    answered = true
    clearTimeout(timer)
    on.answered(status)
    if (status === 101) {
      if (head.length > 0) upstream.write(head)
      client.pipe(upstream)
    } else {
      // Refused: the answer goes to the client, and the instance gets nothing more of the client's.
      upstream.end()
    }
    client.write(first)
    upstream.pipe(client)
  }
  upstream.on('data', onFirst)
  const close = (): void => {
    if (closed) return
    closed = true
    clearTimeout(timer)
    if (answered) {
      endSoon(client)
    } else if (client.destroyed) {
      on.clientLeft()
    } else {
      on.unanswered(timedOut ? 'FLEETGATE_ERR_UPSTREAM_TIMEOUT' : 'FLEETGATE_ERR_UPSTREAM_RESET')
    }
    upstream.destroy()
    on.closed()
  }
  client.once('close', close)
  upstream.once('close', close)
}

/** How long a client may take to read what the instance sent before it hung up. */
const CLOSE_GRACE_MS = 5_000

/** Ends the client once what is queued for it has gone out (a refusal's body, a last frame), or after CLOSE_GRACE_MS. */
function endSoon (client: Duplex): void {
  const socket = client as Duplex & { destroySoon?: () => void }
  if (typeof socket.destroySoon !== 'function') return void client.destroy()
  socket.destroySoon()
  setTimeout(() => client.destroy(), CLOSE_GRACE_MS).unref()
}

/** Longer than any status line an instance sends ("HTTP/1.1 101 Switching Protocols\r\n"). */
const STATUS_LINE_MAX = 1024

/** Longer than any interim answer's head (103 Early Hints with its Link headers). */
const INTERIM_HEAD_MAX = 64 * 1024

/** The status of an answer from its first bytes; 502 when they are not an HTTP/1.x status line. */
function statusOf (first: Buffer): number {
  return Number(/^HTTP\/1\.[01] (\d{3}) /.exec(first.toString('latin1', 0, 13))?.[1] ?? 502)
}

/**
 * Answers the error and closes the connection once the answer is out. Closed, not only ended: what the
 * client sent behind its handshake is never read, so its side would never end by itself.
 */
export function refuse (client: Duplex, code: ErrorCode, service: string): void {
  if (client.destroyed) return
  const { statusCode, message } = ERRORS[code]
  const body = JSON.stringify({ error: code, message, service })
  client.write(
    `HTTP/1.1 ${statusCode} ${message}\r\nconnection: close\r\ncontent-type: application/json\r\n` +
    (statusCode === 503 ? 'retry-after: 1\r\n' : '') +
    `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  )
  endSoon(client)
}
