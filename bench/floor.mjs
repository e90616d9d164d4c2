// The Node floor: the least a proxy on fleetgate's engine does. A bare node:http server hands each
// request to an undici Pool per backend, round robin, with nothing else: no Fastify, no timeouts of its
// own, no retries, no metrics, no logging. Bodies stream both ways with backpressure; hop-by-hop headers
// are dropped and X-Forwarded-For added, as every other proxy here does. It says how far a minimal proxy
// on fleetgate's engine gets on the same host in the same run.
//   node bench/floor.mjs LISTEN_PORT http://127.0.0.1:A,http://127.0.0.1:B,...

import { createServer } from 'node:http'
import { Pool } from 'undici'

const port = Number(process.argv[2])
// The same connection limit per backend as fleetgate's default and the Node peer's.
const pools = process.argv[3].split(',').map(url => new Pool(url, { connections: 128, pipelining: 1, headersTimeout: 0, bodyTimeout: 0 }))

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'expect'])

let next = 0
const server = createServer((req, res) => {
  const pool = pools[next]
  next = next + 1 === pools.length ? 0 : next + 1
  const headers = []
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    const name = req.rawHeaders[i].toLowerCase()
    if (!HOP_BY_HOP.has(name) && name !== 'x-forwarded-for') headers.push(req.rawHeaders[i], req.rawHeaders[i + 1])
  }
  const forwardedFor = req.headers['x-forwarded-for']
  headers.push('x-forwarded-for', forwardedFor ? `${forwardedFor}, ${req.socket.remoteAddress}` : req.socket.remoteAddress)
  const bodyless = req.method === 'GET' || req.method === 'HEAD'
  // A client that leaves takes its request with it, also one still waiting for a connection: sent on
  // anyway, its answer would pause that connection for a 'drain' that never comes.
  let abort
  let gone = false
  res.on('close', () => {
    if (res.writableFinished) return
    gone = true
    abort?.()
  })
  pool.dispatch({ method: req.method, path: req.url, headers, body: bodyless ? null : req }, {
    onConnect (abortRequest) {
      if (gone) abortRequest()
      else abort = abortRequest
    },
    onHeaders (status, raw, resume) {
      // 1xx interim answers are not passed on; the final one follows.
      if (status < 200) return true
      const out = []
      for (let i = 0; i < raw.length; i += 2) {
        const name = raw[i].toString('latin1')
        if (!HOP_BY_HOP.has(name.toLowerCase())) out.push(name, raw[i + 1].toString('latin1'))
      }
      res.writeHead(status, out)
      res.on('drain', resume)
      return true
    },
    onData (chunk) { return res.write(chunk) },
    onComplete () { res.end() },
    onError () {
      if (res.headersSent) return res.destroy()
      res.writeHead(502, { 'content-length': 0 })
      res.end()
    },
  })
})
server.listen(port, '127.0.0.1')
process.on('SIGTERM', () => server.close(() => process.exit(0)))
