// The one logger type and factory. JSON lines on stdout (pino), so any log shipper can read them.

import fs from 'node:fs'
import { destination as pinoDestination, pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino'

export type { Logger }

/** How long the last lines may wait at exit for a reader that takes nothing (a full pipe it does not read). */
const EXIT_FLUSH_MS = 2_000

export function createLogger (options: { level: string, name?: string }): Logger {
  return logTo({ level: options.level, base: options.name ? { name: options.name } : { pid: process.pid } })
}

/** A pino logger on stdout, written asynchronously and flushed at exit, a reader gone or not. */
export function logTo (options: LoggerOptions): Logger {
  return pino(options, stdout())
}

/**
 * stdout, as pino writes it by default (sonic-boom, asynchronous), and flushed synchronously at exit. That
 * flush (sonic-boom 4, which pino uses) retries a failed write for ever, a broken pipe's too: a process
 * whose log reader had gone (a shipper restarted, `| head`) hung at its exit, deaf to any signal but
 * SIGKILL. There, what cannot be written now is dropped: after a broken pipe at once, after a reader that
 * takes nothing (EAGAIN) within EXIT_FLUSH_MS.
 */
function stdout (): DestinationStream {
  const destination = pinoDestination({ dest: 1, sync: false })
  const flushSync = destination.flushSync
  destination.flushSync = function (this: typeof destination): void {
    const writeSync = fs.writeSync
    const deadline = performance.now() + EXIT_FLUSH_MS
    fs.writeSync = function (fd: number, buffer: string | NodeJS.ArrayBufferView, ...rest: unknown[]): number {
      try {
        return (writeSync as (...args: unknown[]) => number)(fd, buffer, ...rest)
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code
        if ((code === 'EAGAIN' || code === 'EBUSY') && performance.now() < deadline) throw err
        // Taken as written, so sonic-boom goes on to the end: nothing more can reach this reader.
        return typeof buffer === 'string' ? Buffer.byteLength(buffer) : buffer.byteLength
      }
    } as typeof fs.writeSync
    try {
      flushSync.call(this)
    } finally {
      fs.writeSync = writeSync
    }
  }
  return destination
}

/** For library use and tests that do not care about logs. */
export const silentLogger: Logger = pino({ level: 'silent' })
