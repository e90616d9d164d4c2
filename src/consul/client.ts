// The HTTP side of Consul shared by the source and the agent's registrar: one undici Pool per Consul
// address (TLS with a CA file), the ACL token, Go durations, and turning configuration into a connection.

import { X509Certificate } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { Pool } from 'undici'
import { withoutCredentials } from '../config.ts'
import { FleetgateError } from '../errors.ts'

/** Where Consul is and how to talk to it. */
export interface ConsulConnection {
  /** http(s)://host:port, no path. */
  readonly address: URL
  /** Sent as X-Consul-Token; never logged. */
  readonly token: string | undefined
  /** PEM CA bundle for an https address; the system roots when absent. */
  readonly ca: Buffer | undefined
}

export interface ConsulResponse {
  readonly status: number
  readonly headers: Readonly<Record<string, string | string[] | undefined>>
  readonly body: string
}

export interface ConsulRequest {
  readonly method: 'GET' | 'PUT'
  /** The path without the query string, e.g. `/v1/health/service/superset`. */
  readonly path: string
  readonly query?: ReadonlyArray<readonly [string, string | undefined]>
  readonly body?: unknown
  /** How long Consul may take to send the response headers (a blocking query holds them for its wait). */
  readonly headersTimeoutMs: number
  readonly signal?: AbortSignal
}

/** Answers larger than this are not a service's health list we can use; reading stops there. */
const MAX_BODY_BYTES = 64 * 1024 * 1024
const CONNECT_TIMEOUT_MS = 5_000
/** Once the headers are in, Consul sends the body at once; a body that stalls this long is a dead socket. */
const BODY_TIMEOUT_MS = 30_000

export class ConsulClient {
  readonly address: URL
  readonly #token: string | undefined
  readonly #pool: Pool

  constructor (connection: ConsulConnection) {
    this.address = connection.address
    this.#token = connection.token
    this.#pool = new Pool(connection.address.origin, {
      connections: 4,
      connect: {
        timeout: CONNECT_TIMEOUT_MS,
        ...(connection.ca ? { ca: connection.ca } : {}),
      },
      // Per-request timeouts below; these defaults only matter if a caller forgets one.
      headersTimeout: 30_000,
      bodyTimeout: BODY_TIMEOUT_MS,
      keepAliveTimeout: 4_000,
    })
  }

  /** One request. Resolves with any HTTP status; rejects on network errors, timeouts and aborts only. */
  async request (req: ConsulRequest): Promise<ConsulResponse> {
    const search = new URLSearchParams()
    for (const [key, value] of req.query ?? []) search.append(key, value ?? '')
    // `?passing` style flags are sent bare, as Consul's own clients do.
    const query = search.toString().replace(/=(&|$)/g, '$1')
    const headers: Record<string, string> = { accept: 'application/json' }
    if (this.#token !== undefined) headers['x-consul-token'] = this.#token
    let body: string | undefined
    if (req.body !== undefined) {
      body = JSON.stringify(req.body)
      headers['content-type'] = 'application/json'
    }
    const res = await this.#pool.request({
      method: req.method,
      path: query ? `${req.path}?${query}` : req.path,
      headers,
      body,
      headersTimeout: req.headersTimeoutMs,
      bodyTimeout: BODY_TIMEOUT_MS,
      signal: req.signal,
    })
    let size = 0
    const chunks: Buffer[] = []
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      size += chunk.length
      if (size > MAX_BODY_BYTES) {
        res.body.destroy()
        throw new FleetgateError('FLEETGATE_ERR_CONSUL_REQUEST', `${req.method} ${req.path}: answer larger than ${MAX_BODY_BYTES} bytes`)
      }
      chunks.push(chunk)
    }
    return { status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }
  }

  async close (): Promise<void> {
    await this.#pool.destroy()
  }
}

/** A failed answer as an error: the status and the start of Consul's text (Consul answers errors in plain text). */
export function answerError (method: string, path: string, res: ConsulResponse): FleetgateError {
  const text = res.body.trim().slice(0, 300)
  return new FleetgateError('FLEETGATE_ERR_CONSUL_REQUEST', `${method} ${path}: ${res.status}${text ? ` ${text}` : ''}`)
}

/** Wraps a network error, timeout or abort. */
export function requestError (method: string, path: string, err: unknown): FleetgateError {
  const code = (err as { code?: string }).code
  return new FleetgateError('FLEETGATE_ERR_CONSUL_REQUEST', `${method} ${path}: ${code ?? (err as Error).message ?? String(err)}`, { cause: err })
}

/** Milliseconds as a Go duration, which is what Consul parses (`wait`, `TTL`, `DeregisterCriticalServiceAfter`). */
export function goDuration (ms: number): string {
  return `${Math.max(0, Math.round(ms))}ms`
}

/** `127.0.0.1:8500`, `http://consul:8500` or `https://consul:8501` (Consul's own CONSUL_HTTP_ADDR forms). */
export function parseConsulAddress (text: string): URL {
  const withScheme = /^[a-z]+:\/\//i.test(text) ? text : `http://${text}`
  let url: URL
  try {
    url = new URL(withScheme)
  } catch {
    // Not the parser's error as the cause: it repeats the address whole, credentials and all.
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--consul = ${JSON.stringify(withoutCredentials(text))}: expected http(s)://HOST:PORT`)
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || (url.pathname !== '/' && url.pathname !== '') || url.search || url.username || url.password) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--consul = ${JSON.stringify(withoutCredentials(text))}: expected http(s)://HOST:PORT, without a path or credentials (a token goes in --consul-token)`)
  }
  return url
}

/** The connection the configuration names; reads the CA file. Throws configuration errors. */
export function consulConnection (config: { consul: string, consulToken?: string | undefined, consulCaFile?: string | undefined }): ConsulConnection {
  const address = parseConsulAddress(config.consul)
  let ca: Buffer | undefined
  if (config.consulCaFile !== undefined) {
    if (address.protocol !== 'https:') {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--consul-ca-file is given but --consul = ${JSON.stringify(config.consul)} is not https://`)
    }
    try {
      ca = readFileSync(config.consulCaFile)
    } catch (err) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `--consul-ca-file ${config.consulCaFile}: ${(err as Error).message}`, { cause: err })
    }
    // Node takes a file without a certificate in it as an empty set of roots: every connection would fail.
    try {
      new X509Certificate(ca)
    } catch (err) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `--consul-ca-file ${config.consulCaFile}: no PEM certificate in it`, { cause: err })
    }
  }
  const token = config.consulToken === undefined || config.consulToken === '' ? undefined : config.consulToken
  return { address, token, ca }
}
