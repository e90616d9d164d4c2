// The access log: with --access-log json, one JSON line per request the proxy answered, or that its
// client left, on stdout beside the proxy's own logs (HAProxy's `option httplog`, Envoy's access log).
// Off by default: a line per request costs a share of the throughput (README: Access log).

import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { Endpoint } from '../balancer/pool.ts'
import type { ProxyConfig } from '../config.ts'
import { logTo } from '../logger.ts'

/**
 * Logs one request: `status` as the client got it (499: the client left first), `instance` the last one
 * tried, `tries` how many were, `seconds` from its arrival to its end, `bytes` of the answer's body that
 * came from the instance.
 */
export type AccessLog = (req: IncomingMessage, status: number, instance: Endpoint | undefined, tries: number, seconds: number, bytes: number) => void

/**
 * Client addresses by connection, read as each connection opens: Node asks the socket for its peer
 * only when first read, and a connection closed by then has none (a request its client left while it
 * waited in the queue, before anything read the address).
 */
const clients = new WeakMap<Socket, string>()

/** Keeps the connection's client address for its requests' lines; a 'connection' listener, with --access-log. */
export function rememberClient (socket: Socket): void {
  const address = socket.remoteAddress
  if (address !== undefined) clients.set(socket, address)
}

export function createAccessLog (format: ProxyConfig['accessLog'], service: string): AccessLog | undefined {
  if (format === 'off') return undefined
  // Its own logger: --log-level is about the proxy's messages, and an access log asked for is wanted whole.
  const log = logTo({ level: 'info', base: { name: 'fleetgate-access', service } })
  return (req, status, instance, tries, seconds, bytes) => {
    log.info({
      client: clients.get(req.socket) ?? req.socket?.remoteAddress ?? null,
      method: req.method,
      host: req.headers.host ?? null,
      url: req.url,
      status,
      instance: instance?.address ?? null,
      tries,
      ms: Math.round(seconds * 1e6) / 1e3,
      bytes,
    }, 'request')
  }
}
