// `fleetgate agent`: loads the configuration, then wires the health check, the registrar (ZooKeeper or Consul), the
// wrapped command (if any), the admin listener and the signals, and returns the process exit code.

import { AgentConfigSchema, loadConfig, splitHostPort, warnUnknownVariables, type AgentConfig } from '../config.ts'
import { ConsulClient, consulConnection } from '../consul/client.ts'
import { FleetgateError, listenFor } from '../errors.ts'
import { createLogger, type Logger } from '../logger.ts'
import { encodeCurator } from '../membership/instance.ts'
import { createAgentMetrics, createRegistry } from '../metrics.ts'
import { buildAgentAdmin } from './admin.ts'
import { Agent } from './agent.ts'
import { ConsulRegistrar, consulMeta } from './consul-registrar.ts'
import { httpProbe, tcpProbe, type Probe } from './health-check.ts'
import { defaultInstanceId, parseLabels } from './identity.ts'
import type { RegistrarEvent } from './registrar.ts'
import { Supervisor } from './supervisor.ts'
import { ZooKeeperRegistrar } from './zookeeper-registrar.ts'

/** Everything the agent derives from its configuration; a problem here is a configuration error. */
export interface AgentSettings {
  readonly registry: 'zookeeper' | 'consul'
  /** Set when the registry is ZooKeeper. */
  readonly zookeeper: string | undefined
  readonly id: string
  readonly host: string
  readonly port: number
  readonly labels: Readonly<Record<string, string>>
  readonly target: URL
}

export function resolveAgentSettings (config: AgentConfig): AgentSettings {
  const registry = config.discovery ?? 'zookeeper'
  if (registry === 'zookeeper' && config.zookeeper === undefined) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', '--zookeeper is required: expected HOST:PORT[,HOST:PORT...][/chroot]')
  }
  const { host, port } = splitHostPort(config.advertise)
  const labels = parseLabels(config.labels)
  if (registry === 'consul') consulMeta(labels)
  return {
    registry,
    zookeeper: config.zookeeper,
    id: config.id ?? defaultInstanceId(config.advertise),
    host,
    port,
    labels,
    target: new URL(config.target),
  }
}

/** What the agent passes on to its wrapped command as it comes. */
const PASSED_ON: readonly NodeJS.Signals[] = ['SIGHUP', 'SIGUSR1', 'SIGUSR2', 'SIGQUIT', 'SIGWINCH', 'SIGTTIN', 'SIGTTOU']

export async function runAgent (argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Promise<number> {
  const { config, command, ignored, unknownVariables } = loadConfig(AgentConfigSchema, { argv, env, takesCommand: true })
  const settings = resolveAgentSettings(config)
  const logger = createLogger({ level: config.logLevel, name: 'fleetgate-agent' })
  if (ignored.length > 0) logger.info({ ignored }, 'settings of another discovery backend are ignored')
  warnUnknownVariables(logger, unknownVariables)
  const registry = createRegistry()
  const metrics = createAgentMetrics(registry)
  // From 0, as the agent's other counters (see Agent).
  if (settings.registry !== 'consul') metrics.sessionExpirations.labels(config.service).inc(0)
  // Like a Curator ServiceInstance, built once: re-registering after an expiry writes the same document.
  const registrationTimeUTC = Date.now()

  let agent: Agent | undefined
  const onEvent = (event: RegistrarEvent): void => agent?.noteRegistration(event)
  const registrar = settings.registry === 'consul' ? buildConsulRegistrar(config, settings, logger, onEvent) : new ZooKeeperRegistrar({
    connectString: settings.zookeeper!,
    sessionTimeoutMs: config.sessionTimeoutMs,
    basePath: config.basePath,
    service: config.service,
    id: settings.id,
    encode: state => encodeCurator({
      service: config.service,
      id: settings.id,
      host: settings.host,
      port: settings.port,
      state,
      weight: config.weight,
      labels: settings.labels,
      registrationTimeUTC,
    }),
    verifyIntervalMs: config.healthIntervalMs,
    logger,
    onEvent,
  })

  const admin = buildAgentAdmin({
    registry,
    logger,
    status: () => agent!.status(),
    setMaintenance: draining => agent!.setMaintenance(draining),
  })
  const adminAddress = splitHostPort(config.adminListen)
  await listenFor('--admin-listen', () => admin.listen({ host: adminAddress.host, port: adminAddress.port }))

  const supervisor = command.length > 0 ? new Supervisor({ command, env, logger }) : undefined
  agent = new Agent({
    service: config.service,
    id: settings.id,
    registrar,
    probe: buildProbe(config, settings.target),
    healthIntervalMs: config.healthIntervalMs,
    rise: config.rise,
    fall: config.fall,
    drainMs: config.drainMs,
    stopTimeoutMs: config.stopTimeoutMs,
    ...(supervisor ? { supervisor } : {}),
    metrics,
    logger,
  })

  // SIGTERM and SIGINT drain first and reach the command only at the end. The signals a server takes
  // while it runs go through, as tini and dumb-init pass them: a reload (HUP), and gunicorn's log reopening
  // (USR1, logrotate's), more or fewer workers (TTIN, TTOU), new binary (USR2), quick stop (QUIT) and
  // graceful worker stop (WINCH). Without a command, HUP and USR1 are taken (and ignored): node's default
  // for USR1 opens its inspector, which runs any code a local client sends it. The others keep node's.
  const handlers = new Map<NodeJS.Signals, (signal: NodeJS.Signals) => void>()
  const onStop = (signal: NodeJS.Signals): void => { void agent!.shutdown(signal) }
  handlers.set('SIGTERM', onStop).set('SIGINT', onStop)
  if (supervisor) {
    // Not the terminal's job-control signals when writing to a terminal: caught, a background agent's
    // next log line would raise SIGTTOU again and again instead of stopping it.
    const onTerminal = process.stdout.isTTY === true || process.stderr.isTTY === true
    for (const signal of PASSED_ON) {
      if (onTerminal && (signal === 'SIGTTIN' || signal === 'SIGTTOU')) continue
      handlers.set(signal, passed => supervisor.signal(passed))
    }
  } else {
    handlers.set('SIGHUP', () => logger.info('SIGHUP ignored: no wrapped command'))
    handlers.set('SIGUSR1', () => logger.info({ signal: 'SIGUSR1' }, 'SIGUSR1 ignored: no wrapped command'))
  }
  for (const [signal, handler] of handlers) process.on(signal, handler)
  try {
    if (supervisor) await supervisor.start()
  } catch (err) {
    await admin.close()
    await registrar.close()
    throw err
  }

  const adminPort = (admin.server.address() as { port: number }).port
  logger.info({
    service: config.service,
    instance: settings.id,
    ...(registrar instanceof ZooKeeperRegistrar ? { znode: registrar.path } : { consul: config.consul, serviceId: settings.id }),
    advertise: config.advertise,
    target: config.target,
    check: config.healthCheck,
    admin: `http://${adminAddress.host.includes(':') ? `[${adminAddress.host}]` : adminAddress.host}:${adminPort}`,
  }, 'fleetgate agent listening')
  agent.start()

  const code = await agent.done
  for (const [signal, handler] of handlers) process.removeListener(signal, handler)
  await admin.close()
  return code
}

/** The TTL check is the Consul side of the session timeout: how soon a crashed agent's instance fails. */
function buildConsulRegistrar (config: AgentConfig, settings: AgentSettings, logger: Logger, onEvent: (event: RegistrarEvent) => void): ConsulRegistrar {
  return new ConsulRegistrar({
    client: new ConsulClient(consulConnection(config)),
    service: config.service,
    id: settings.id,
    host: settings.host,
    port: settings.port,
    weight: config.weight,
    labels: settings.labels,
    tags: config.consulTag === undefined ? [] : [config.consulTag],
    ttlMs: config.sessionTimeoutMs,
    logger,
    onEvent,
  })
}

function buildProbe (config: AgentConfig, target: URL): Probe {
  if (config.healthCheck === 'tcp') {
    const port = target.port ? Number(target.port) : target.protocol === 'https:' ? 443 : 80
    const host = target.hostname.startsWith('[') ? target.hostname.slice(1, -1) : target.hostname
    return tcpProbe(host, port, config.healthTimeoutMs)
  }
  return httpProbe(new URL(config.healthPath, target), config.healthTimeoutMs)
}
