// Header rewriting between client and instance: hop-by-hop headers go, X-Forwarded-* are set the way
// Superset's ProxyFix (one trusted hop) reads them.

import type { IncomingMessage } from 'node:http'

/** RFC 9110 7.6.1 connection-specific headers, plus `expect` (Node answers 100-continue itself). */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect',
])

/**
 * What ProxyFix reads (Superset's PROXY_FIX_CONFIG trusts one hop of each). X-Forwarded-For gets the
 * client's address appended. X-Forwarded-Proto, -Host and -Port are kept as a proxy in front set them
 * (the TLS terminator knows the scheme the browser used, fleetgate does not), as HAProxy passes them and
 * Envoy keeps them when it is not the edge; the proxy sets them when they are absent (the port from Host,
 * the one the browser asked for). fleetgate serves at
 * the root and sets no prefix, so a client's X-Forwarded-Prefix (which Werkzeug makes the SCRIPT_NAME of
 * every link and redirect) is dropped.
 */
const FORWARDED = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'x-forwarded-prefix'])

/**
 * The request target for the instance, in origin form (`/path?query`). An absolute-form target
 * (`GET http://app.example/x`), which a client may send, becomes its path; its authority replaces Host
 * (RFC 9112 3.2.2), so the proxy and the instance agree on which host was asked for.
 */
export function originForm (url: string | undefined): string {
  if (url === undefined) return '/'
  if (absoluteTarget(url) === undefined) return url
  // The path and query as they came, as those of an origin-form target go: URL's own would resolve dot
  // segments, turn backslashes into slashes and percent-encode what the client did not.
  let end = url.indexOf('//') + 2
  while (end < url.length && url[end] !== '/' && url[end] !== '?' && url[end] !== '#') end++
  const hash = url.indexOf('#', end)
  const rest = hash < 0 ? url.slice(end) : url.slice(end, hash)
  return rest.startsWith('/') ? rest : `/${rest}`
}

/** The URL of an absolute-form http(s) target; undefined for anything else (`*`, a path). */
function absoluteTarget (url: string | undefined): URL | undefined {
  if (url === undefined || url.startsWith('/') || url === '*') return undefined
  try {
    const parsed = new URL(url)
    return parsed.protocol === 'http:' || parsed.protocol === 'https:' ? parsed : undefined
  } catch {
    return undefined
  }
}

/**
 * Whether a request's Transfer-Encoding has codings before `chunked` (`gzip, chunked`). Node reads
 * the chunks and would hand on the body still gzipped, while the header, hop-by-hop, is dropped: the
 * instance would take compressed bytes for the body. Envoy answers such a request 501, as RFC 9112
 * 6.1 says a server should; so does the proxy.
 */
export function hasUnsupportedTransferCoding (req: IncomingMessage): boolean {
  const coding = req.headers['transfer-encoding']
  return coding !== undefined && coding.trim().toLowerCase() !== 'chunked'
}

/** Whether a request has a body: a Transfer-Encoding, or a Content-Length other than 0. */
export function carriesBody (req: IncomingMessage): boolean {
  const length = req.headers['content-length']
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0')
}

/**
 * Whether an HTTP/1.1 request lacks Host, which RFC 9112 3.2 has a server refuse (400). The proxy refuses
 * it itself (Node would answer its own 400, uncounted, and still hand on a request pipelined behind).
 */
export function lacksHost (req: IncomingMessage): boolean {
  return req.httpVersionMajor === 1 && req.httpVersionMinor === 1 && req.headers.host === undefined
}

/**
 * Whether undici would refuse to send the request as it came: a target that is not a path once in origin
 * form (`OPTIONS *`, `GET ftp://x/`), or a second Host. The pool's connection that refuses one takes
 * itself for busy until a request it never got ends, so such a request must not reach the pool at all.
 */
export function cannotForward (req: IncomingMessage): boolean {
  if (!originForm(req.url).startsWith('/')) return true
  let hosts = 0
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i]!.length === 4 && req.rawHeaders[i]!.toLowerCase() === 'host' && ++hosts > 1) return true
  }
  return false
}

/**
 * The request head for the instance, as a flat [name, value, ...] list (undici's cheapest form).
 * `keepUpgrade` keeps Upgrade for WebSocket handshakes, with `Connection: Upgrade` of the proxy's own: the
 * client's other connection options are this hop's, and one naming X-Forwarded-For would have a next hop
 * that honours it drop the proxy's (RFC 9110 7.6.1).
 */
export function upstreamRequestHeaders (req: IncomingMessage, keepUpgrade = false): string[] {
  const raw = req.rawHeaders
  const dropped = connectionTokens(req.headers.connection)
  // Host is the request's, not the connection's: named there and dropped, undici would send the
  // instance's own address in its place.
  dropped?.delete('host')
  const authority = absoluteTarget(req.url)?.host
  const out: string[] = []
  let forwardedFor: string | undefined
  let forwardedProto: string | undefined
  let forwardedHost: string | undefined
  let forwardedPort: string | undefined
  let sentHost = false
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    const lower = name.toLowerCase()
    if (FORWARDED.has(lower)) {
      const value = raw[i + 1]!
      if (lower === 'x-forwarded-for') forwardedFor = forwardedFor ? `${forwardedFor}, ${value}` : value
      else if (lower === 'x-forwarded-proto') forwardedProto = forwardedProto ? `${forwardedProto}, ${value}` : value
      else if (lower === 'x-forwarded-host') forwardedHost = forwardedHost ? `${forwardedHost}, ${value}` : value
      else if (lower === 'x-forwarded-port') forwardedPort = forwardedPort ? `${forwardedPort}, ${value}` : value
      continue
    }
    if (keepUpgrade && lower === 'upgrade') {
      out.push(name, raw[i + 1]!)
      continue
    }
    if (HOP_BY_HOP.has(lower) || (dropped !== undefined && dropped.has(lower))) continue
    if (authority !== undefined && lower === 'host') {
      sentHost = true
      out.push(name, authority)
      continue
    }
    out.push(name, raw[i + 1]!)
  }
  // An HTTP/1.0 client may send an absolute-form target without Host: the instance still gets the authority.
  if (authority !== undefined && !sentHost) out.push('host', authority)
  if (keepUpgrade) out.push('connection', 'Upgrade')
  const client = req.socket.remoteAddress ?? ''
  const encrypted = 'encrypted' in req.socket && req.socket.encrypted === true
  out.push(
    'x-forwarded-for', forwardedFor ? `${forwardedFor}, ${client}` : client,
    'x-forwarded-proto', forwardedProto || (encrypted ? 'https' : 'http'),
  )
  const requestHost = authority || req.headers.host
  // A proxy in front that sets the scheme or host but no port (Caddy, Envoy, many NGINX setups) means
  // the port of its own URL: this proxy's listening port would make ProxyFix build links to it.
  if (forwardedPort) out.push('x-forwarded-port', forwardedPort)
  else if (!forwardedProto && !forwardedHost) {
    // The port the browser asked for is the one in Host, or its scheme's when Host names none: the
    // listening port differs behind a port mapping (a Service's port 80, `docker run -p 80:8088`), and
    // ProxyFix puts X-Forwarded-Port into Host, so every link and redirect would carry it.
    out.push('x-forwarded-port', (requestHost && portOfHost(requestHost, encrypted)) || String(req.socket.localPort ?? ''))
  }
  const host = forwardedHost || requestHost
  if (host) out.push('x-forwarded-host', host)
  return out
}

/**
 * The port a Host value names (`bi.example:8088`, `[::1]:8088`), or the scheme's default when it names
 * none (`bi.example`, `[::1]`); undefined when what follows its last colon is not a port.
 */
function portOfHost (host: string, encrypted: boolean): string | undefined {
  const colon = host.lastIndexOf(':')
  if (colon < 0 || colon < host.lastIndexOf(']')) return encrypted ? '443' : '80'
  const port = host.slice(colon + 1)
  return /^\d{1,5}$/.test(port) ? port : undefined
}

/** An answer with a transfer coding other than chunked, which the proxy cannot undo. */
export class UnsupportedTransferCoding extends Error {
  constructor (coding: string) {
    super(`the answer has a transfer coding other than chunked: ${JSON.stringify(coding)}`)
  }
}

/** The lengths of the hop-by-hop names: only a name of one of these lengths is lower-cased to be checked. */
const HOP_BY_HOP_LENGTHS = new Set([...HOP_BY_HOP].map(name => name.length))

/**
 * The response head for the client, from the instance's raw [name, value, ...] buffers, as a flat
 * [name, value, ...] list that Node writes as it is: hop-by-hop headers dropped, everything else in
 * order and in the instance's own spelling, repeated headers (Set-Cookie) as repeated lines. Bytes are
 * read as latin1, which Node writes back unchanged, so a value passes byte for byte whatever its encoding.
 * `withoutLength` drops Content-Length too, for an answer that may not state one. Throws
 * UnsupportedTransferCoding for a transfer coding other than chunked.
 */
export function clientResponseHeaders (raw: readonly Buffer[], withoutLength = false): string[] {
  const out: string[] = []
  let connection: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!.toString('latin1')
    const value = raw[i + 1]!.toString('latin1')
    if (HOP_BY_HOP_LENGTHS.has(name.length)) {
      const lower = name.toLowerCase()
      if (HOP_BY_HOP.has(lower)) {
        if (lower === 'connection') connection = connection === undefined ? value : `${connection},${value}`
        // undici undoes no coding but chunked: one before it (`gzip, chunked`), or instead of it, would
        // reach the client as the body, the header that names it dropped. A broken answer, as HAProxy and
        // Envoy take it (502).
        else if (lower === 'transfer-encoding' && value.trim().toLowerCase() !== 'chunked') throw new UnsupportedTransferCoding(value)
        continue
      }
    }
    if (withoutLength && name.length === 14 && name.toLowerCase() === 'content-length') continue
    out.push(name, value)
  }
  // Rare: headers the instance named in Connection are its own business too.
  const named = connectionTokens(connection)
  if (named === undefined) return out
  const kept: string[] = []
  for (let i = 0; i < out.length; i += 2) if (!named.has(out[i]!.toLowerCase())) kept.push(out[i]!, out[i + 1]!)
  return kept
}

/** `Connection: keep-alive` or `close`, nearly every answer's, names no other header. */
const PLAIN_CONNECTION = /^\s*(keep-alive|close)\s*$/i

function connectionTokens (value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined || (typeof value === 'string' && PLAIN_CONNECTION.test(value))) return undefined
  const tokens = (Array.isArray(value) ? value.join(',') : value).split(',').map(t => t.trim().toLowerCase()).filter(t => t && t !== 'close' && t !== 'keep-alive')
  return tokens.length > 0 ? new Set(tokens) : undefined
}
