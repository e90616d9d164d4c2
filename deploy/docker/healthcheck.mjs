// The image's HEALTHCHECK: exits 0 when the fleetgate process in this container answers GET /healthz on
// its admin listener. Which port: FLEETGATE_ADMIN_LISTEN's, when set; otherwise the proxy's default
// (9901), then the agent's (9902). A wildcard host is probed on the loopback address.

const TIMEOUT_MS = 3000

function targets (env) {
  const listen = env.FLEETGATE_ADMIN_LISTEN
  if (!listen) return ['127.0.0.1:9901', '127.0.0.1:9902']
  const colon = listen.lastIndexOf(':')
  let host = listen.slice(0, colon)
  const port = listen.slice(colon + 1)
  if (host === '' || host === '0.0.0.0') host = '127.0.0.1'
  else if (host === '[::]' || host === '::') host = '[::1]'
  return [`${host}:${port}`]
}

async function healthy (address) {
  try {
    const res = await fetch(`http://${address}/healthz`, { signal: AbortSignal.timeout(TIMEOUT_MS) })
    await res.arrayBuffer()
    return res.ok
  } catch {
    return false
  }
}

for (const address of targets(process.env)) {
  if (await healthy(address)) process.exit(0)
}
process.stderr.write(`fleetgate healthcheck: no answer from /healthz on ${targets(process.env).join(' or ')}\n`)
process.exit(1)
