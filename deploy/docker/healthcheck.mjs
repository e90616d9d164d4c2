// The image's HEALTHCHECK: exits 0 when the fleetgate process in this container answers GET /healthz on
// its admin listener. Which one: the process's own --admin-listen, read as the process read it (its
// command line's flags, its FLEETGATE_* variables, a --config file from its working directory), by
// fleetgate's own configuration code. Should that fail, FLEETGATE_ADMIN_LISTEN's port when set;
// otherwise the proxy's default (9901), then the agent's (9902). A wildcard host is probed on the
// loopback address.

import { readdirSync, readFileSync, readlinkSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'

const TIMEOUT_MS = 3000

/**
 * The fleetgate process's CLI path and arguments (`proxy --admin-listen …`), from /proc: the lowest pid,
 * the primary of a proxy's workers (which run with the same arguments).
 */
function fleetgateProcess () {
  const pids = readdirSync('/proc').filter(name => /^\d+$/.test(name)).map(Number).sort((a, b) => a - b)
  for (const pid of pids) {
    let argv
    try {
      argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0$/, '').split('\0')
    } catch {
      continue // gone meanwhile
    }
    const cli = argv.findIndex(arg => arg.endsWith('/dist/cli.js'))
    if (cli !== -1 && (argv[cli + 1] === 'proxy' || argv[cli + 1] === 'agent')) {
      return { pid, cli: argv[cli], command: argv[cli + 1], args: argv.slice(cli + 2) }
    }
  }
  return undefined
}

async function configuredAdminListen () {
  try {
    const found = fleetgateProcess()
    if (!found) return undefined
    const { loadConfig, ProxyConfigSchema, AgentConfigSchema } = await import(pathToFileURL(join(dirname(found.cli), 'config.js')).href)
    const schema = found.command === 'proxy' ? ProxyConfigSchema : AgentConfigSchema
    // Its environment and working directory (a relative --config), as it started.
    const env = Object.fromEntries(readFileSync(`/proc/${found.pid}/environ`, 'utf8').split('\0').filter(Boolean)
      .map(entry => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)]))
    process.chdir(readlinkSync(`/proc/${found.pid}/cwd`))
    return loadConfig(schema, { argv: found.args, env, takesCommand: found.command === 'agent' }).config.adminListen
  } catch {
    return undefined
  }
}

function targets (listen) {
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

const addresses = targets(await configuredAdminListen() ?? process.env.FLEETGATE_ADMIN_LISTEN)
for (const address of addresses) {
  if (await healthy(address)) process.exit(0)
}
process.stderr.write(`fleetgate healthcheck: no answer from /healthz on ${addresses.join(' or ')}\n`)
process.exit(1)
