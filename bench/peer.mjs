// The Node peer: fastify + @fastify/reply-from (undici), round robin over the same backends as
// fleetgate, streaming request bodies, adding X-Forwarded-For like every other proxy here.
//   node bench/peer.mjs LISTEN_PORT http://127.0.0.1:A,http://127.0.0.1:B,...

import Fastify from 'fastify'
import replyFrom from '@fastify/reply-from'

const port = Number(process.argv[2])
const upstreams = process.argv[3].split(',')

const app = Fastify({ logger: false })
await app.register(replyFrom, {
  // No `base`: with one, reply-from sends every request to its origin whatever getUpstream picks
  // (its undici path takes `base` over the URL), and the round robin below would be lost.
  // An undici Agent: one keep-alive pool per backend of at most 128 connections (reply-from's default,
  // and fleetgate's --max-connections-per-instance default).
  undici: { keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000, pipelining: 1, connections: 128 },
})
// Bodies pass through as streams, as @fastify/http-proxy does.
app.removeAllContentTypeParsers()
app.addContentTypeParser('*', (_req, payload, done) => done(null, payload))

let next = 0
const addForwardedFor = (req, headers) => ({
  ...headers,
  'x-forwarded-for': headers['x-forwarded-for'] ? `${headers['x-forwarded-for']}, ${req.socket.remoteAddress}` : req.socket.remoteAddress,
})
// reply-from copies the backend's `Connection: keep-alive` to the client even when the client asked for
// `Connection: close`; the client then reuses a socket Node is closing (400s and resets). Hop-by-hop
// headers are the proxy's own business, as in fleetgate, HAProxy and NGINX.
const dropHopByHop = headers => {
  const { connection, 'keep-alive': keepAlive, ...rest } = headers
  return rest
}
app.all('/*', (request, reply) => {
  const upstream = upstreams[next]
  next = next + 1 === upstreams.length ? 0 : next + 1
  reply.from(request.url, { getUpstream: () => upstream, rewriteRequestHeaders: addForwardedFor, rewriteHeaders: dropHopByHop })
})

await app.listen({ host: '127.0.0.1', port })
process.on('SIGTERM', () => { app.close().then(() => process.exit(0)) })
