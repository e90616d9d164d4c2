// Every error fleetgate raises or answers with, one registry. The code is the name; README lists them all.

export interface ErrorSpec {
  readonly message: string
  /** HTTP status when the error is answered to a client; 0 when it never reaches HTTP. */
  readonly statusCode: number
}

export const ERRORS = {
  FLEETGATE_ERR_CONFIG_INVALID: { message: 'Invalid configuration', statusCode: 0 },
  FLEETGATE_ERR_CONFIG_FILE: { message: 'Configuration file cannot be read or parsed', statusCode: 0 },
  FLEETGATE_ERR_CLI_USAGE: { message: 'Invalid command line', statusCode: 0 },
  FLEETGATE_ERR_LISTEN: { message: 'Cannot listen', statusCode: 0 },
  FLEETGATE_ERR_BAD_REQUEST: { message: 'The request cannot be forwarded as sent', statusCode: 400 },
  FLEETGATE_ERR_HEADERS_TOO_LARGE: { message: 'The request head is larger than the proxy takes', statusCode: 431 },
  FLEETGATE_ERR_TRANSFER_CODING: { message: 'The request has a transfer coding other than chunked', statusCode: 501 },
  FLEETGATE_ERR_EXPECTATION: { message: 'The request has an expectation other than 100-continue', statusCode: 417 },
  FLEETGATE_ERR_NO_LIVE_INSTANCE: { message: 'No live instance of the service', statusCode: 503 },
  // 503, as Envoy (`UF`) and HAProxy (`SC`) answer it: no instance was reached, nothing was sent.
  FLEETGATE_ERR_UPSTREAM_CONNECT: { message: 'Could not connect to any instance', statusCode: 503 },
  FLEETGATE_ERR_UPSTREAM_RESET: { message: 'The instance closed the connection before answering', statusCode: 502 },
  FLEETGATE_ERR_UPSTREAM_TIMEOUT: { message: 'The instance did not answer in time', statusCode: 504 },
  FLEETGATE_ERR_UPSTREAM_PROTOCOL: { message: 'The instance sent an invalid HTTP response', statusCode: 502 },
  FLEETGATE_ERR_QUEUE_TIMEOUT: { message: 'Every instance stayed at its connection limit for the whole queue timeout', statusCode: 503 },
  FLEETGATE_ERR_CLIENT_TIMEOUT: { message: 'The client stopped sending its request', statusCode: 408 },
  FLEETGATE_ERR_WORKER_EXIT: { message: 'A proxy worker exited before every worker listened', statusCode: 0 },
  FLEETGATE_ERR_ZK_WATCHDOG: { message: 'ZooKeeper did not answer within the watchdog deadline', statusCode: 0 },
  FLEETGATE_ERR_CONSUL_REQUEST: { message: 'A request to Consul failed', statusCode: 0 },
  FLEETGATE_ERR_AGENT_COMMAND: { message: 'The wrapped command could not be started', statusCode: 0 },
  FLEETGATE_ERR_AGENT_HEALTH_CHECK: { message: 'Health check of the local instance failed', statusCode: 0 },
  FLEETGATE_ERR_AGENT_REGISTRATION: { message: 'Could not write the instance\'s registration', statusCode: 0 },
  FLEETGATE_ERR_AGENT_MAINTENANCE_FORBIDDEN: { message: 'Maintenance is changed only from the instance\'s own host, by address', statusCode: 403 },
  FLEETGATE_ERR_LOCAL_ZOOKEEPER: { message: 'The local ZooKeeper (demo) could not be started', statusCode: 0 },
} as const satisfies Record<string, ErrorSpec>

export type ErrorCode = keyof typeof ERRORS

export class FleetgateError extends Error {
  readonly code: ErrorCode
  readonly statusCode: number

  constructor (code: ErrorCode, detail?: string, options?: { cause?: unknown }) {
    const spec = ERRORS[code]
    super(detail ? `${spec.message}: ${detail}` : spec.message, options)
    this.name = 'FleetgateError'
    this.code = code
    this.statusCode = spec.statusCode
  }
}

/**
 * What a listen fails with when its address is wrong for this host, not when fleetgate is: EINVAL for a
 * host name that resolves to an address no socket takes (a multicast one, a link-local one without its zone).
 */
const LISTEN_ERRORS = new Set(['EADDRINUSE', 'EACCES', 'EADDRNOTAVAIL', 'EINVAL', 'ENOTFOUND', 'EAI_AGAIN'])

/**
 * Runs the listen of the listener a setting names (`--admin-listen`). Node's error gives the address
 * alone, and a proxy has two listeners: an address in use, not this host's, or not resolving (a lookup's
 * ENOTFOUND, EAI_AGAIN) becomes FLEETGATE_ERR_LISTEN naming the setting.
 */
export async function listenFor<T> (setting: string, listen: () => Promise<T>): Promise<T> {
  try {
    return await listen()
  } catch (err) {
    if (!LISTEN_ERRORS.has((err as NodeJS.ErrnoException)?.code ?? '')) throw err
    throw new FleetgateError('FLEETGATE_ERR_LISTEN', `${setting}: ${(err as Error).message}`, { cause: err })
  }
}

export function isFleetgateError (err: unknown, code?: ErrorCode): err is FleetgateError {
  return err instanceof FleetgateError && (code === undefined || err.code === code)
}
