// The one logger type and factory. JSON lines on stdout (pino), so any log shipper can read them.

import { pino, type Logger } from 'pino'

export type { Logger }

export function createLogger (options: { level: string, name?: string }): Logger {
  return pino({ level: options.level, base: options.name ? { name: options.name } : { pid: process.pid } })
}

/** For library use and tests that do not care about logs. */
export const silentLogger: Logger = pino({ level: 'silent' })
