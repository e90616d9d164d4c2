// Header rewriting between client and instance: hop-by-hop headers go, X-Forwarded-* are set the way
// Superset's ProxyFix (one trusted hop) reads them.

import type { IncomingMessage } from 'node:http'
import type { IncomingHttpHeaders } from 'node:http'

/** RFC 9110 7.6.1 connection-specific headers, plus `expect` (Node answers 100-continue itself). */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'proxy-authorization',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect',
])

const FORWARDED = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port'])

/**
 * The request head for the instance, as a flat [name, value, ...] list (undici's cheapest form).
 * `keepUpgrade` keeps Connection/Upgrade for WebSocket handshakes.
 */
export function upstreamRequestHeaders (req: IncomingMessage, keepUpgrade = false): string[] {
  const raw = req.rawHeaders
  const dropped = connectionTokens(req.headers.connection)
  const out: string[] = []
  let forwardedFor: string | undefined
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i]!
    const lower = name.toLowerCase()
    if (FORWARDED.has(lower)) {
      if (lower === 'x-forwarded-for') forwardedFor = forwardedFor ? `${forwardedFor}, ${raw[i + 1]}` : raw[i + 1]
      continue
    }
    if (keepUpgrade && (lower === 'connection' || lower === 'upgrade')) {
      out.push(name, raw[i + 1]!)
      continue
    }
    if (HOP_BY_HOP.has(lower) || (dropped !== undefined && dropped.has(lower))) continue
    out.push(name, raw[i + 1]!)
  }
  const client = req.socket.remoteAddress ?? ''
  out.push(
    'x-forwarded-for', forwardedFor ? `${forwardedFor}, ${client}` : client,
    'x-forwarded-proto', 'encrypted' in req.socket && req.socket.encrypted ? 'https' : 'http',
    'x-forwarded-port', String(req.socket.localPort ?? ''),
  )
  if (req.headers.host !== undefined) out.push('x-forwarded-host', req.headers.host)
  return out
}

/**
 * The response head for the client: the instance's headers less hop-by-hop ones. Copies rather than
 * deletes: `delete` turns the object into a slow dictionary on the hot path.
 */
export function clientResponseHeaders (headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const dropped = connectionTokens(headers.connection)
  const out: IncomingHttpHeaders = {}
  for (const name in headers) {
    if (!HOP_BY_HOP.has(name) && (dropped === undefined || !dropped.has(name))) out[name] = headers[name]
  }
  return out
}

function connectionTokens (value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined
  const tokens = (Array.isArray(value) ? value.join(',') : value).split(',').map(t => t.trim().toLowerCase()).filter(t => t && t !== 'close' && t !== 'keep-alive')
  return tokens.length > 0 ? new Set(tokens) : undefined
}
