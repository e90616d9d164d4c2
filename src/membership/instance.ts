// The Instance type and the codecs for the registration formats fleetgate reads: Curator x-discovery
// (what fleetgate's own agent writes), Finagle/Aurora ServerSet and Nerve.

import { isIP } from 'node:net'

export type InstanceState = 'up' | 'draining'

/** One registered server of a service, as discovery sees it. Immutable. */
export interface Instance {
  /** Stable within the service: the znode name, or the Consul service ID. */
  readonly id: string
  readonly host: string
  readonly port: number
  /** `draining` instances get no new requests; requests already running on them finish. */
  readonly state: InstanceState
  /** Relative share of new requests; always >= 1 (a registered weight of 0 reads as draining). */
  readonly weight: number
  readonly labels: Readonly<Record<string, string>>
}

export type RegistrationFormat = 'curator' | 'serverset' | 'nerve' | 'consul'

export const INVALID_REASONS = ['too_large', 'not_json', 'unknown_format', 'no_host', 'bad_port', 'unreadable'] as const
export type InvalidReason = typeof INVALID_REASONS[number]

export type DecodeResult =
  | { readonly ok: true, readonly instance: Instance, readonly format: RegistrationFormat }
  | { readonly ok: false, readonly reason: InvalidReason, readonly detail: string }

/** Registrations are a few hundred bytes; anything this large is garbage and is not parsed. */
export const MAX_REGISTRATION_BYTES = 64 * 1024

/** Decodes one registration. Unknown fields are ignored; a bad registration is a result, never a throw. */
export function decodeRegistration (id: string, data: Buffer | string | null | undefined): DecodeResult {
  const size = data == null ? 0 : Buffer.byteLength(data)
  if (size === 0) return invalid('not_json', 'empty data')
  if (size > MAX_REGISTRATION_BYTES) return invalid('too_large', `${size} bytes`)

  let doc: unknown
  try {
    doc = JSON.parse(data!.toString())
  } catch (err) {
    return invalid('not_json', (err as Error).message)
  }
  if (!isObject(doc)) return invalid('not_json', 'not a JSON object')

  if (isObject(doc.serviceEndpoint)) return decodeServerSet(id, doc)
  if ('address' in doc && ('registrationTimeUTC' in doc || 'serviceType' in doc || 'sslPort' in doc || 'payload' in doc)) {
    return decodeCurator(id, doc)
  }
  if ('host' in doc) return decodeNerve(id, doc)
  return invalid('unknown_format', 'neither Curator, ServerSet nor Nerve JSON')
}

function decodeCurator (id: string, doc: Record<string, unknown>): DecodeResult {
  const payload = isObject(doc.payload) ? doc.payload : {}
  const weight = numberOr(payload.weight, 1)
  const draining = doc.enabled === false || payload.state === 'draining' || weight === 0
  return build(id, 'curator', doc.address, doc.port, draining, weight, {
    ...stringRecord(payload.labels),
  })
}

function decodeServerSet (id: string, doc: Record<string, unknown>): DecodeResult {
  const endpoint = doc.serviceEndpoint as Record<string, unknown>
  const status = typeof doc.status === 'string' ? doc.status : 'ALIVE'
  const labels: Record<string, string> = { status }
  if (typeof doc.shard === 'number') labels.shard = String(doc.shard)
  return build(id, 'serverset', endpoint.host, endpoint.port, status !== 'ALIVE', 1, labels)
}

function decodeNerve (id: string, doc: Record<string, unknown>): DecodeResult {
  const weight = numberOr(doc.weight, 1)
  const labels = stringRecord(doc.labels)
  if (typeof doc.name === 'string') labels.name = doc.name
  return build(id, 'nerve', doc.host, doc.port, weight === 0, weight, labels)
}

function build (
  id: string, format: RegistrationFormat, host: unknown, port: unknown,
  draining: boolean, weight: number, labels: Record<string, string>,
): DecodeResult {
  if (!isUsableHost(host)) return invalid('no_host', `host ${shown(host)}`)
  const portNumber = typeof port === 'string' && /^\d+$/.test(port) ? Number(port) : port
  if (!isPort(portNumber)) return invalid('bad_port', `port ${shown(port)}`)
  return {
    ok: true,
    format,
    instance: Object.freeze({
      id,
      host: unbracket(host),
      port: portNumber,
      state: draining ? 'draining' : 'up',
      weight: Math.max(1, Math.round(weight)),
      labels: Object.freeze(labels),
    }),
  }
}

/**
 * Checks and freezes an instance read from a registry without a JSON codec (Consul's health entries), by
 * the same rules as the codecs: a usable host, a port from 1 to 65535, a weight of at least 1.
 */
export function validateInstance (
  id: string, format: RegistrationFormat, host: unknown, port: unknown,
  draining: boolean, weight: number, labels: Record<string, string>,
): DecodeResult {
  return build(id, format, host, port, draining, weight, labels)
}

/** Encodes an instance the way Curator's JsonInstanceSerializer does; fleetgate's own fields go in payload. */
export function encodeCurator (fields: {
  service: string
  id: string
  host: string
  port: number
  state: InstanceState
  weight: number
  labels: Readonly<Record<string, string>>
  registrationTimeUTC: number
}): Buffer {
  return Buffer.from(JSON.stringify({
    name: fields.service,
    id: fields.id,
    address: fields.host,
    port: fields.port,
    sslPort: null,
    payload: { state: fields.state, weight: fields.weight, labels: fields.labels },
    registrationTimeUTC: fields.registrationTimeUTC,
    serviceType: 'DYNAMIC',
    uriSpec: { parts: [{ value: 'scheme', variable: true }, { value: '://', variable: false }, { value: 'address', variable: true }, { value: ':', variable: false }, { value: 'port', variable: true }] },
    enabled: fields.state === 'up',
  }))
}

/** `host:port`, with IPv6 literals in brackets. */
export function instanceAddress (instance: Pick<Instance, 'host' | 'port'>): string {
  return isIP(instance.host) === 6 ? `[${instance.host}]:${instance.port}` : `${instance.host}:${instance.port}`
}

/** Whether two lists (in the same order) hold the same instances. Unchanged instances are usually the very same objects. */
export function sameInstances (a: readonly Instance[], b: readonly Instance[]): boolean {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i] && !sameInstance(a[i]!, b[i]!)) return false
  return true
}

export function sameInstance (a: Instance, b: Instance): boolean {
  if (a.id !== b.id || a.host !== b.host || a.port !== b.port || a.state !== b.state || a.weight !== b.weight) return false
  const keys = Object.keys(a.labels)
  if (keys.length !== Object.keys(b.labels).length) return false
  return keys.every(key => a.labels[key] === b.labels[key])
}

export function compareInstances (a: Instance, b: Instance): number {
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
}

/**
 * The instances sorted by id. `previous`, the last sorted set, saves the sort: the instances it shares
 * with this set (the very same objects) keep their order, and only the new ones are sorted and merged
 * in. A change to one instance of 10,000 then costs two identity passes, not a sort of 10,000.
 *
 * A new object equal to one of `previous` (the same id and fields, read again) is replaced by that one,
 * so an unchanged instance stays the same object however often its registry is read: the pool and the
 * proxy's workers rely on that to treat a change as a change of one instance.
 */
export function sortInstances (instances: Iterable<Instance>, previous: readonly Instance[] = []): Instance[] {
  const incoming = new Set(instances)
  const kept: Instance[] = []
  const gone: Instance[] = []
  for (const instance of previous) (incoming.delete(instance) ? kept : gone).push(instance)
  if (incoming.size === 0) return kept
  let added = [...incoming]
  if (gone.length > 0) {
    const goneById = new Map(gone.map(instance => [instance.id, instance]))
    added = added.map(instance => {
      const before = goneById.get(instance.id)
      return before !== undefined && sameInstance(before, instance) ? before : instance
    })
  }
  added.sort(compareInstances)
  if (kept.length === 0) return added
  // Each new instance finds its place by binary search: O(n + a log n) for `a` new ones, not n comparisons.
  const merged: Instance[] = []
  let from = 0
  for (const instance of added) {
    let lo = from
    let hi = kept.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (compareInstances(kept[mid]!, instance) <= 0) lo = mid + 1
      else hi = mid
    }
    for (let i = from; i < lo; i++) merged.push(kept[i]!)
    merged.push(instance)
    from = lo
  }
  for (let i = from; i < kept.length; i++) merged.push(kept[i]!)
  return merged
}

/** Where `item` (by identity) is in `sorted`, a list sorted by its instances' ids; -1 if it is not there. */
export function positionOf (sorted: readonly Instance[], item: Instance): number
export function positionOf<T> (sorted: readonly T[], item: T, instanceOf: (item: T) => Instance): number
export function positionOf<T> (sorted: readonly T[], item: T, instanceOf = itself as (item: T) => Instance): number {
  const instance = instanceOf(item)
  for (let i = lowerBound(sorted, instance, instanceOf); i < sorted.length && instanceOf(sorted[i]!).id === instance.id; i++) {
    if (sorted[i] === item) return i
  }
  return -1
}

/** Where an item for `instance` goes in `sorted` to keep it sorted by id: after those with the same id, as sortInstances merges. */
export function insertionPoint (sorted: readonly Instance[], instance: Instance): number
export function insertionPoint<T> (sorted: readonly T[], instance: Instance, instanceOf: (item: T) => Instance): number
export function insertionPoint<T> (sorted: readonly T[], instance: Instance, instanceOf = itself as (item: T) => Instance): number {
  let at = lowerBound(sorted, instance, instanceOf)
  while (at < sorted.length && instanceOf(sorted[at]!).id === instance.id) at++
  return at
}

function itself (instance: Instance): Instance {
  return instance
}

function lowerBound<T> (sorted: readonly T[], instance: Instance, instanceOf: (item: T) => Instance): number {
  let lo = 0
  let hi = sorted.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (compareInstances(instanceOf(sorted[mid]!), instance) < 0) lo = mid + 1
    else hi = mid
  }
  return lo
}

const HOSTNAME = /^[A-Za-z0-9]([A-Za-z0-9-]{0,62})?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62})?)*\.?$/

function isUsableHost (host: unknown): host is string {
  if (typeof host !== 'string' || host.length === 0 || host.length > 255) return false
  const bare = unbracket(host)
  if (isIP(bare) === 0 && !HOSTNAME.test(host)) return false
  // The instance's connection pool is made from an http:// URL: a host the URL parser refuses (an IPv6
  // zone, fe80::1%eth0; a name that ends in a number but is no IPv4 address, 10.0.0.256 or web.1) would
  // leave every request sent to the instance unanswered.
  const url = `http://${instanceAddress({ host: bare, port: 1 })}`
  if (!URL.canParse(url)) return false
  // The unspecified address, in any form the URL parser reads as it ("0", "0x0", "::ffff:0.0.0.0"): a
  // registrar that advertised its bind address. To a proxy it is no host; Linux connects it to the
  // proxy's own host, which would then get that instance's requests. Only a host of 0, x, f, "." and
  // ":" can be one; the others are spared a URL object (at 10,000 instances, 20 ms a full read).
  return !(/^[0xXfF.:]+$/.test(bare) && UNSPECIFIED_HOSTNAMES.has(new URL(url).hostname))
}

const UNSPECIFIED_HOSTNAMES: ReadonlySet<string> = new Set(['0.0.0.0', '[::]', '[::ffff:0:0]'])

function unbracket (host: string): string {
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
}

function isPort (port: unknown): port is number {
  return typeof port === 'number' && Number.isInteger(port) && port >= 1 && port <= 65535
}

function numberOr (value: unknown, fallback: number): number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0 ? value : fallback
}

function stringRecord (value: unknown): Record<string, string> {
  const out: Record<string, string> = {}
  if (!isObject(value)) return out
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') out[k] = String(v)
  }
  return out
}

function isObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

/** A field as the log shows it: whoever writes the registration chooses it, up to 64 KB of it. */
function shown (value: unknown): string {
  const json = JSON.stringify(value) ?? 'missing'
  return json.length > 100 ? `${json.slice(0, 100)}… (${json.length} characters)` : json
}

function invalid (reason: InvalidReason, detail: string): DecodeResult {
  return { ok: false, reason, detail }
}
