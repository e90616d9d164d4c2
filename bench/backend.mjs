// A benchmark backend on node:http (used with --backend node; the default backend is NGINX, which
// costs less CPU on the shared core). GET /1k answers 1 KB, GET /256k answers 256 KB, any other
// method reads the body and answers 1 KB. Every answer names the backend in X-Backend.
//   node bench/backend.mjs PORT NAME

import { createServer } from 'node:http'

const port = Number(process.argv[2])
const name = process.argv[3] ?? String(port)
const small = Buffer.alloc(1024, 'a')
const large = Buffer.alloc(256 * 1024, 'b')

function answer (req, res) {
  const body = req.url === '/256k' ? large : small
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'x-backend': name })
  res.end(body)
}

const server = createServer((req, res) => {
  if (req.method === 'GET' || req.method === 'HEAD') return answer(req, res)
  req.on('end', () => answer(req, res))
  req.resume()
})
// Longer than any proxy's upstream keep-alive, so the proxy always closes idle sockets first.
server.keepAliveTimeout = 65_000
server.headersTimeout = 66_000
server.listen(port, '127.0.0.1')
process.on('SIGTERM', () => process.exit(0))
