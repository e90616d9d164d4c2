// Runs wrk once and returns its summary as numbers (bench/wrk/report.lua prints them as JSON).

import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { track, wrapCommand } from './proc.mjs'

const SCRIPT = fileURLToPath(new URL('../wrk/report.lua', import.meta.url))

/**
 * `shape`: { method, bodyBytes, close }. wrk ends itself after `durationS`; a kill timer 20 s later
 * bounds a wrk that hangs. Only 127.0.0.1 URLs are accepted.
 */
export function runWrk ({ url, connections, durationS, threads = 1, cpus = '1', shape = {}, timeoutS = 2 }) {
  if (!url.startsWith('http://127.0.0.1:')) throw new Error(`refusing to load anything but 127.0.0.1: ${url}`)
  const [file, args] = wrapCommand('wrk', [`-t${threads}`, `-c${connections}`, `-d${durationS}s`,
    '--timeout', `${timeoutS}s`, '-s', SCRIPT, url], cpus)
  const env = {
    ...process.env,
    BENCH_METHOD: shape.method ?? 'GET',
    BENCH_BODY_BYTES: String(shape.bodyBytes ?? 0),
    BENCH_CLOSE: shape.close ? '1' : '0',
  }
  return new Promise((resolve, reject) => {
    // Tracked like every other process, so that an error or Ctrl-C in the harness ends it too.
    const child = execFile(file, args, { env, timeout: (durationS + 20) * 1000, killSignal: 'SIGKILL', maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const line = stdout.split('\n').find(l => l.startsWith('BENCH_JSON '))
      if (!line) return reject(new Error(`wrk gave no summary (${err?.message ?? 'no error'}): ${stderr.trim()} ${stdout.trim()}`))
      const r = JSON.parse(line.slice('BENCH_JSON '.length))
      const seconds = r.durationUs / 1e6
      resolve({
        requests: r.requests,
        seconds,
        rps: r.requests / seconds,
        p50Ms: r.latencyUs.p50 / 1000,
        p99Ms: r.latencyUs.p99 / 1000,
        p999Ms: r.latencyUs.p999 / 1000,
        maxMs: r.latencyUs.max / 1000,
        bytes: r.bytes,
        socketErrors: r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout,
        statusErrors: r.errors.status,
        errors: r.errors,
      })
    })
    track('wrk', child)
  })
}
