// Configuration: one schema per command validates flags, FLEETGATE_* environment variables and an
// optional JSON/YAML file alike. Defaults carry units in their names; the result is frozen.

import { readFileSync } from 'node:fs'
import { availableParallelism } from 'node:os'
import { parseArgs } from 'node:util'
import { Type, type Static, type TObject, type TProperties } from '@sinclair/typebox'
import { Ajv, type ErrorObject } from 'ajv'
import { parse as parseYaml } from 'yaml'
import { FleetgateError } from './errors.ts'

const HostPort = (description: string, defaultValue?: string) => Type.String({
  pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$',
  description,
  expected: 'HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080',
  ...(defaultValue === undefined ? {} : { default: defaultValue }),
})

const Milliseconds = (description: string, defaultValue: number, minimum = 1) => Type.Integer({
  minimum, maximum: 86_400_000, default: defaultValue, description, expected: `milliseconds, an integer >= ${minimum}`,
})

const ServiceName = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$', default: 'superset', description: 'Service name',
  expected: 'a name of letters, digits, "_", "." and "-"',
})

/** Keys every command shares. */
const Common = {
  service: ServiceName,
  discovery: Type.Optional(Type.Union([Type.Literal('zookeeper'), Type.Literal('static'), Type.Literal('consul')], {
    description: 'Discovery backend; defaults to static when --static is given, zookeeper otherwise',
    expected: '"zookeeper", "static" or "consul"',
  })),
  zookeeper: Type.Optional(Type.String({
    pattern: '^[^,\\s/]+(,[^,\\s/]+)*(/[^\\s]*)?$', description: 'ZooKeeper connect string, with an optional chroot',
    expected: 'HOST:PORT[,HOST:PORT...][/chroot]',
  })),
  basePath: Type.String({ pattern: '^/([^/\\s]+(/[^/\\s]+)*)?$', default: '/services', description: 'ZooKeeper base path', expected: 'an absolute path like /services' }),
  sessionTimeoutMs: Milliseconds('ZooKeeper session timeout; the agent\'s Consul TTL check', 10_000, 1000),
  consul: Type.String({
    pattern: '^([A-Za-z]+://)?[^\\s/]+/?$', default: 'http://127.0.0.1:8500', description: 'Consul HTTP address (with --discovery consul)',
    expected: 'http(s)://HOST:PORT or HOST:PORT',
  }),
  consulToken: Type.Optional(Type.String({ description: 'Consul ACL token, sent as X-Consul-Token', expected: 'a token' })),
  consulCaFile: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA file for an https:// Consul address', expected: 'a file path' })),
  consulTag: Type.Optional(Type.String({ pattern: '^[^\\s,]{1,255}$', description: 'Proxy: follow only instances with this tag; agent: register with it', expected: 'a tag without spaces or commas' })),
  logLevel: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), {
    default: 'info', description: 'Log level', expected: 'fatal, error, warn, info, debug, trace or silent',
  }),
} satisfies TProperties

export const ProxyConfigSchema = Type.Object({
  ...Common,
  static: Type.Optional(Type.String({ minLength: 1, description: 'Fixed instances: http://host:port,...', expected: 'http://HOST:PORT[,http://HOST:PORT...]' })),
  listen: HostPort('Proxy listener', '0.0.0.0:8080'),
  adminListen: HostPort('Admin listener (/healthz, /readyz, /status, /metrics)', '127.0.0.1:9901'),
  resyncIntervalMs: Milliseconds('Full ZooKeeper resync period', 30_000, 100),
  connectTimeoutMs: Milliseconds('Upstream connect timeout', 5_000),
  headersTimeoutMs: Milliseconds('Upstream response headers timeout (above Superset\'s 60 s)', 120_000),
  idleTimeoutMs: Milliseconds('Idle timeout while a body streams, either way', 300_000),
  maxConnectionsPerInstance: Type.Integer({
    minimum: 0, maximum: 100_000, default: 128,
    description: 'Requests (connections) an instance carries at once, per proxy process (HAProxy\'s maxconn); more wait in a queue. 0: no limit',
    expected: 'an integer from 0 to 100000',
  }),
  queueTimeoutMs: Milliseconds('How long a request may wait for an instance under its connection limit; then 503', 5_000),
  tries: Type.Integer({ minimum: 1, maximum: 10, default: 3, description: 'Tries per request, each on a different instance', expected: 'an integer from 1 to 10' }),
  ejectBaseMs: Milliseconds('First ejection of an instance that refused a connection; doubles in a row', 1_000),
  ejectMaxMs: Milliseconds('Longest ejection', 30_000),
  panicThresholdPercent: Type.Integer({ minimum: 0, maximum: 100, default: 50, description: 'Below this share of healthy instances, ejected ones take requests no healthy one can', expected: 'a percentage from 0 to 100' }),
  shutdownTimeoutMs: Milliseconds('On SIGTERM, how long in-flight requests may finish', 30_000, 0),
  maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1_048_576, default: 65_536, description: 'Largest request head accepted (Superset URLs can be long)', expected: 'bytes, from 1024 to 1048576' }),
  consulDatacenter: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'Consul datacenter to follow (default: the agent\'s own)', expected: 'a datacenter name' })),
  // Consul holds a query 10 min at most: a longer wait would only stretch the time to notice a dead connection.
  consulWaitMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 240_000, description: 'Longest hold of a Consul blocking query (Consul caps it at 10 min)', expected: 'milliseconds, from 100 to 600000' }),
  workers: Type.Integer({ minimum: 1, maximum: 256, default: availableParallelism(), description: 'Proxy processes serving the port (default: one per core); one discovery session for all', expected: 'an integer from 1 to 256' }),
}, { additionalProperties: false })

export type ProxyConfig = Readonly<Static<typeof ProxyConfigSchema>>

export const AgentConfigSchema = Type.Object({
  ...Common,
  target: Type.String({ pattern: '^https?://[^\\s/]+$', default: 'http://127.0.0.1:8088', description: 'The local instance to health-check', expected: 'http://HOST:PORT' }),
  advertise: HostPort('Address the proxy should use for this instance'),
  // "." and ".." are not znode names: joined to the service path they would name the service node or its parent.
  id: Type.Optional(Type.String({ pattern: '^(?!\\.\\.?$)[A-Za-z0-9_.:-]{1,128}$', description: 'Instance id (znode name); defaults to one derived from --advertise', expected: 'letters, digits, "_", ".", ":" and "-", other than "." and ".."' })),
  healthCheck: Type.Union([Type.Literal('http'), Type.Literal('tcp')], { default: 'http', description: 'http: GET the health path; tcp: connect only', expected: '"http" or "tcp"' }),
  healthPath: Type.String({ pattern: '^/', default: '/health', description: 'Health check path', expected: 'a path starting with /' }),
  healthIntervalMs: Milliseconds('Health check period', 2_000, 10),
  healthTimeoutMs: Milliseconds('Health check timeout', 1_000),
  rise: Type.Integer({ minimum: 1, maximum: 100, default: 2, description: 'Passing checks in a row before registering', expected: 'an integer from 1 to 100' }),
  fall: Type.Integer({ minimum: 1, maximum: 100, default: 3, description: 'Failing checks in a row before deregistering', expected: 'an integer from 1 to 100' }),
  drainMs: Milliseconds('On SIGTERM, how long the instance stays registered as draining', 10_000, 0),
  stopTimeoutMs: Milliseconds('Wrapper mode: after the drain, how long the command may take to exit on its signal before SIGKILL', 10_000, 0),
  weight: Type.Integer({ minimum: 1, maximum: 1000, default: 1, description: 'Relative share of requests', expected: 'an integer from 1 to 1000' }),
  labels: Type.Optional(Type.String({ pattern: '^([A-Za-z0-9_.-]+=[^,]*)(,[A-Za-z0-9_.-]+=[^,]*)*$', description: 'Free-form labels: k=v,k=v', expected: 'KEY=VALUE[,KEY=VALUE...]' })),
  adminListen: HostPort('Agent admin listener (/healthz, /metrics, /status, /maintenance)', '127.0.0.1:9902'),
}, { additionalProperties: false })

export type AgentConfig = Readonly<Static<typeof AgentConfigSchema>>

export interface LoadInput {
  readonly argv: readonly string[]
  readonly env: Readonly<Record<string, string | undefined>>
}

export interface Loaded<C> {
  readonly config: C
  /** Arguments after `--` (the agent's wrapped command). */
  readonly command: readonly string[]
}

type Origin = { kind: 'flag' | 'env' | 'file', name: string }

const ajv = new Ajv({ allErrors: true, useDefaults: true, coerceTypes: true, strict: false })

/**
 * Merges defaults < file (--config) < environment < flags, validates once and freezes. Any problem is a
 * FleetgateError naming the key, where it came from, the value and what was expected.
 */
export function loadConfig<S extends TObject> (schema: S, input: LoadInput): Loaded<Readonly<Static<S>>> {
  const keys = Object.keys(schema.properties)
  const raw: Record<string, unknown> = {}
  const origins = new Map<string, Origin>()

  const options: Record<string, { type: 'string' }> = { config: { type: 'string' } }
  for (const key of keys) options[kebab(key)] = { type: 'string' }
  const dashDash = input.argv.indexOf('--')
  const args = dashDash === -1 ? [...input.argv] : input.argv.slice(0, dashDash)
  const command = dashDash === -1 ? [] : input.argv.slice(dashDash + 1)
  let parsed: ReturnType<typeof parseArgs>
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: true })
  } catch (err) {
    throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', (err as Error).message, { cause: err })
  }
  if (parsed.positionals.length > 0) {
    throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', `unexpected argument ${JSON.stringify(parsed.positionals[0])}`)
  }

  const file = (parsed.values.config as string | undefined) ?? input.env.FLEETGATE_CONFIG
  if (file) {
    for (const [key, value] of Object.entries(readConfigFile(file))) {
      raw[key] = value
      origins.set(key, { kind: 'file', name: file })
    }
  }
  for (const key of keys) {
    const name = `FLEETGATE_${snake(key)}`
    const value = input.env[name]
    if (value !== undefined && value !== '') {
      raw[key] = value
      origins.set(key, { kind: 'env', name })
    }
  }
  for (const key of keys) {
    const value = parsed.values[kebab(key)]
    if (value !== undefined) {
      raw[key] = value
      origins.set(key, { kind: 'flag', name: `--${kebab(key)}` })
    }
  }

  const validate = ajv.compile(schema)
  if (!validate(raw)) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', describe(validate.errors ?? [], schema, raw, origins))
  }
  return { config: Object.freeze(raw) as Readonly<Static<S>>, command }
}

function readConfigFile (file: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `${file}: ${(err as Error).message}`, { cause: err })
  }
  let doc: unknown
  try {
    doc = parseYaml(text) // YAML is a superset of JSON
  } catch (err) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `${file}: ${(err as Error).message}`, { cause: err })
  }
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `${file}: expected a mapping of keys to values`)
  }
  return doc as Record<string, unknown>
}

function describe (errors: ErrorObject[], schema: TObject, raw: Record<string, unknown>, origins: Map<string, Origin>): string {
  const lines = new Set<string>()
  for (const error of errors) {
    if (error.keyword === 'additionalProperty' || error.keyword === 'additionalProperties') {
      const key = String(error.params.additionalProperty)
      const origin = origins.get(key)
      lines.add(`unknown key "${key}"${origin ? ` in ${origin.kind === 'file' ? `config file ${origin.name}` : origin.name}` : ''}; known keys: ${Object.keys(schema.properties).join(', ')}`)
      continue
    }
    const key = error.instancePath.split('/')[1] ?? String(error.params.missingProperty ?? '')
    const property = schema.properties[key] as { expected?: string } | undefined
    const origin = origins.get(key)
    const where = origin ? (origin.kind === 'file' ? `${key} in config file ${origin.name}` : `${origin.name}`) : `--${kebab(key)}`
    if (error.keyword === 'required') {
      lines.add(`${where} is required: expected ${property?.expected ?? 'a value'}`)
    } else if (error.keyword !== 'anyOf') {
      lines.add(`${where} = ${JSON.stringify(raw[key])}: expected ${property?.expected ?? error.message}`)
    } else if (!errors.some(e => e !== error && e.instancePath === error.instancePath && e.keyword !== 'const')) {
      lines.add(`${where} = ${JSON.stringify(raw[key])}: expected ${property?.expected ?? error.message}`)
    }
  }
  return [...lines].join('; ')
}

/** `--listen` and `FLEETGATE_LISTEN` for `listen`; `--admin-listen` and `FLEETGATE_ADMIN_LISTEN` for `adminListen`. */
export function kebab (key: string): string {
  return key.replace(/[A-Z]/g, c => `-${c.toLowerCase()}`)
}

export function snake (key: string): string {
  return key.replace(/[A-Z]/g, c => `_${c}`).toUpperCase()
}

/** Splits `HOST:PORT` (IPv6 in brackets). Only call on values the schema accepted. */
export function splitHostPort (value: string): { host: string, port: number } {
  const at = value.lastIndexOf(':')
  const host = value.slice(0, at)
  const port = Number(value.slice(at + 1))
  if (port > 65535) throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `${value}: port ${port} is above 65535`)
  return { host: host.startsWith('[') ? host.slice(1, -1) : host, port }
}
