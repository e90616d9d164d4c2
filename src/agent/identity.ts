// What an instance says about itself in its registration: its id (stable across restarts by default)
// and its labels.

import { FleetgateError } from '../errors.ts'

/**
 * The id an instance gets without --id: its advertised address as `host-port`, any character a znode
 * name or a metric label would not like turned into `_`. The same address always gives the same id, so
 * a restarted instance takes its old place (and replaces its predecessor's znode) instead of adding one.
 */
export function defaultInstanceId (advertise: string): string {
  const at = advertise.lastIndexOf(':')
  const rawHost = at === -1 ? advertise : advertise.slice(0, at)
  const port = at === -1 ? '' : advertise.slice(at + 1)
  const host = rawHost.startsWith('[') && rawHost.endsWith(']') ? rawHost.slice(1, -1) : rawHost
  const id = `${host.toLowerCase()}${port ? `-${port}` : ''}`.replace(/[^A-Za-z0-9_.-]/g, '_')
  // `.` and `..` are not valid znode names; nothing the schema accepts makes them, but be safe.
  return /^\.+$/.test(id) ? `_${id}` : id
}

/** `zone=a,tier=web` to `{ zone: 'a', tier: 'web' }`. A value may hold `=`; a key listed twice is an error. */
export function parseLabels (text: string | undefined): Readonly<Record<string, string>> {
  // A Map, then fromEntries: a key like `__proto__` stays a plain label.
  const labels = new Map<string, string>()
  if (text === undefined || text === '') return Object.freeze({})
  for (const pair of text.split(',')) {
    const eq = pair.indexOf('=')
    const key = pair.slice(0, eq)
    const value = pair.slice(eq + 1)
    if (eq === -1 || !/^[A-Za-z0-9_.-]+$/.test(key)) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--labels = ${JSON.stringify(text)}: bad pair ${JSON.stringify(pair)}; expected KEY=VALUE[,KEY=VALUE...]`)
    }
    if (labels.has(key)) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--labels = ${JSON.stringify(text)}: key ${JSON.stringify(key)} is given twice`)
    }
    labels.set(key, value)
  }
  return Object.freeze(Object.fromEntries(labels))
}
