// Configuration: one schema per command validates flags, FLEETGATE_* environment variables and an
// optional JSON/YAML file alike. Defaults carry units in their names; the result is frozen.

import { readFileSync } from 'node:fs'
import { isIPv6 } from 'node:net'
import { availableParallelism } from 'node:os'
import { parseArgs } from 'node:util'
import { KindGuard, Type, type Static, type TObject, type TProperties } from '@sinclair/typebox'
import { Ajv, type ErrorObject } from 'ajv'
import { parseDocument, visit } from 'yaml'
import { FleetgateError } from './errors.ts'
import type { Logger } from './logger.ts'

// Patterns of the parts of addresses: a port from 0 (listen on any free port) or 1 to 65535, a host name
// or an IPv6 address in brackets, a ZooKeeper path (no empty, "." or ".." segment, no trailing "/").
const PORT = '(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})'
const PORT_1 = '(?!0+(?![0-9]))' + PORT
/** A host name, an IPv4 address or a bracketed IPv6 address, as one capturing group. */
export const HOST = '(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_.-]+)'
/** One instance of a --static list. */
const STATIC_ENTRY = `(http://)?${HOST}:${PORT_1}/?`
const ZNODE_PATH = '(/(?!\\.\\.?(/|$))[^/\\s]+)+'
/**
 * A connect string's chroot: a ZooKeeper path without ",". The client takes everything after the first "/"
 * as the chroot, so `zk1:2181/prod,zk2:2181/prod` would be zk1 alone under the chroot "/prod,zk2:2181/prod".
 */
const CHROOT = '(/(?!\\.\\.?(/|$))[^/\\s,]+)+'

/**
 * The unspecified address, as a host followed by ":": 0.0.0.0 in any form the resolver reads as it ("0",
 * "0.0", "0x0"), and [::] in any form ("[0:0:0:0:0:0:0:0]", "[::0.0.0.0]", "[::ffff:0.0.0.0]").
 */
const ZERO = '(0+|0[xX]0*)'
const UNSPECIFIED = `(${ZERO}(\\.${ZERO}){0,3}|\\[[0:]*([Ff]{4}:)?(0+(\\.0+){3})?\\]):`

/**
 * A listener's address (any port, 0 for any free one, and any host, 0.0.0.0 and [::] included), or with
 * `reach`, an address others connect to: a port from 1, and not the unspecified address, which means
 * "every address of this host" to a listener and no host at all to anyone connecting.
 */
const HostPort = (description: string, defaultValue?: string, { reach = false } = {}) => Type.String({
  pattern: reach ? `^(?!${UNSPECIFIED})${HOST}:${PORT_1}$` : `^${HOST}:${PORT}$`,
  description,
  expected: reach
    ? 'HOST:PORT with a port from 1 to 65535 and a host others can reach, e.g. 10.0.0.7:8088 or [2001:db8::7]:8088 (or 2001:db8::7:8088); not 0.0.0.0 or [::], which stand for every address of this host'
    : 'HOST:PORT with a port from 0 to 65535, e.g. 0.0.0.0:8080 or [::1]:8080',
  ...(defaultValue === undefined ? {} : { default: defaultValue }),
})

/**
 * A listener host no socket takes (the kernel answers EINVAL): an IPv6 multicast address (ff00::/8), and a
 * link-local one (fe80::/10) without the zone (%eth0) a listener address has no room for.
 */
const UNLISTENABLE = /^\[(fe[89ab][0-9a-f]|ff[0-9a-f]{2}):/i

/** The shortest time a worker may go without answering its primary before it is replaced. */
const MIN_STALL_TIMEOUT_MS = 1_000

const Milliseconds = (description: string, defaultValue: number, minimum = 1) => Type.Integer({
  minimum, maximum: 86_400_000, default: defaultValue, description, expected: `milliseconds, an integer from ${minimum} to 86400000 (a day)`,
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
    pattern: `^[A-Za-z0-9_.-]+(:${PORT_1})?(,[A-Za-z0-9_.-]+(:${PORT_1})?)*(${CHROOT}|/)?$`, description: 'ZooKeeper connect string, with an optional chroot',
    expected: 'HOST:PORT[,HOST:PORT...][/chroot], hosts by name or IPv4 address (the ZooKeeper client reads no IPv6 address), ports from 1 to 65535, the chroot once, after the last host (zk1:2181,zk2:2181/prod), without ",", empty, "." or ".." parts or a trailing "/" (a lone "/" is none)',
  })),
  basePath: Type.String({ pattern: `^(/|${ZNODE_PATH})$`, default: '/services', description: 'ZooKeeper base path', expected: 'an absolute path like /services, without empty, "." or ".." parts' }),
  sessionTimeoutMs: Milliseconds('ZooKeeper session timeout; the agent\'s Consul TTL check', 10_000, 1000),
  consul: Type.String({
    pattern: '^([A-Za-z]+://)?[^\\s/]+/?$', default: 'http://127.0.0.1:8500', description: 'Consul HTTP address (with --discovery consul)',
    expected: 'http(s)://HOST:PORT or HOST:PORT',
  }),
  // Sent as a header: a line break (a token read from a file with its newline) would fail every request.
  consulToken: Type.Optional(Type.String({ pattern: '^[!-~]*$', description: 'Consul ACL token, sent as X-Consul-Token', expected: 'a token of visible ASCII characters, without spaces or line breaks' })),
  consulCaFile: Type.Optional(Type.String({ minLength: 1, description: 'PEM CA file for an https:// Consul address', expected: 'a file path' })),
  consulTag: Type.Optional(Type.String({ pattern: '^[^\\s,]{1,255}$', description: 'Proxy: follow only instances with this tag; agent: register with it', expected: 'a tag without spaces or commas' })),
  logLevel: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map(l => Type.Literal(l)), {
    default: 'info', description: 'Log level', expected: 'fatal, error, warn, info, debug, trace or silent',
  }),
} satisfies TProperties

export const ProxyConfigSchema = Type.Object({
  ...Common,
  // The syntax parseStaticInstances() reads, checked here so that an error names the variable or file key
  // the list came from: entries of http://HOST:PORT (the scheme optional, a trailing "/" allowed) between
  // commas, with spaces around them, and at least one.
  static: Type.Optional(Type.String({
    pattern: `^[\\s,]*${STATIC_ENTRY}(\\s*,[\\s,]*${STATIC_ENTRY})*[\\s,]*$`,
    description: 'Fixed instances: http://host:port,...',
    expected: 'http://HOST:PORT[,http://HOST:PORT...], ports from 1 to 65535, without a path',
  })),
  listen: HostPort('Proxy listener', '0.0.0.0:8080'),
  adminListen: HostPort('Admin listener (/healthz, /readyz, /status, /metrics)', '127.0.0.1:9901'),
  resyncIntervalMs: Milliseconds('Full ZooKeeper resync period', 30_000, 100),
  connectTimeoutMs: Milliseconds('Upstream connect timeout', 5_000),
  headersTimeoutMs: Milliseconds('Upstream response headers timeout (above Superset\'s 60 s)', 120_000),
  idleTimeoutMs: Milliseconds('Idle timeout while a body streams, either way', 300_000),
  clientKeepAliveTimeoutMs: Milliseconds('How long an idle client connection waits for its next request (HAProxy\'s timeout http-keep-alive); above the idle timeout of a load balancer in front', 75_000, 100),
  maxConnectionsPerInstance: Type.Integer({
    minimum: 0, maximum: 100_000, default: 128,
    description: 'Requests (connections) an instance carries at once, per proxy process (HAProxy\'s maxconn); more wait in a queue. 0: no limit',
    expected: 'an integer from 0 to 100000',
  }),
  queueTimeoutMs: Milliseconds('How long a request may wait for an instance under its connection limit; then 503', 5_000),
  tries: Type.Integer({ minimum: 1, maximum: 10, default: 3, description: 'Tries per request, each on a different instance', expected: 'an integer from 1 to 10' }),
  ejectBaseMs: Milliseconds('First ejection of an instance that refused a connection; doubles in a row', 1_000),
  ejectMaxMs: Milliseconds('Longest ejection', 30_000),
  ejectAfterErrors: Type.Integer({
    minimum: 0, maximum: 10_000, default: 0,
    description: 'Eject an instance after this many failures in a row, as after a refused connect: 5xx answers (501 and 505 aside), resets and timeouts. 0: never',
    expected: 'an integer from 0 to 10000',
  }),
  panicThresholdPercent: Type.Integer({ minimum: 0, maximum: 100, default: 50, description: 'Below this share of healthy instances, ejected ones take requests no healthy one can', expected: 'a percentage from 0 to 100' }),
  slowStartMs: Milliseconds('An instance that joins takes a share of requests growing from 10 % to its full share over this time (HAProxy\'s slowstart). 0: none', 0, 0),
  shutdownTimeoutMs: Milliseconds('On SIGTERM, how long in-flight requests may finish', 30_000, 0),
  accessLog: Type.Union([Type.Literal('off'), Type.Literal('json')], {
    default: 'off', description: 'json: a JSON line per request on stdout, beside the logs (client, method, host, url, status, instance, tries, ms, bytes)', expected: '"off" or "json"',
  }),
  maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1_048_576, default: 65_536, description: 'Largest request head accepted (Superset URLs can be long)', expected: 'bytes, from 1024 to 1048576' }),
  consulDatacenter: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'Consul datacenter to follow (default: the agent\'s own)', expected: 'a datacenter name' })),
  // Consul holds a query 10 min at most: a longer wait would only stretch the time to notice a dead connection.
  consulWaitMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 240_000, description: 'Longest hold of a Consul blocking query (Consul caps it at 10 min)', expected: 'milliseconds, from 100 to 600000' }),
  workers: Type.Integer({ minimum: 1, maximum: 256, default: availableParallelism(), description: 'Proxy processes serving the port; one discovery session for all. The default is one per core', expected: 'an integer from 1 to 256' }),
  workerStallTimeoutMs: Type.Integer({
    minimum: 0, maximum: 86_400_000, default: 10_000,
    description: 'With --workers above 1: a worker that has not answered the primary for this long (stuck in a loop, stopped) is killed and replaced, as HAProxy\'s and Envoy\'s watchdogs do. 0: never',
    expected: `0 (never), or milliseconds from ${MIN_STALL_TIMEOUT_MS} to 86400000 (a day)`,
  }),
}, { additionalProperties: false })

export type ProxyConfig = Readonly<Static<typeof ProxyConfigSchema>>

export const AgentConfigSchema = Type.Object({
  ...Common,
  discovery: Type.Optional(Type.Union([Type.Literal('zookeeper'), Type.Literal('consul')], {
    description: 'Registry to register in; defaults to zookeeper', expected: '"zookeeper" or "consul" (the agent registers; static is the proxy\'s)',
  })),
  target: Type.String({ pattern: `^https?://${HOST}(:${PORT_1})?$`, default: 'http://127.0.0.1:8088', description: 'The local instance to health-check', expected: 'http://HOST[:PORT] or https://HOST[:PORT], a port from 1 to 65535, without a path' }),
  advertise: HostPort('Address the proxy should use for this instance', undefined, { reach: true }),
  // "." and ".." are not znode names: joined to the service path they would name the service node or its parent.
  id: Type.Optional(Type.String({ pattern: '^(?!\\.\\.?$)[A-Za-z0-9_.:-]{1,128}$', description: 'Instance id (znode name); defaults to one derived from --advertise', expected: '1 to 128 letters, digits, "_", ".", ":" and "-", other than "." and ".."' })),
  healthCheck: Type.Union([Type.Literal('http'), Type.Literal('tcp')], { default: 'http', description: 'http: GET the health path; tcp: connect only', expected: '"http" or "tcp"' }),
  // Not "//x": resolved against --target, that would name another host.
  healthPath: Type.String({ pattern: '^/(?!/)\\S*$', default: '/health', description: 'Health check path', expected: 'a path starting with a single / and without spaces' }),
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
  /** Whether a command may follow `--` (the agent's wrapper mode); elsewhere `--` is an error. */
  readonly takesCommand?: boolean
}

export interface Loaded<C> {
  readonly config: C
  /** Arguments after `--` (the agent's wrapped command). */
  readonly command: readonly string[]
  /**
   * Variables and file keys of another discovery backend than the one in use, which are ignored (one
   * environment may serve either backend); the same given as flags is an error.
   */
  readonly ignored: readonly string[]
  /**
   * FLEETGATE_* variables that are no setting of either command, each with the setting it is likely a
   * misspelling of: the command runs without them, and says so.
   */
  readonly unknownVariables: ReadonlyArray<{ readonly name: string, readonly suggestion: string | undefined }>
}

/** The environment variable that hands each worker of a multi-process proxy the configuration its primary started with. */
export const WORKER_CONFIG_ENV = 'FLEETGATE_WORKER_CONFIG'

type Origin = { kind: 'flag' | 'env' | 'file', name: string }

const ajv = new Ajv({ allErrors: true, useDefaults: true, coerceTypes: true, strict: false })

/**
 * Merges defaults < file (--config) < environment < flags, validates once and freezes. Any problem is a
 * FleetgateError naming the key, where it came from, the value and what was expected.
 */
export function loadConfig<S extends TObject> (schema: S, input: LoadInput): Loaded<Readonly<Static<S>>> {
  const keys = Object.keys(schema.properties)
  const isProxy = (schema as TObject) === ProxyConfigSchema
  const raw: Record<string, unknown> = {}
  const origins = new Map<string, Origin>()

  const options: Record<string, { type: 'string' }> = { config: { type: 'string' } }
  for (const key of keys) options[kebab(key)] = { type: 'string' }
  const dashDash = input.argv.indexOf('--')
  const args = dashDash === -1 ? [...input.argv] : input.argv.slice(0, dashDash)
  const command = dashDash === -1 ? [] : input.argv.slice(dashDash + 1)
  if (dashDash !== -1 && !input.takesCommand) {
    throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', `unexpected ${JSON.stringify(['--', ...command].join(' '))}: only the agent runs a command`)
  }
  if (dashDash !== -1 && command.length === 0) {
    throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', 'nothing after "--": give the command to run, or leave "--" out to run beside the instance')
  }
  let parsed: ReturnType<typeof parseArgs>
  try {
    parsed = parseArgs({ args, options, strict: true, allowPositionals: true, tokens: true })
  } catch (err) {
    // Node's own hint for an unknown option (put it after `--` as a positional) is wrong for fleetgate.
    const unknown = /^Unknown option '(--)?([^']*)'/.exec((err as Error).message)
    const near = unknown?.[1] === undefined ? undefined : closest(unknown[2]!, Object.keys(options))
    const message = unknown === null
      ? (err as Error).message
      : `${unknown[0]}${near === undefined ? '' : ` (did you mean --${near}?)`}: see fleetgate help ${isProxy ? 'proxy' : 'agent'}`
    throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', message, { cause: err })
  }
  if (parsed.positionals.length > 0) {
    throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', `unexpected argument ${JSON.stringify(parsed.positionals[0])}`)
  }
  // Each setting is one value: a flag given twice (`--listen :8080 --listen :9090`, which asks for two
  // listeners the proxy does not have) is refused, rather than the last one quietly taken.
  const given = new Map<string, string | undefined>()
  for (const token of parsed.tokens ?? []) {
    if (token.kind !== 'option') continue
    if (given.has(token.name)) {
      const key = token.name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())
      const values = SECRET_KEYS.has(key) ? 'values not shown' : `${JSON.stringify(given.get(token.name))}, then ${JSON.stringify(token.value)}`
      throw new FleetgateError('FLEETGATE_ERR_CLI_USAGE', `--${token.name} is given twice (${values}): give it once`)
    }
    given.set(token.name, token.value)
  }

  // An empty variable is unset, as every FLEETGATE_* one; an empty flag names no file, and is an error
  // rather than a run on the defaults (or on FLEETGATE_CONFIG's file, which the flag would have replaced).
  const flagFile = parsed.values.config as string | undefined
  if (flagFile === '') throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', '--config = "": expected the path of a JSON or YAML file')
  const file = flagFile ?? (input.env.FLEETGATE_CONFIG || undefined)
  if (file !== undefined) {
    for (const [key, value] of Object.entries(readConfigFile(file, flagFile !== undefined ? '--config' : 'FLEETGATE_CONFIG'))) {
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

  // An IPv6 address without brackets, as Kubernetes' status.podIP and `hostname -i` give it in an IPv6
  // cluster: the port is what follows the last colon, as HAProxy reads such an address, and the address
  // is in brackets from here on.
  if (typeof raw.advertise === 'string') raw.advertise = bracketIPv6(raw.advertise)

  // Variables and file keys of another discovery backend are ignored unchecked: an environment set up for
  // either backend (docker-compose.yml switches with FLEETGATE_DISCOVERY alone) must not stop the other on
  // a value it never reads. A discovery value that is no backend is left for the schema to refuse.
  const discoverySchema = schema.properties.discovery
  const knownDiscovery = raw.discovery === undefined || (discoverySchema !== undefined && ajv.validate(discoverySchema, raw.discovery))
  const ignored = knownDiscovery ? checkDiscovery(raw, origins, isProxy ? PROXY_DISCOVERY_KEYS : DISCOVERY_KEYS) : []
  for (const { key } of ignored) delete raw[key]
  // The schema turns text into numbers, for flags and variables; in a file it would also take an empty
  // value (null) for 0 and true for 1. It reads text as JavaScript does, which takes "0x10", "1e3",
  // "+3", "3.0" and " 3" for numbers: every number here is a whole one, written in decimal digits.
  const untyped = Object.entries(raw).filter(([key, value]) => key in schema.properties && value !== undefined &&
    (typeof value === 'string' ? KindGuard.IsInteger(schema.properties[key]) && !/^[0-9]+$/.test(value) : typeof value !== 'number'))
  if (untyped.length > 0) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', untyped.map(([key, value]) =>
      `${where(key, origins)}${shown(key, value)}: expected ${(schema.properties[key] as { expected?: string }).expected ?? 'a value'}`).join('; '))
  }
  const validate = ajv.compile(schema)
  if (!validate(raw)) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', describe(validate.errors ?? [], schema, raw, origins))
  }
  if (typeof raw.ejectBaseMs === 'number' && typeof raw.ejectMaxMs === 'number' && raw.ejectBaseMs > raw.ejectMaxMs) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `${where('ejectBaseMs', origins)} = ${raw.ejectBaseMs} is above ${where('ejectMaxMs', origins)} = ${raw.ejectMaxMs}: the first ejection cannot be longer than the longest`)
  }
  // The same rule as for another backend's flags: a flag that would be ignored is a mistake.
  if (raw.healthCheck === 'tcp' && origins.get('healthPath')?.kind === 'flag') {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `${where('healthCheck', origins)} = "tcp" only connects, so --health-path would be ignored: leave it out, or check with --health-check http`)
  }
  for (const key of ['listen', 'adminListen']) {
    const value = raw[key]
    if (key in schema.properties && typeof value === 'string' && UNLISTENABLE.test(value)) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `${where(key, origins)}${shown(key, value)}: expected an address of this host to listen on; an IPv6 multicast address (ff00::/8) takes no listener, nor does a link-local one (fe80::/10) without its zone, which cannot be given: [::] listens on every address`)
    }
  }
  // A worker's event loop may be held for a moment (a collection, a scrape at 10,000 instances): a watchdog
  // quicker than a second would kill healthy workers.
  if (typeof raw.workerStallTimeoutMs === 'number' && raw.workerStallTimeoutMs > 0 && raw.workerStallTimeoutMs < MIN_STALL_TIMEOUT_MS) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `${where('workerStallTimeoutMs', origins)}${shown('workerStallTimeoutMs', raw.workerStallTimeoutMs)}: expected ${ProxyConfigSchema.properties.workerStallTimeoutMs.expected}`)
  }
  const unknownVariables = Object.keys(input.env).filter(name => name.startsWith('FLEETGATE_') && !VARIABLES.has(name)).sort()
    .map(name => ({ name, suggestion: closest(name, [...VARIABLES]) }))
  return { config: Object.freeze(raw) as Readonly<Static<S>>, command, ignored: ignored.map(({ where }) => where), unknownVariables }
}

/** Says, once at start, which FLEETGATE_* variables are ignored as no setting, and what each may have meant. */
export function warnUnknownVariables (logger: Pick<Logger, 'warn'>, variables: Loaded<unknown>['unknownVariables']): void {
  for (const { name, suggestion } of variables) {
    logger.warn({ variable: name, suggestion }, `${name} is no fleetgate setting, and is ignored${suggestion === undefined ? '' : `: did you mean ${suggestion}?`}`)
  }
}

/** Every FLEETGATE_* variable either command reads. */
const VARIABLES: ReadonlySet<string> = new Set([
  'FLEETGATE_CONFIG', WORKER_CONFIG_ENV,
  ...[ProxyConfigSchema, AgentConfigSchema].flatMap(schema => Object.keys(schema.properties)).map(key => `FLEETGATE_${snake(key)}`),
])

/**
 * The one of `names` that `name` is most likely a misspelling of: the same but for `-` or `_` (SLOWSTART
 * for SLOW_START), or at most two letters added, left out or changed; undefined when none is that near.
 */
export function closest (name: string, names: readonly string[]): string | undefined {
  const bare = (s: string): string => s.replace(/[-_]/g, '').toLowerCase()
  const same = names.find(candidate => bare(candidate) === bare(name))
  if (same !== undefined) return same
  let best: string | undefined
  let bestDistance = 3
  for (const candidate of names) {
    const distance = editDistance(name.toLowerCase(), candidate.toLowerCase())
    if (distance < bestDistance) [best, bestDistance] = [candidate, distance]
  }
  return best
}

/** Levenshtein distance: letters added, left out or changed to turn `a` into `b`. */
function editDistance (a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j]! + 1, row[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = row
  }
  return previous[b.length]!
}

/** The discovery backend a configuration uses: the one named, else static with --static, else ZooKeeper. */
export function discoveryOf<D extends string> (config: { readonly discovery?: D, readonly static?: string }): D | 'static' | 'zookeeper' {
  return config.discovery ?? (config.static !== undefined ? 'static' : 'zookeeper')
}

/** The keys that belong to one discovery backend: given for another, they would be ignored. */
const DISCOVERY_KEYS: Readonly<Record<string, readonly string[]>> = {
  zookeeper: ['zookeeper', 'basePath', 'resyncIntervalMs'],
  static: ['static'],
  consul: ['consul', 'consulToken', 'consulDatacenter', 'consulTag', 'consulCaFile', 'consulWaitMs'],
}
/** The proxy's: its session timeout is ZooKeeper's alone (the agent's is its Consul TTL too). */
const PROXY_DISCOVERY_KEYS = { ...DISCOVERY_KEYS, zookeeper: [...DISCOVERY_KEYS.zookeeper!, 'sessionTimeoutMs'] }

/**
 * Flags for a backend other than the one in use are a mistake, and an error. Variables and file keys for
 * one are left to the caller to log as ignored: an environment may be set up for either backend.
 */
function checkDiscovery (raw: Record<string, unknown>, origins: Map<string, Origin>, backendKeys: Readonly<Record<string, readonly string[]>>): Array<{ key: string, where: string }> {
  const discovery = discoveryOf(raw as { discovery?: string, static?: string })
  const stray = Object.entries(backendKeys)
    .filter(([backend]) => backend !== discovery)
    .flatMap(([backend, keys]) => keys.filter(key => origins.has(key)).map(key => ({ key, backend })))
  const flags = stray.filter(({ key }) => origins.get(key)?.kind === 'flag')
  if (flags.length > 0) {
    const chosen = raw.discovery === undefined
      ? `discovery is ${discovery}${discovery === 'static' ? ` (${where('static', origins)} is given)` : ' (the default)'}`
      : `${where('discovery', origins)} = ${JSON.stringify(raw.discovery)}`
    const named = flags.map(({ key, backend }) => `${where(key, origins)} (for ${backend})`)
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `${chosen}, so ${named.join(', ')} would be ignored: leave ${named.length === 1 ? 'it' : 'them'} out, or choose that backend with --discovery`)
  }
  return stray.map(({ key }) => ({ key, where: where(key, origins) }))
}

/** `fd00::7:8088` as `[fd00::7]:8088`; anything else as it is. */
function bracketIPv6 (hostPort: string): string {
  const at = hostPort.lastIndexOf(':')
  const host = hostPort.slice(0, at)
  return at > 0 && isIPv6(host) ? `[${host}]${hostPort.slice(at)}` : hostPort
}

/** How a key was given, for an error: its flag, its variable, or its key in the file. */
function where (key: string, origins: Map<string, Origin>): string {
  const origin = origins.get(key)
  if (!origin) return `--${kebab(key)}`
  return origin.kind === 'file' ? `${key} in config file ${origin.name}` : origin.name
}

/** Reads the file `setting` (--config or FLEETGATE_CONFIG) names; an error names both. */
function readConfigFile (file: string, setting: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `${setting} ${file}: ${(err as Error).message}`, { cause: err })
  }
  const document = parseDocument(text) // YAML is a superset of JSON
  const [error] = document.errors
  if (error !== undefined) throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `${setting} ${file}: ${error.message}`, { cause: error })
  // A number not written in decimal digits stays the text it was: YAML and JSON read `0x10`, `1e3`, `+3`
  // and `3.0` as numbers, which loadConfig() then could not tell from 16, 1000, 3 and 3. So does one the
  // number would not write back as it was: `id: 007` or `consulTag: 0123` would otherwise become "7" and
  // "123", and a long run of digits would lose its last ones (numbers are still read from such text).
  visit(document, {
    Scalar (_key, node) {
      if (typeof node.value === 'number' && node.source !== undefined && (!/^[0-9]+$/.test(node.source) || String(node.value) !== node.source)) node.value = node.source
    },
  })
  const doc: unknown = document.toJS()
  if (doc === null || doc === undefined) return {}
  if (typeof doc !== 'object' || Array.isArray(doc)) {
    throw new FleetgateError('FLEETGATE_ERR_CONFIG_FILE', `${setting} ${file}: expected a mapping of keys to values`)
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
    const given = where(key, origins)
    if (error.keyword === 'required') {
      lines.add(`${given} is required: expected ${property?.expected ?? 'a value'}`)
    } else if (error.keyword !== 'anyOf') {
      lines.add(`${given}${shown(key, raw[key])}: expected ${property?.expected ?? error.message}`)
    } else if (!errors.some(e => e !== error && e.instancePath === error.instancePath && e.keyword !== 'const')) {
      lines.add(`${given}${shown(key, raw[key])}: expected ${property?.expected ?? error.message}`)
    }
  }
  return [...lines].join('; ')
}

/** Settings whose value an error must not repeat: it goes to the logs. */
const SECRET_KEYS = new Set(['consulToken'])

/** ` = "value"` for an error message; for a secret, only its length; for an address, not its credentials. */
function shown (key: string, value: unknown): string {
  if (key === 'consul' && typeof value === 'string') return ` = ${JSON.stringify(withoutCredentials(value))}`
  if (!SECRET_KEYS.has(key)) return ` = ${JSON.stringify(value)}`
  return typeof value === 'string' ? ` (not shown, ${value.length} characters)` : ' (not shown)'
}

/** An address for an error message, with the credentials of a `user:password@` in it left out. */
export function withoutCredentials (address: string): string {
  return address.replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)?[^/@]*@/, '$1***@')
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
