#!/usr/bin/env node
// The command line: `fleetgate proxy` and `fleetgate agent`. The only place that reads process.env and
// process.argv; a configuration error exits 2 with a message naming the key, value and expectation.

// First: a SIGUSR1 during start-up must not open Node's inspector.
import './no-inspector.ts'
import cluster from 'node:cluster'
import { readFileSync } from 'node:fs'
import type { TObject } from '@sinclair/typebox'
import { AgentConfigSchema, discoveryOf, kebab, loadConfig, ProxyConfigSchema, snake, warnUnknownVariables, WORKER_CONFIG_ENV, type ProxyConfig } from './config.ts'
import { FleetgateError, isFleetgateError } from './errors.ts'
import { createLogger, type Logger } from './logger.ts'
import type { MembershipSource } from './membership/source.ts'
import { parseStaticInstances, StaticSource } from './membership/static.ts'
import { runPrimary, runWorker } from './proxy/cluster.ts'
import { missingNodeFlags } from './proxy/node-flags.ts'
import { createProxy } from './proxy/server.ts'

const USAGE = `Usage:
  fleetgate proxy [--zookeeper HOSTS | --static URLS | --discovery consul --consul URL] [--service NAME] [--listen HOST:PORT] [options]
  fleetgate agent [--zookeeper HOSTS | --discovery consul --consul URL] --advertise HOST:PORT [--target URL] [options] [-- COMMAND ARGS...]
  fleetgate help proxy|agent
  fleetgate --version

Every option is also read from FLEETGATE_<NAME> (e.g. FLEETGATE_LISTEN) and from a JSON or YAML file
given with --config FILE (keys in camelCase, e.g. adminListen). Flags win over environment, environment
over the file.`

export async function main (argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Promise<number> {
  const [command, ...rest] = argv
  switch (command) {
    case 'proxy':
      return runProxy(rest, env)
    case 'agent': {
      const own = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest
      if (own.includes('--help') || own.includes('-h')) {
        process.stdout.write(help('agent'))
        return 0
      }
      const { runAgent } = await import('./agent/main.ts')
      return runAgent(rest, env)
    }
    case '--version':
    case 'version':
      process.stdout.write(`${version()}\n`)
      return 0
    case 'help':
    case '--help':
    case '-h':
    case undefined:
      if (rest[0] !== undefined && rest[0] !== 'proxy' && rest[0] !== 'agent') {
        process.stderr.write(`fleetgate: FLEETGATE_ERR_CLI_USAGE: no help for ${JSON.stringify(rest[0])}: expected proxy or agent\n\n${USAGE}\n`)
        return 2
      }
      // Without a command, the usage is an error's: on stderr, with exit code 2.
      if (command === undefined) {
        process.stderr.write(`fleetgate: FLEETGATE_ERR_CLI_USAGE: no command: expected proxy, agent, help or --version\n\n${USAGE}\n`)
        return 2
      }
      process.stdout.write(help(rest[0]))
      return 0
    default:
      process.stderr.write(`fleetgate: FLEETGATE_ERR_CLI_USAGE: unknown command ${JSON.stringify(command)}\n\n${USAGE}\n`)
      return 2
  }
}

async function runProxy (argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(help('proxy'))
    return 0
  }
  // A worker takes its primary's configuration, not the file's as it reads now: a replacement forked after
  // an edit would otherwise serve another port, or other timeouts, beside the workers started with it.
  const inherited = cluster.isWorker ? env[WORKER_CONFIG_ENV] : undefined
  const { config, ignored, unknownVariables } = inherited === undefined
    ? loadConfig(ProxyConfigSchema, { argv, env })
    : { config: JSON.parse(inherited) as ProxyConfig, ignored: [], unknownVariables: [] }
  const logger = createLogger({ level: config.logLevel, name: 'fleetgate-proxy' })
  if (ignored.length > 0) logger.info({ ignored }, 'settings of another discovery backend are ignored')
  warnUnknownVariables(logger, unknownVariables)
  if (cluster.isWorker) {
    const worker = await runWorker(config, logger)
    await worker.closed
    return 0
  }
  const source = await buildSource(config, logger)
  if (config.workers > 1) {
    // Signals are taken from the start: one during start-up stops the workers being started too.
    const stop = new AbortController()
    let primary: Promise<{ close(): Promise<void> }> | undefined
    const stopped = untilSignal(logger, async () => {
      stop.abort()
      await (await primary!).close()
    }, () => {
      // Exiting now means the workers too: left alone, each would go on draining without its primary.
      for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGKILL')
    })
    primary = runPrimary(config, source, logger, config.workers, stop.signal)
    await primary
    await stopped
    return 0
  }
  const missing = missingNodeFlags(process.execArgv)
  if (missing.length > 0) logger.info({ missing }, 'node runs without the flags a serving proxy wants (README: Memory)')
  const proxy = createProxy(config, source, logger)
  await proxy.listen()
  await untilSignal(logger, () => proxy.close())
  return 0
}

/**
 * The discovery backend the configuration names. Only its client is loaded: a proxy on a static list or
 * on Consul never loads the ZooKeeper client, and workers, which follow the primary, load neither.
 */
export async function buildSource (config: ProxyConfig, logger: Logger): Promise<MembershipSource> {
  const discovery = discoveryOf(config)
  if (discovery === 'static') {
    if (config.static === undefined) throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', '--static is required with --discovery static: expected http://HOST:PORT[,http://HOST:PORT...]')
    return new StaticSource(config.service, parseStaticInstances(config.static))
  }
  if (discovery === 'consul') {
    const [{ ConsulClient, consulConnection }, { ConsulSource }] = await Promise.all([import('./consul/client.ts'), import('./membership/consul.ts')])
    return new ConsulSource({
      client: new ConsulClient(consulConnection(config)),
      service: config.service,
      datacenter: config.consulDatacenter,
      tag: config.consulTag,
      waitMs: config.consulWaitMs,
      logger,
    })
  }
  if (config.zookeeper === undefined) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', '--zookeeper is required (or --static for a fixed list): expected HOST:PORT[,HOST:PORT...][/chroot]')
  }
  const { ZooKeeperSource } = await import('./membership/zookeeper.ts')
  return new ZooKeeperSource({
    connectString: config.zookeeper,
    basePath: config.basePath,
    service: config.service,
    sessionTimeoutMs: config.sessionTimeoutMs,
    resyncIntervalMs: config.resyncIntervalMs,
    logger,
  })
}

/**
 * Resolves once SIGTERM or SIGINT has been handled by `shutdown`; a second signal exits at once, after
 * `exitNow`. SIGHUP and SIGUSR1 are ignored.
 */
export function untilSignal (logger: Logger, shutdown: () => Promise<void>, exitNow: () => void = () => undefined): Promise<void> {
  return new Promise(resolve => {
    let stopping = false
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) {
        logger.warn({ signal }, 'second signal: exiting now')
        exitNow()
        process.exit(130)
      }
      stopping = true
      logger.info({ signal }, 'shutting down')
      shutdown().then(resolve, err => {
        logger.error({ err }, 'shutdown failed')
        resolve()
      })
    }
    process.on('SIGTERM', onSignal)
    process.on('SIGINT', onSignal)
    // Node's default for SIGHUP (a closed terminal or SSH session) is to die on the spot, cutting every
    // request in flight; the proxy has no configuration to reload either.
    process.on('SIGHUP', () => logger.info({ signal: 'SIGHUP' }, 'SIGHUP ignored: SIGTERM drains and stops the proxy'))
    // Node's default for SIGUSR1 opens its inspector, which runs any code a local client sends it.
    process.on('SIGUSR1', () => logger.info({ signal: 'SIGUSR1' }, 'SIGUSR1 ignored'))
  })
}

function help (command: string | undefined): string {
  const schema: TObject | undefined = command === 'proxy' ? ProxyConfigSchema : command === 'agent' ? AgentConfigSchema : undefined
  if (!schema) return `${USAGE}\n`
  const lines = Object.entries(schema.properties).map(([key, property]) => {
    const p = property as { description?: string, default?: unknown }
    const flag = `--${kebab(key)}`.padEnd(28)
    const fallback = p.default === undefined ? '' : ` (default ${JSON.stringify(p.default)})`
    return `  ${flag} ${p.description ?? ''}${fallback}  [FLEETGATE_${snake(key)}]`
  })
  return `${USAGE}\n\nOptions for ${command}:\n  --config FILE                JSON or YAML file with any of the keys below\n${lines.join('\n')}\n`
}

function version (): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
  return pkg.version
}

function report (err: unknown): number {
  if (isFleetgateError(err)) {
    process.stderr.write(`fleetgate: ${err.code}: ${err.message}\n`)
    if (err.code === 'FLEETGATE_ERR_CLI_USAGE') process.stderr.write(`\n${USAGE}\n`)
    return 2
  }
  process.stderr.write(`fleetgate: ${(err as Error)?.stack ?? String(err)}\n`)
  return 1
}

main(process.argv.slice(2), process.env).then(
  code => process.exit(code),
  err => process.exit(report(err)),
)
