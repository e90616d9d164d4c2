// A stand-in for a Superset instance, for the demo fleet and for trying the agent by hand: it answers
// GET /health with OK, and every other request with a page (or JSON) naming the instance that served it.
//
//   node dist/demo/backend.js --name a --port 8001 [--host 127.0.0.1] [--exit-with-parent]
//   curl -X POST http://127.0.0.1:8001/health/fail    # /health answers 503 from now on
//   curl -X POST http://127.0.0.1:8001/health/pass    # and OK again

import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { resolve as resolvePath } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'

export interface DemoBackend {
  readonly server: Server
  readonly name: string
  readonly url: string
  close(): Promise<void>
}

const COLORS = ['#2b6cb0', '#2f855a', '#b7791f', '#9b2c2c', '#6b46c1', '#2c7a7b', '#975a16']

export async function startDemoBackend (options: { name: string, host?: string, port?: number }): Promise<DemoBackend> {
  const { name } = options
  let healthy = true
  let served = 0
  const color = COLORS[[...name].reduce((sum, c) => sum + c.charCodeAt(0), 0) % COLORS.length]!
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]
    res.setHeader('x-served-by', name)
    if (req.method === 'POST' && (path === '/health/fail' || path === '/health/pass')) {
      healthy = path === '/health/pass'
      res.end(`${name}: /health now answers ${healthy ? 'OK' : '503'}\n`)
      return
    }
    if (path === '/health' || path === '/healthcheck' || path === '/ping') {
      res.statusCode = healthy ? 200 : 503
      res.setHeader('content-type', 'text/plain')
      res.end(healthy ? 'OK' : 'unhealthy')
      return
    }
    served++
    req.resume()
    const body = { instance: name, pid: process.pid, served, method: req.method, url: req.url, forwardedFor: req.headers['x-forwarded-for'] ?? null }
    if ((req.headers.accept ?? '').includes('text/html')) {
      res.setHeader('content-type', 'text/html; charset=utf-8')
      res.end(`<!doctype html><meta charset="utf-8"><title>instance ${escapeHtml(name)}</title>
<body style="font:18px system-ui;margin:3em;border-left:12px solid ${color};padding-left:1em">
<h1>Served by instance <code>${escapeHtml(name)}</code></h1>
<p>pid ${process.pid} &middot; request #${served} on this instance &middot; reload to see the proxy rotate.</p>
</body>`)
      return
    }
    res.setHeader('content-type', 'application/json')
    res.end(`${JSON.stringify(body)}\n`)
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', resolve)
  })
  const address = server.address() as AddressInfo
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address
  return {
    server,
    name,
    url: `http://${host}:${address.port}`,
    close: () => new Promise(resolve => {
      server.close(() => resolve())
      server.closeIdleConnections()
    }),
  }
}

function escapeHtml (text: string): string {
  return text.replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`)
}

async function main (): Promise<void> {
  const { values } = parseArgs({
    options: { name: { type: 'string' }, host: { type: 'string' }, port: { type: 'string' }, 'exit-with-parent': { type: 'boolean' } },
    strict: true,
  })
  const name = values.name ?? `backend-${process.pid}`
  const backend = await startDemoBackend({ name, host: values.host ?? '127.0.0.1', port: Number(values.port ?? 0) })
  process.stdout.write(`${JSON.stringify({ backend: name, url: backend.url, pid: process.pid })}\n`)
  const stop = (): void => {
    void backend.close().then(() => process.exit(0))
    // Requests still running get a moment; then go anyway.
    setTimeout(() => process.exit(0), 5000).unref()
  }
  process.once('SIGTERM', stop)
  process.once('SIGINT', stop)
  // Stand for a reload (gunicorn re-reads its config on SIGHUP) and gunicorn's other signals (its logs
  // reopened on USR1, more or fewer workers on TTIN and TTOU, a new binary on USR2): say so, keep serving.
  for (const signal of ['SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGTTIN', 'SIGTTOU'] as const) {
    process.on(signal, () => process.stdout.write(`${JSON.stringify({ backend: name, signal })}\n`))
  }
  if (values['exit-with-parent']) {
    // Wrapped by an agent that was SIGKILLed: nobody will stop us, so do not linger as an orphan.
    const parent = process.ppid
    setInterval(() => { if (process.ppid !== parent) stop() }, 250).unref()
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === resolvePath(process.argv[1])) {
  main().catch(err => {
    process.stderr.write(`demo backend: ${(err as Error).message}\n`)
    process.exit(1)
  })
}
