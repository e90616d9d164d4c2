// The things under test and their backends: config files, start commands and readiness checks.
// Every listener is on 127.0.0.1; every process goes through proc.mjs so it is ended by PID.

import { createServer } from 'node:net'
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { request } from 'undici'
import { PROXY_NODE_FLAGS } from '../../dist/proxy/node-flags.js'
import { eventually, startProcess } from './proc.mjs'

export { PROXY_NODE_FLAGS }
export const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const BENCH = join(ROOT, 'bench')

/**
 * Flag and value pairs with each flag's last value only, in the order the flags came: fleetgate refuses a
 * flag given twice, and the bench's defaults, a section's own flags and --fleetgate-args come in that order.
 */
export function lastOfEach (args) {
  const values = new Map()
  for (let i = 0; i < args.length; i += 2) values.set(args[i], args[i + 1])
  return [...values].flat()
}

/** Cores: the proxy under test gets PROXY_CPU alone; wrk and the backends share LOAD_CPU. */
export const PROXY_CPU = '0'
export const LOAD_CPU = '1'

export function freePort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** GET `url` until it answers 200, at most `timeoutMs`. */
export async function waitHttp (url, timeoutMs = 15_000, entry) {
  await eventually(async () => {
    if (entry?.exited) throw new Error(`exited with ${entry.exitCode}`)
    const res = await request(url, { headersTimeout: 1000, bodyTimeout: 1000 })
    await res.body.dump()
    return res.statusCode === 200
  }, { timeoutMs, intervalMs: 50, what: `${url} to answer 200` })
}

const ONE_KB = 'a'.repeat(1024)

/** NGINX as a backend: one process, `return 200` for 1 KB (any method) and a static file for 256 KB. */
function nginxBackendConf (dir, name, port) {
  return `worker_processes 1;
master_process off;
daemon off;
pid ${dir}/backend-${name}.pid;
error_log ${dir}/backend-${name}.error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body-${name};
  proxy_temp_path ${dir}/tmp/proxy-${name};
  fastcgi_temp_path ${dir}/tmp/fastcgi-${name};
  uwsgi_temp_path ${dir}/tmp/uwsgi-${name};
  scgi_temp_path ${dir}/tmp/scgi-${name};
  default_type application/octet-stream;
  sendfile on;
  keepalive_requests 100000000;
  keepalive_timeout 65s;
  client_max_body_size 0;
  client_body_buffer_size 128k;
  server {
    listen 127.0.0.1:${port} backlog=4096;
    add_header X-Backend ${name} always;
    location = /256k { root ${dir}/www; }
    location / { return 200 "${ONE_KB}"; }
  }
}
`
}

/** Starts one backend of `kind` ('nginx' or 'node') on LOAD_CPU; resolves once it answers. */
export async function startBackend ({ kind, dir, name }) {
  const port = await freePort()
  let entry
  if (kind === 'nginx') {
    mkdirSync(join(dir, 'tmp'), { recursive: true })
    mkdirSync(join(dir, 'www'), { recursive: true })
    writeFileSync(join(dir, 'www', '256k'), Buffer.alloc(256 * 1024, 'b'))
    const conf = join(dir, `backend-${name}.conf`)
    writeFileSync(conf, nginxBackendConf(dir, name, port))
    entry = startProcess(`backend ${name}`, 'nginx', ['-p', dir, '-c', conf, '-e', join(dir, `backend-${name}.error.log`)], { cpus: LOAD_CPU, logFile: join(dir, `backend-${name}.log`) })
  } else {
    entry = startProcess(`backend ${name}`, process.execPath, [join(BENCH, 'backend.mjs'), String(port), name], { cpus: LOAD_CPU, logFile: join(dir, `backend-${name}.log`) })
  }
  const url = `http://127.0.0.1:${port}`
  try {
    await waitHttp(`${url}/1k`, 15_000, entry)
  } catch (err) {
    throw new Error(`backend ${name} did not come up: ${err.message}\n${tail(entry.logFile)}`)
  }
  return { name, port, url, entry, kind }
}

function haproxyConf (port, backends) {
  return `global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 65s
    option http-keep-alive
    option forwardfor
    http-reuse always
    maxconn 9000
frontend fe
    bind 127.0.0.1:${port}
    default_backend be
backend be
    balance roundrobin
${backends.map(b => `    server ${b.name} 127.0.0.1:${b.port}`).join('\n')}
`
}

function nginxProxyConf (dir, port, backends) {
  return `worker_processes 1;
master_process off;
daemon off;
pid ${dir}/nginx-proxy.pid;
error_log ${dir}/nginx-proxy.error.log warn;
worker_rlimit_nofile 20000;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body-proxy;
  proxy_temp_path ${dir}/tmp/proxy-proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi-proxy;
  uwsgi_temp_path ${dir}/tmp/uwsgi-proxy;
  scgi_temp_path ${dir}/tmp/scgi-proxy;
  keepalive_requests 100000000;
  keepalive_timeout 65s;
  client_max_body_size 0;
  upstream be {
${backends.map(b => `    server 127.0.0.1:${b.port};`).join('\n')}
    keepalive 1024;
    keepalive_requests 100000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port} backlog=4096;
    location / {
      proxy_pass http://be;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_request_buffering off;
      # Unbuffered, NGINX relays a response in reads of proxy_buffer_size, one page by default: a 256 KB
      # response then cost it 410–590 µs of kernel time, against about 77 µs with 64 KB reads.
      proxy_buffer_size 64k;
      proxy_buffers 4 64k;
      proxy_busy_buffers_size 128k;
    }
  }
}
`
}

/**
 * Starts one competitor and resolves once a request through it reaches a backend.
 * `spec`: { id, kind: 'direct'|'haproxy'|'nginx'|'fleetgate'|'peer'|'floor', fleetgateArgs?, cpus? }.
 * Returns { spec, url, entry?, admin? } where entry is the measured process (none for direct).
 */
export async function startCompetitor (spec, { dir, backends }) {
  const cpus = spec.cpus ?? PROXY_CPU
  const log = join(dir, `${spec.id}.log`)
  if (spec.kind === 'direct') return { spec, url: backends[0].url }
  const port = await freePort()
  let entry
  let admin
  switch (spec.kind) {
    case 'haproxy': {
      const conf = join(dir, `${spec.id}.cfg`)
      writeFileSync(conf, haproxyConf(port, backends))
      entry = startProcess(spec.id, 'haproxy', ['-f', conf, '-db'], { cpus, logFile: log })
      break
    }
    case 'nginx': {
      mkdirSync(join(dir, 'tmp'), { recursive: true })
      const conf = join(dir, `${spec.id}.conf`)
      writeFileSync(conf, nginxProxyConf(dir, port, backends))
      entry = startProcess(spec.id, 'nginx', ['-p', dir, '-c', conf, '-e', join(dir, 'nginx-proxy.error.log')], { cpus, logFile: log })
      break
    }
    case 'fleetgate': {
      const adminPort = await freePort()
      admin = `http://127.0.0.1:${adminPort}`
      const source = spec.zookeeper
        ? ['--zookeeper', spec.zookeeper, '--service', spec.service ?? 'superset', '--base-path', spec.basePath ?? '/services']
        : ['--static', backends.map(b => b.url).join(',')]
      // Started the way the image starts it: with the node flags a serving proxy wants.
      entry = startProcess(spec.id, process.execPath, [
        ...PROXY_NODE_FLAGS, ...(spec.nodeArgs ?? []),
        join(ROOT, 'dist', 'cli.js'), 'proxy', ...lastOfEach([...source,
          '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`, '--log-level', 'warn',
          ...(spec.fleetgateArgs ?? [])]),
      ], { cpus, logFile: log })
      break
    }
    case 'peer':
    case 'floor':
      entry = startProcess(spec.id, process.execPath, [...(spec.nodeArgs ?? []), join(BENCH, `${spec.kind}.mjs`), String(port), backends.map(b => b.url).join(',')], { cpus, logFile: log })
      break
    default:
      throw new Error(`unknown competitor kind ${spec.kind}`)
  }
  const url = `http://127.0.0.1:${port}`
  if (spec.waitReady !== false) {
    try {
      await waitHttp(`${url}/1k`, 15_000, entry)
    } catch (err) {
      throw new Error(`${spec.id} did not come up: ${err.message}\n${tail(log)}`)
    }
  }
  return { spec, url, entry, admin, port }
}

/** The last lines of a log file, for an error message. */
export function tail (file, lines = 15) {
  if (!file || !existsSync(file)) return ''
  return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n')
}
