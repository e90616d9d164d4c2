// StaticSource: a fixed list of instances, for local runs, tests and fleets without a registry.

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

/** Parses `http://10.0.0.1:8088,http://[::1]:8089` (the scheme is optional; the port is not). */
export function parseStaticInstances (list: string): Instance[] {
  const seen = new Set<string>()
  return list.split(',').map(s => s.trim()).filter(Boolean).map(entry => {
    let url: URL
    try {
      url = new URL(entry.includes('://') ? entry : `http://${entry}`)
    } catch (err) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `static instance ${JSON.stringify(entry)} is not a URL like http://host:port`, { cause: err })
    }
    if (url.protocol !== 'http:' || url.port === '' || (url.pathname !== '/' && url.pathname !== '')) {
      throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `static instance ${JSON.stringify(entry)} must be http://host:port`)
    }
    const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname
    const id = `${url.hostname}:${url.port}`
    if (seen.has(id)) throw new FleetgateError('FLEETGATE_ERR_CONFIG_INVALID', `static instance ${id} is listed twice`)
    seen.add(id)
    return Object.freeze({ id, host, port: Number(url.port), state: 'up' as const, weight: 1, labels: Object.freeze({}) })
  })
}
