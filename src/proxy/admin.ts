// The admin listener: /healthz (alive), /readyz (first membership known, not shutting down), /status
// (the source and every instance) and /metrics (Prometheus). It observes; it never changes routing.

import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { Registry } from 'prom-client'
import type { Logger } from '../logger.ts'

export interface AdminOptions {
  readonly registry: Registry
  readonly logger: Logger
  readonly ready: () => boolean
  readonly status: () => unknown
  /** A human status page; served for `Accept: text/html`. */
  readonly statusPage?: () => string | Promise<string>
  /** The /metrics body; defaults to the registry's own. */
  readonly metrics?: () => Promise<string | Buffer>
}

export function buildAdmin (options: AdminOptions): FastifyInstance {
  const app = Fastify({ loggerInstance: options.logger.child({ component: 'admin' }) as FastifyBaseLogger, logController: new LogController({ disableRequestLogging: true }) })
  app.get('/healthz', async (_req, reply) => reply.type('text/plain').send('ok\n'))
  app.get('/readyz', async (_req, reply) => {
    const ready = options.ready()
    return reply.code(ready ? 200 : 503).type('text/plain').send(ready ? 'ready\n' : 'not ready\n')
  })
  app.get('/status', async (req, reply) => {
    const wantsHtml = options.statusPage && (req.headers.accept ?? '').includes('text/html')
    if (wantsHtml) return reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').send(await options.statusPage!())
    return reply.header('cache-control', 'no-store').send(await options.status())
  })
  app.get('/metrics', async (_req, reply) => {
    const body = options.metrics ? await options.metrics() : await options.registry.metrics()
    return reply.type(options.registry.contentType).send(body)
  })
  return app
}
