// Base images built on the spot, because no image registry can be reached here: each is a folder made
// from this machine's own files, `docker import`ed under the name a Dockerfile's FROM uses.
//
// node:20-bookworm-slim (importNodeBaseImage): this machine's Node.js 20 and npm at the paths of the official image
// (/usr/local/bin/node, /usr/local/lib/node_modules/npm), the user `node` (uid 1000), a POSIX shell and
// the few coreutils that builds and entrypoints use, each with the shared libraries `ldd` names. It
// trusts what this machine trusts (NODE_EXTRA_CA_CERTS, else the system CA bundle), so that `npm ci` in a
// build reaches the registry as it does here, also through a TLS-inspecting egress.
//
// The images docker-compose.yml names and nothing here can provide (buildStandIns, on top of that base):
// - zookeeper:3.9, postgres:16, redis:7: idle placeholders, so the services' dependencies start (the
//   fleet uses the test's own ZooKeeper; the Superset stand-in needs no database);
// - apache/superset:5.0.0: what deploy/superset/Dockerfile and its entrypoint use of the real image
//   (/app/.venv with `uv` and `superset`, a `superset` user, gunicorn on PATH), with a gunicorn that is a
//   small HTTP server answering /health and echoing the headers it got.

import { execFileSync } from 'node:child_process'
import { chmodSync, chownSync, copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { DockerEngine } from './engine.ts'

export const NODE_BASE_IMAGE = 'node:20-bookworm-slim'

/** Commands the stand-in carries besides node and npm: what Dockerfiles' RUN lines and our entrypoints use. */
const TOOLS = ['sh', 'env', 'rm', 'mkdir', 'cp', 'mv', 'ln', 'ls', 'cat', 'chmod', 'chown', 'sleep', 'hostname', 'id', 'awk', 'head', 'tr', 'cut', 'grep', 'sed', 'touch', 'true', 'false', 'echo', 'test']

export interface StandInOptions {
  /** Extra files: path inside the image -> { content, mode }. */
  files?: Record<string, { content: string, mode?: number }>
  /** Extra `/etc/passwd` users as name:uid (a group of the same name and id is added). */
  users?: Record<string, number>
  /** Dockerfile instructions for `docker import --change`, e.g. 'ENV FOO=bar'. */
  changes?: string[]
}

/** Imports a Node.js 20 base image under `tag` (default node:20-bookworm-slim); resolves with its tag. */
export async function importNodeBaseImage (engine: DockerEngine, tag = NODE_BASE_IMAGE, options: StandInOptions = {}): Promise<string> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-rootfs-'))
  try {
    const extraCa = [process.env.NODE_EXTRA_CA_CERTS, '/etc/ssl/certs/ca-certificates.crt'].find(file => file && existsSync(file))
    const changes = [
      'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      'ENV NPM_CONFIG_UPDATE_NOTIFIER=false',
      'CMD ["node"]',
      ...options.changes ?? [],
    ]
    buildNodeRootfs(root, options)
    if (extraCa) {
      put(root, '/usr/local/share/ca-certificates/host-extra-ca.crt', extraCa)
      changes.push('ENV NODE_EXTRA_CA_CERTS=/usr/local/share/ca-certificates/host-extra-ca.crt')
    }
    const tarball = path.join(root, '..', `${path.basename(root)}.tar`)
    try {
      execFileSync('tar', ['-C', root, '-cf', tarball, '.'])
      await engine.docker(['import', ...changes.flatMap(c => ['--change', c]), tarball, tag])
    } finally {
      rmSync(tarball, { force: true })
    }
    return tag
  } finally {
    rmSync(root, { recursive: true, force: true })
  }
}

function buildNodeRootfs (root: string, options: StandInOptions): void {
  for (const dir of ['/etc', '/root', '/usr/local/bin', '/usr/local/lib/node_modules', '/bin', '/usr/bin']) mkdirSync(path.join(root, dir), { recursive: true })
  mkdirSync(path.join(root, 'tmp'), { mode: 0o1777 })
  chmodSync(path.join(root, 'tmp'), 0o1777)

  const nodeBinary = realpathSync(process.execPath)
  put(root, '/usr/local/bin/node', nodeBinary)
  const npmDir = findNpm()
  cpSync(npmDir, path.join(root, '/usr/local/lib/node_modules/npm'), { recursive: true, dereference: true })
  symlinkSync('../lib/node_modules/npm/bin/npm-cli.js', path.join(root, '/usr/local/bin/npm'))
  symlinkSync('../lib/node_modules/npm/bin/npx-cli.js', path.join(root, '/usr/local/bin/npx'))

  const binaries = [nodeBinary]
  for (const tool of TOOLS) {
    const found = which(tool)
    if (!found) continue
    // /bin/sh is dash on Debian, as in the official image; the rest go to /usr/bin.
    put(root, tool === 'sh' ? '/bin/sh' : `/usr/bin/${tool}`, found)
    binaries.push(found)
  }
  for (const lib of sharedLibraries(binaries)) put(root, lib, lib)

  const users: Record<string, number> = { node: 1000, ...options.users }
  writeFileSync(path.join(root, 'etc/passwd'), ['root:x:0:0:root:/root:/bin/sh', ...Object.entries(users).map(([name, id]) => `${name}:x:${id}:${id}::/home/${name}:/bin/sh`), ''].join('\n'))
  writeFileSync(path.join(root, 'etc/group'), ['root:x:0:', ...Object.entries(users).map(([name, id]) => `${name}:x:${id}:`), ''].join('\n'))
  for (const [name, id] of Object.entries(users)) {
    mkdirSync(path.join(root, 'home', name), { recursive: true })
    chownSync(path.join(root, 'home', name), id, id)
  }
  for (const [file, { content, mode }] of Object.entries(options.files ?? {})) {
    const target = path.join(root, file)
    mkdirSync(path.dirname(target), { recursive: true })
    writeFileSync(target, content, { mode: mode ?? 0o644 })
  }
}

/** Copies `source` (following links) to `target` inside the root folder. */
function put (root: string, target: string, source: string): void {
  const dest = path.join(root, target)
  mkdirSync(path.dirname(dest), { recursive: true })
  copyFileSync(source, dest)
  chmodSync(dest, 0o755)
}

function which (command: string): string | undefined {
  for (const dir of ['/usr/bin', '/bin', '/usr/sbin', '/sbin']) {
    const candidate = path.join(dir, command)
    if (existsSync(candidate)) return realpathSync(candidate)
  }
  return undefined
}

function findNpm (): string {
  const candidates = [
    path.resolve(path.dirname(realpathSync(process.execPath)), '../lib/node_modules/npm'),
    '/usr/lib/node_modules/npm',
    '/usr/local/lib/node_modules/npm',
  ]
  const found = candidates.find(dir => existsSync(path.join(dir, 'bin/npm-cli.js')))
  if (!found) throw new Error(`npm not found next to ${process.execPath} (looked in ${candidates.join(', ')})`)
  return found
}

/** The absolute paths of every shared library (and the loader) that `ldd` lists for the binaries. */
function sharedLibraries (binaries: readonly string[]): string[] {
  const libs = new Set<string>()
  for (const binary of binaries) {
    let out: string
    try {
      out = execFileSync('ldd', [binary], { encoding: 'utf8' })
    } catch {
      continue // statically linked
    }
    for (const match of out.matchAll(/(\/\S+\.so[^\s]*)/g)) if (match[1]) libs.add(match[1])
  }
  return [...libs]
}

/** The images docker-compose.yml uses that cannot be pulled here, each tagged with the name compose uses. */
export const COMPOSE_STAND_INS = {
  idle: ['zookeeper:3.9', 'postgres:16', 'redis:7'],
  superset: 'apache/superset:5.0.0',
} as const

const IDLE = "process.on('SIGTERM', () => process.exit(0)); setInterval(() => {}, 1 << 30)"

// Answers like Superset's web server as far as fleetgate can tell: /health says OK, everything else says
// which process served it and with which headers. Closes gracefully on SIGTERM, as gunicorn does.
const GUNICORN = `#!/usr/bin/env node
const http = require('node:http')
const args = process.argv.slice(2)
const bind = args[args.indexOf('--bind') + 1]
const host = bind.slice(0, bind.lastIndexOf(':'))
const port = Number(bind.slice(bind.lastIndexOf(':') + 1))
const id = process.pid + '@' + port
const server = http.createServer((req, res) => {
  req.resume()
  res.setHeader('x-served-by', id)
  if (req.url === '/health') return res.end('OK')
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify({ id, url: req.url, headers: req.headers, args }))
})
server.listen(port, host, () => console.log('gunicorn stand-in listening on ' + bind))
process.on('SIGTERM', () => {
  console.log('gunicorn stand-in: SIGTERM, closing')
  server.close(() => process.exit(0))
  server.closeIdleConnections()
})
`

/** Builds and tags the stand-ins of COMPOSE_STAND_INS on top of the node base image (import it first). */
export async function buildComposeStandIns (engine: DockerEngine): Promise<void> {
  const idle = ['FROM ' + NODE_BASE_IMAGE, 'CMD ["node", "-e", ' + JSON.stringify(IDLE) + ']'].join('\n')
  const [first, ...others] = COMPOSE_STAND_INS.idle
  await build(engine, idle, {}, first)
  for (const tag of others) await engine.docker(['tag', first, tag])

  const superset = [
    'FROM ' + NODE_BASE_IMAGE,
    'COPY activate uv superset gunicorn /app/.venv/bin/',
    'RUN mkdir -p /app/pythonpath /app/superset_home && chown 1001:1001 /app/superset_home',
    'ENV PATH=/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin PYTHONPATH=/app/pythonpath SUPERSET_HOME=/app/superset_home SUPERSET_PORT=8088',
    'WORKDIR /app',
    'USER superset',
  ].join('\n')
  await build(engine, superset, {
    activate: { content: 'export VIRTUAL_ENV=/app/.venv\n' },
    uv: { content: '#!/bin/sh\necho "uv stand-in: $*"\n', mode: 0o755 },
    superset: { content: '#!/bin/sh\necho "superset stand-in: $*"\n', mode: 0o755 },
    gunicorn: { content: GUNICORN, mode: 0o755 },
  }, COMPOSE_STAND_INS.superset, ['superset:1001'])
}

async function build (engine: DockerEngine, dockerfile: string, files: Record<string, { content: string, mode?: number }>, tag: string, users: string[] = []): Promise<void> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-stand-in-'))
  try {
    const lines = dockerfile.split('\n')
    // Users go into /etc/passwd and /etc/group right after FROM (the stand-in base has no useradd).
    const userLines = users.map(u => {
      const [name, id] = u.split(':')
      return `RUN echo '${name}:x:${id}:${id}::/app/superset_home:/bin/sh' >> /etc/passwd && echo '${name}:x:${id}:' >> /etc/group`
    })
    writeFileSync(path.join(dir, 'Dockerfile'), [lines[0], ...userLines, ...lines.slice(1), ''].join('\n'))
    for (const [name, { content, mode }] of Object.entries(files)) writeFileSync(path.join(dir, name), content, { mode: mode ?? 0o644 })
    // RUN needs a network, and the engine has no bridge: the host's.
    await engine.docker(['build', '--network', 'host', '-t', tag, dir], { env: { DOCKER_BUILDKIT: '1' }, timeoutMs: 120_000 })
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}
