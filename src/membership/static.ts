// StaticSource: a fixed list of instances, for local runs, tests and fleets without a registry.

import { HOST } from '../config.ts'
import { FleetgateError } from '../errors.ts'
import type { Instance } from './instance.ts'
import { BaseSource } from './source.ts'

export class StaticSource extends BaseSource {
  readonly kind = 'static'
  readonly #instances: readonly Instance[]

  constructor (service: string, instances: readonly Instance[]) {
    super(service)
    this.#instances = instances
  }

  async start (): Promise<void> {
    this.setStatus('connected', false)
    this.publish(this.#instances)
  }

  async close (): Promise<void> {
    this.releaseStart()
  }
}

/** `http://HOST:PORT`, the scheme optional, a trailing slash allowed; the port must be written out. */
const STATIC_ENTRY = new RegExp(`^(?:http://)?${HOST}:([0-9]{1,5})/?$`)

/** Parses `http://10.0.0.1:8088,http://[::1]:8089` (the scheme is optional; the port is not). */
export function parseStaticInstances (list: string): Instance[] {
  const seen = new Set<string>()
  const instances = list.split(',').map(s => s.trim()).filter(Boolean).map(entry => {
    const match = STATIC_ENTRY.exec(entry)
    const port = Number(match?.[2])
    if (!match || port < 1 || port > 65535) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--static instance ${JSON.stringify(entry)}: expected http://HOST:PORT with a port from 1 to 65535`)
    }
    const hostname = match[1]!.toLowerCase()
    const host = hostname.startsWith('[') ? hostname.slice(1, -1) : hostname
    const id = `${hostname}:${port}`
    if (seen.has(id)) throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--static instance ${id} is listed twice`)
    seen.add(id)
    return Object.freeze({ id, host, port, state: 'up' as const, weight: 1, labels: Object.freeze({}) })
  })
  if (instances.length === 0) throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `--static = ${JSON.stringify(list)}: expected at least one http://HOST:PORT`)
  return instances
}
