// A stand-in for one instance of the fleet (e.g. one Superset web server): a real node:http server on
// 127.0.0.1 that says who served each request.

import http from 'node:http'
import type { AddressInfo } from 'node:net'

export interface RecordedRequest {
  method: string
  url: string
  headers: http.IncomingHttpHeaders
}

export interface Backend {
  readonly name: string
  readonly host: '127.0.0.1'
  readonly port: number
  /** `127.0.0.1:<port>` */
  readonly address: string
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly server: http.Server
  /** Requests served other than /health. */
  readonly hits: number
  /** Requests to /health. */
  readonly healthChecks: number
  /** The non-/health requests, oldest first. */
  readonly requests: readonly RecordedRequest[]
  /** Delay before answering any path but /health (ms). Mutable. */
  delayMs: number
  /** Delay before answering /health (ms). Mutable. */
  healthDelayMs: number
  /** false: /health answers 503 "UNHEALTHY"; other paths are still served. */
  setHealthy(healthy: boolean): void
  readonly healthy: boolean
  resetHits(): void
  /** Stops listening and destroys open connections (keep-alive ones included). */
  close(): Promise<void>
}

/** The JSON body every non-/health request gets. */
export interface BackendReply {
  instance: string
  method: string
  url: string
  headers: http.IncomingHttpHeaders
  /** Request body as UTF-8 (empty for GET). */
  body: string
}

export async function startBackend(name: string, opts: { port?: number; delayMs?: number } = {}): Promise<Backend> {
  let healthy = true
  let hits = 0
  let healthChecks = 0
  const requests: RecordedRequest[] = []
  const timers = new Set<NodeJS.Timeout>()

  const later = (ms: number, fn: () => void): void => {
    if (ms <= 0) return fn()
    const timer = setTimeout(() => {
      timers.delete(timer)
      fn()
    }, ms)
    timers.add(timer)
  }

  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET'
    const url = req.url ?? '/'
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      if (url.split('?')[0] === '/health') {
        healthChecks++
        later(backend.healthDelayMs, () => {
          if (res.destroyed) return
          const status = healthy ? 200 : 503
          res.writeHead(status, { 'content-type': 'text/plain', 'x-served-by': name })
          res.end(healthy ? 'OK' : 'UNHEALTHY')
        })
        return
      }
      hits++
      requests.push({ method, url, headers: req.headers })
      later(backend.delayMs, () => {
        if (res.destroyed) return
        const reply: BackendReply = { instance: name, method, url, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') }
        res.writeHead(200, { 'content-type': 'application/json', 'x-served-by': name })
        res.end(JSON.stringify(reply))
      })
    })
  })

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject)
      resolve()
    })
  })
  const port = (server.address() as AddressInfo).port

  const backend: Backend = {
    name,
    host: '127.0.0.1',
    port,
    address: `127.0.0.1:${port}`,
    url: `http://127.0.0.1:${port}`,
    server,
    get hits() {
      return hits
    },
    get healthChecks() {
      return healthChecks
    },
    requests,
    delayMs: opts.delayMs ?? 0,
    healthDelayMs: 0,
    setHealthy(value: boolean) {
      healthy = value
    },
    get healthy() {
      return healthy
    },
    resetHits() {
      hits = 0
      healthChecks = 0
      requests.length = 0
    },
    close: async () => {
      timers.forEach(clearTimeout)
      timers.clear()
      if (!server.listening) return
      const closed = new Promise<void>((resolve) => server.close(() => resolve()))
      server.closeAllConnections()
      await closed
    },
  }
  return backend
}

/** Starts `names.length` backends. */
export async function startBackends(...names: string[]): Promise<Backend[]> {
  return await Promise.all(names.map((name) => startBackend(name)))
}

/** Hits per backend name, e.g. { a: 3, b: 3, c: 4 }. */
export function hitCounts(backends: readonly Backend[]): Record<string, number> {
  return Object.fromEntries(backends.map((b) => [b.name, b.hits]))
}
