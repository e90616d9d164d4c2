// The agent's admin listener: /healthz, /metrics, /status, and /maintenance, where an operator drains
// the instance without stopping it (PUT) and brings it back (DELETE).

import { isIP } from 'node:net'
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { Registry } from 'prom-client'
import { ERRORS } from '../errors.ts'
import type { Logger } from '../logger.ts'
import type { AgentStatus } from './agent.ts'

export interface AgentAdminOptions {
  readonly registry: Registry
  readonly logger: Logger
  readonly status: () => AgentStatus
  /** Resolves false when the agent is shutting down and maintenance no longer applies. */
  readonly setMaintenance: (draining: boolean) => Promise<boolean>
}

/**
 * PUT /maintenance puts the instance into draining (no new requests through the proxy, in-flight ones
 * finish) and DELETE /maintenance takes it out again. Both are idempotent, take no body, and answer the
 * agent's status once the registry says so. GET /maintenance reads the flag.
 */
export function buildAgentAdmin (options: AgentAdminOptions): FastifyInstance {
  const app = Fastify({
    loggerInstance: options.logger.child({ component: 'admin' }) as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    // Closed only once the agent has stopped, when nothing it serves matters any more. Node's close
    // leaves a connection that has not sent a whole request (a TCP check that stays connected, a
    // half-sent scrape) open, and the agent would not exit until that client left.
    forceCloseConnections: true,
  })
  // Any body (curl -X PUT with or without one) is ignored rather than parsed.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser('*', (_req, _payload, done) => done(null))

  app.get('/healthz', async (_req, reply) => reply.type('text/plain').send('ok\n'))
  app.get('/status', async (_req, reply) => reply.header('cache-control', 'no-store').send(options.status()))
  app.get('/metrics', async (_req, reply) => {
    const body = await options.registry.metrics()
    return reply.type(options.registry.contentType).send(body)
  })
  app.get('/maintenance', async (_req, reply) => reply.header('cache-control', 'no-store').send({ maintenance: options.status().maintenance }))
  const maintenance = (draining: boolean) => async (req: FastifyRequest, reply: FastifyReply) => {
    if (!mayChangeMaintenance(req.socket.remoteAddress, req.headers.host)) {
      const { message, statusCode } = ERRORS.FLEETGATE_ERR_AGENT_MAINTENANCE_FORBIDDEN
      return reply.code(statusCode).send({ error: 'FLEETGATE_ERR_AGENT_MAINTENANCE_FORBIDDEN', message })
    }
    const applied = await options.setMaintenance(draining)
    if (!applied) return reply.code(409).send({ error: 'the agent is shutting down', status: options.status() })
    return reply.header('cache-control', 'no-store').send(options.status())
  }
  app.put('/maintenance', maintenance(true))
  app.delete('/maintenance', maintenance(false))
  return app
}

/**
 * Whether a request may drain the instance or bring it back: it comes from the instance's own host (a
 * loopback address, as from `kubectl exec` or `docker exec`), and names the agent by address or as
 * localhost, not by a name a web page could have pointed at 127.0.0.1 (DNS rebinding). The admin listener
 * may listen wider, for Prometheus and probes; taking an instance out of the fleet is not for the network.
 */
export function mayChangeMaintenance (remoteAddress: string | undefined, host: string | undefined): boolean {
  if (remoteAddress === undefined) return false
  const client = remoteAddress.startsWith('::ffff:') ? remoteAddress.slice(7) : remoteAddress
  if (client !== '::1' && !(isIP(client) === 4 && client.startsWith('127.'))) return false
  if (host === undefined) return true
  const name = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d*$/, '')
  return name.toLowerCase() === 'localhost' || isIP(name) !== 0
}
