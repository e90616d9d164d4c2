// fleetgate in containers, on a private Docker engine (engine.ts) with locally built base images
// (stand-in-images.ts), all on the host's network against the test's own ZooKeeper:
// - the image, built from the real Dockerfile, run as a proxy and two wrapped agents: requests reach both
//   instances, `docker stop` of an agent drains its instance without a failed request, /metrics answers,
//   the HEALTHCHECK passes;
// - docker-compose.yml itself (less its published ports), brought up by docker-compose with an override
//   that puts every service on the host's network and points the fleet at the test's ZooKeeper, with
//   stand-ins built for the images that cannot be pulled: the init runs first, two Superset replicas
//   register, the proxy serves both, scaling down to one drains without a failed request, and `down` is
//   quick.
// Slow (image builds with `npm ci`): run by scripts/test.sh when CI or FLEETGATE_DOCKER_TESTS=1 is set.

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { parse } from 'yaml'
import { PROXY_NODE_FLAGS } from '../../src/proxy/node-flags.ts'
import { eventually } from '../helpers/eventually.ts'
import { get, loadLoop, sample } from '../helpers/fleet.ts'
import { freePort, startZooKeeper } from '../helpers/zookeeper.ts'
import { DOCKER_COMPOSE, startDockerEngine } from './engine.ts'
import { buildComposeStandIns, importNodeBaseImage, NODE_BASE_IMAGE } from './stand-in-images.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const IMAGE = 'fleetgate:smoke'

// A stand-in instance for the agent to wrap: answers every path (the agent's health check included) with
// its name, and closes gracefully on SIGTERM as gunicorn does.
const BACKEND = `
const http = require('node:http')
const name = process.env.BACKEND_NAME
const server = http.createServer((req, res) => {
  req.resume()
  res.setHeader('x-served-by', name)
  res.end(name + '\\n')
})
server.listen(Number(process.env.BACKEND_PORT), '127.0.0.1')
process.on('SIGTERM', () => {
  server.close(() => process.exit(0))
  server.closeIdleConnections()
})
`

const startedAt = Date.now()
const engine = await startDockerEngine()
t.teardown(() => engine.close())
const zookeeper = await startZooKeeper()
t.teardown(() => zookeeper.close())

const baseStart = Date.now()
await importNodeBaseImage(engine)
const baseMs = Date.now() - baseStart
const buildStart = Date.now()
// BuildKit, as current Docker releases build by default: the deps and build stages run in parallel.
await engine.docker(['build', '--network', 'host', '-t', IMAGE, '.'], { cwd: ROOT, env: { DOCKER_BUILDKIT: '1' }, timeoutMs: 600_000 })
const buildMs = Date.now() - buildStart
t.comment(`engine up and base image imported in ${Date.now() - startedAt - buildMs} ms (import ${baseMs} ms); image built in ${buildMs} ms`)

async function inspect (name: string, format: string): Promise<string> {
  return await engine.docker(['inspect', '--format', format, name])
}

/** `docker run -d --init --network host` with FLEETGATE_* settings; removed with the engine at teardown. */
async function runContainer (name: string, env: Record<string, string>, args: string[], extra: string[] = []): Promise<string> {
  return await engine.docker(['run', '-d', '--init', '--network', 'host', '--name', name,
    ...Object.entries(env).flatMap(([k, v]) => ['-e', `${k}=${v}`]), ...extra, IMAGE, ...args])
}

t.test('the image runs as the node user, and says how big it is', async t => {
  t.equal(await inspect(IMAGE, '{{.Config.User}}'), 'node', 'USER node')
  t.same(JSON.parse(await inspect(IMAGE, '{{json .Config.Entrypoint}}')), ['node', ...PROXY_NODE_FLAGS, '/app/dist/cli.js'], 'entrypoint is the CLI, under the proxy\'s node flags')
  t.match(await inspect(IMAGE, '{{json .Config.Healthcheck.Test}}'), /healthcheck\.mjs/, 'HEALTHCHECK probes the admin listener')
  const size = Number(await inspect(IMAGE, '{{.Size}}'))
  const base = Number(await inspect(NODE_BASE_IMAGE, '{{.Size}}'))
  const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`
  t.comment(`image ${mb(size)}: fleetgate's layers ${mb(size - base)} on a ${mb(base)} stand-in base (the real node:20-bookworm-slim differs)`)
  t.ok(size - base < 60e6, `fleetgate adds ${mb(size - base)} (production dependencies and dist only)`)
  const version = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }
  t.equal(await engine.docker(['run', '--rm', '--network', 'host', IMAGE, '--version']), version.version, '`--version` runs the CLI')
})

t.test('a proxy and two wrapped agents in containers: both serve, a stopped agent drains without a failed request', async t => {
  const [listen, admin, portA, portB, adminA, adminB] = await Promise.all([freePort(), freePort(), freePort(), freePort(), freePort(), freePort()])
  const url = `http://127.0.0.1:${listen}`
  const adminUrl = `http://127.0.0.1:${admin}`
  const service = 'smoke'

  await runContainer('fleetgate-proxy', {
    FLEETGATE_ZOOKEEPER: zookeeper.connectString,
    FLEETGATE_SERVICE: service,
    FLEETGATE_LISTEN: `127.0.0.1:${listen}`,
    FLEETGATE_ADMIN_LISTEN: `127.0.0.1:${admin}`,
  }, ['proxy'], ['--health-interval', '1s', '--health-start-period', '1s'])

  // Agent a gets its admin address from the environment, b from a flag: the HEALTHCHECK finds either.
  const agent = async (name: string, port: number, admin: { env: Record<string, string>, args: string[] }): Promise<void> => {
    await runContainer(`fleetgate-agent-${name}`, {
      FLEETGATE_ZOOKEEPER: zookeeper.connectString,
      FLEETGATE_SERVICE: service,
      FLEETGATE_ADVERTISE: `127.0.0.1:${port}`,
      FLEETGATE_TARGET: `http://127.0.0.1:${port}`,
      ...admin.env,
      FLEETGATE_HEALTH_INTERVAL_MS: '200',
      FLEETGATE_DRAIN_MS: '2000',
      BACKEND_NAME: name,
      BACKEND_PORT: String(port),
    }, ['agent', ...admin.args, '--', 'node', '-e', BACKEND], ['--health-interval', '1s', '--stop-timeout', '30'])
  }
  await agent('a', portA, { env: { FLEETGATE_ADMIN_LISTEN: `127.0.0.1:${adminA}` }, args: [] })
  await agent('b', portB, { env: {}, args: ['--admin-listen', `127.0.0.1:${adminB}`] })

  const logs = async (name: string): Promise<string> => {
    const result = await engine.run(['logs', '--tail', '40', name])
    return result.stdout + result.stderr
  }
  try {
    await eventually(async () => {
      const res = await request(`${adminUrl}/status`, { headers: { accept: 'application/json' } })
      const status = await res.body.json() as { instances?: Array<{ state: string }> }
      return status.instances?.filter(i => i.state === 'up').length === 2
    }, { timeoutMs: 30_000, intervalMs: 100, message: 'both instances up in the proxy' })
  } catch (err) {
    t.comment(`proxy:\n${await logs('fleetgate-proxy')}\nagent a:\n${await logs('fleetgate-agent-a')}`)
    throw err
  }

  const servedBy = new Set<string>()
  for (let i = 0; i < 10; i++) {
    const res = await get(url, `/ping/${i}`)
    t.equal(res.status, 200, `request ${i} answered`)
    if (res.servedBy) servedBy.add(res.servedBy)
  }
  t.same([...servedBy].sort(), ['a', 'b'], 'requests through the proxy reach both instances')

  const load = loadLoop(url, { concurrency: 4, maxMs: 60_000, pauseMs: 1 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok >= 50, { timeoutMs: 10_000, message: 'load running' })
  const stopStart = Date.now()
  await engine.docker(['stop', '-t', '30', 'fleetgate-agent-a'], { timeoutMs: 60_000 })
  const stopMs = Date.now() - stopStart
  const after = load.result.ok
  await eventually(() => load.result.ok >= after + 50, { timeoutMs: 10_000, message: 'load after the stop' })
  const result = await load.stop()
  t.comment(`docker stop of agent a took ${stopMs} ms (drain 2000 ms); load: ${result.ok} ok, ${result.failed} failed, by instance ${JSON.stringify(result.byInstance)}`)
  t.equal(result.failed, 0, `no failed request while agent a drained and stopped (${result.errors.join('; ')})`)
  t.ok(stopMs >= 1900, 'the agent held its instance, draining, for --drain-ms')
  t.equal(await inspect('fleetgate-agent-a', '{{.State.ExitCode}}'), '0', 'the agent exits 0 after draining and stopping its command')
  for (let i = 0; i < 5; i++) t.equal((await get(url, '/after')).servedBy, 'b', 'only b serves after the stop')

  const metrics = await (await request(`${adminUrl}/metrics`)).body.text()
  t.ok(sample(metrics, 'fleetgate_requests_total', { service }) > 0, 'the proxy\'s /metrics answers and counts requests')
  const agentMetrics = await (await request(`http://127.0.0.1:${adminB}/metrics`)).body.text()
  t.match(agentMetrics, /^fleetgate_agent_/m, 'the agent\'s /metrics answers')

  await eventually(async () => (await inspect('fleetgate-proxy', '{{.State.Health.Status}}')) === 'healthy', { timeoutMs: 20_000, intervalMs: 250, message: 'proxy container healthy' })
  await eventually(async () => (await inspect('fleetgate-agent-b', '{{.State.Health.Status}}')) === 'healthy', { timeoutMs: 20_000, intervalMs: 250, message: 'agent container healthy' })
  t.pass('the HEALTHCHECK passes for the proxy (its admin port from FLEETGATE_ADMIN_LISTEN) and the agent (from --admin-listen)')
  const pid = await inspect('fleetgate-proxy', '{{.State.Pid}}')
  t.match(readFileSync(`/proc/${pid}/status`, 'utf8'), /^Uid:\s+1000\s/m, 'the container\'s processes run as uid 1000, not root')

  const proxyStop = Date.now()
  await engine.docker(['stop', '-t', '30', 'fleetgate-proxy'], { timeoutMs: 60_000 })
  const proxyStopMs = Date.now() - proxyStop
  t.equal(await inspect('fleetgate-proxy', '{{.State.ExitCode}}'), '0', 'the proxy exits 0 on SIGTERM')
  t.ok(proxyStopMs < 10_000, `the proxy stops in ${proxyStopMs} ms, well before docker's SIGKILL`)
})

t.test('docker-compose.yml on the host network with stand-ins: init first, two replicas, scale down drains, down', async t => {
  await buildComposeStandIns(engine)
  const [listen, admin] = await Promise.all([freePort(), freePort()])
  const url = `http://127.0.0.1:${listen}`
  const adminUrl = `http://127.0.0.1:${admin}`
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-compose-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))

  // The override: every service on the host's network (so nothing leaves 127.0.0.1), placeholders that
  // report healthy at once, builds with the host's network (npm ci), the fleet on the test's ZooKeeper,
  // and ports that cannot collide: the proxy on free ports, each replica on a free port of its own (and,
  // as superset-with-agent.sh gives it with SUPERSET_PORT=0, its agent's admin listener too).
  const onHost = { network_mode: 'host' }
  const healthy = { healthcheck: { test: ['CMD', 'node', '-e', ''], interval: '1s', timeout: '5s', retries: 30 } }
  const build = { build: { network: 'host' } }
  const override = {
    // The host's network as the project's default, so Compose creates no bridge network of its own.
    networks: { default: { name: 'host', external: true } },
    services: {
      zookeeper: { ...onHost, ...healthy },
      postgres: { ...onHost, ...healthy },
      redis: { ...onHost, ...healthy },
      'superset-init': { ...onHost, ...build },
      superset: {
        ...onHost,
        ...build,
        environment: {
          FLEETGATE_ZOOKEEPER: zookeeper.connectString,
          FLEETGATE_ADVERTISE_HOST: '127.0.0.1',
          FLEETGATE_HEALTH_INTERVAL_MS: '200',
          FLEETGATE_DRAIN_MS: '2000',
          SUPERSET_PORT: '0',
          SUPERSET_BIND_ADDRESS: '127.0.0.1',
        },
      },
      fleetgate: {
        ...onHost,
        ...build,
        environment: {
          FLEETGATE_ZOOKEEPER: zookeeper.connectString,
          FLEETGATE_LISTEN: `127.0.0.1:${listen}`,
          FLEETGATE_ADMIN_LISTEN: `127.0.0.1:${admin}`,
        },
      },
    },
  }
  const overrideFile = path.join(dir, 'docker-compose.override.yml')
  writeFileSync(overrideFile, JSON.stringify(override, null, 2))
  // Published ports cannot be combined with the host's network, and an override can add ports but not
  // take them away: the base is docker-compose.yml as Compose resolves it, less its `ports`.
  const resolved = parse(await engine.exec(DOCKER_COMPOSE, ['--file', path.join(ROOT, 'docker-compose.yml'), 'config'], { cwd: ROOT })) as { services: Record<string, { ports?: unknown }> }
  for (const service of Object.values(resolved.services)) delete service.ports
  const baseFile = path.join(dir, 'docker-compose.yml')
  // JSON is YAML too, and unlike a YAML re-rendering it cannot turn 'no' into Compose v1's (YAML 1.1) false.
  writeFileSync(baseFile, JSON.stringify(resolved, null, 2))
  const compose = (args: string[], timeoutMs = 300_000): Promise<string> => engine.exec(DOCKER_COMPOSE, [
    '--project-name', 'fleetgate-test', '--project-directory', ROOT,
    '--file', baseFile, '--file', overrideFile, ...args,
  ], {
    cwd: ROOT,
    // Compose v1 builds through the docker CLI with BuildKit; Debian's client, which has it built in.
    env: { PATH: `/usr/bin:${process.env.PATH ?? ''}`, COMPOSE_DOCKER_CLI_BUILD: '1', DOCKER_BUILDKIT: '1' },
    timeoutMs,
  })
  t.teardown(() => compose(['down', '--volumes', '--remove-orphans', '--timeout', '10']).catch(() => {}))
  const containers = async (service: string, all = false): Promise<string[]> =>
    (await engine.docker(['ps', ...(all ? ['-a'] : []), '-q', '--filter', `label=com.docker.compose.project=fleetgate-test`, '--filter', `label=com.docker.compose.service=${service}`])).split('\n').filter(Boolean)
  const status = async (): Promise<Array<{ id: string, state: string }>> => {
    const res = await request(`${adminUrl}/status`, { headers: { accept: 'application/json' } })
    return ((await res.body.json()) as { instances: Array<{ id: string, state: string }> }).instances
  }

  const upStart = Date.now()
  try {
    await compose(['up', '-d', '--scale', 'superset=2', 'fleetgate', 'superset'], 600_000)
  } catch (err) {
    t.comment(await compose(['logs', '--no-color', '--tail', '40']).catch(e => String(e)))
    throw err
  }
  t.comment(`docker-compose up (two builds from the cache, the init, two replicas) took ${Date.now() - upStart} ms`)

  const [init] = await containers('superset-init', true)
  t.equal(await inspect(init!, '{{.State.ExitCode}}'), '0', 'superset-init ran to completion')
  const initLog = (await engine.run(['logs', init!])).stdout
  t.match(initLog, /superset stand-in: db upgrade[\s\S]*superset stand-in: fab create-admin --username admin[\s\S]*superset stand-in: init/, 'db upgrade, fab create-admin, superset init, in that order')
  const replicas = await containers('superset')
  t.equal(replicas.length, 2, 'two superset replicas run')
  const initEnded = Date.parse(await inspect(init!, '{{.State.FinishedAt}}'))
  for (const id of replicas) t.ok(Date.parse(await inspect(id, '{{.State.StartedAt}}')) >= initEnded, 'a replica started after the init had finished')

  try {
    await eventually(async () => (await status()).filter(i => i.state === 'up').length === 2, { timeoutMs: 30_000, intervalMs: 100, message: 'two replicas up in the proxy' })
  } catch (err) {
    t.comment(await compose(['logs', '--no-color', '--tail', '30', 'superset', 'fleetgate']).catch(e => String(e)))
    throw err
  }
  const servedBy = new Set<string>()
  let forwarded: Record<string, string> = {}
  for (let i = 0; i < 10; i++) {
    const res = await get(url, `/superset/welcome/?n=${i}`)
    t.equal(res.status, 200, `request ${i} answered by a replica`)
    if (res.servedBy) servedBy.add(res.servedBy)
    forwarded = (JSON.parse(res.body) as { headers: Record<string, string> }).headers
  }
  t.equal(servedBy.size, 2, `requests reach both replicas (${[...servedBy].join(', ')})`)
  t.equal(forwarded['x-forwarded-for'], '127.0.0.1', 'gunicorn gets X-Forwarded-For (for ENABLE_PROXY_FIX)')
  t.equal(forwarded['x-forwarded-proto'], 'http', 'and X-Forwarded-Proto')
  t.equal(forwarded['x-forwarded-host'], `127.0.0.1:${listen}`, 'and X-Forwarded-Host')

  const load = loadLoop(url, { concurrency: 4, maxMs: 90_000, pauseMs: 1 })
  t.teardown(() => load.stop())
  await eventually(() => load.result.ok >= 50, { timeoutMs: 10_000, message: 'load running' })
  const scaleStart = Date.now()
  await compose(['up', '-d', '--no-deps', '--scale', 'superset=1', 'superset'])
  const scaleMs = Date.now() - scaleStart
  const after = load.result.ok
  await eventually(() => load.result.ok >= after + 50, { timeoutMs: 10_000, message: 'load after scaling down' })
  const result = await load.stop()
  t.comment(`scale 2 -> 1 took ${scaleMs} ms (drain 2000 ms); load: ${result.ok} ok, ${result.failed} failed, ${JSON.stringify(result.byInstance)}`)
  t.equal(result.failed, 0, `no failed request while a replica drained and stopped (${result.errors.join('; ')})`)
  t.equal((await containers('superset')).length, 1, 'one replica left')
  t.equal((await status()).length, 1, 'the proxy follows: one instance')
  const last = new Set<string>()
  for (let i = 0; i < 5; i++) last.add((await get(url, '/after')).servedBy ?? '')
  t.equal(last.size, 1, 'the remaining replica serves everything')

  const downStart = Date.now()
  await compose(['down', '--volumes', '--remove-orphans'])
  const downMs = Date.now() - downStart
  t.comment(`docker-compose down took ${downMs} ms`)
  t.ok(downMs < 30_000, 'down is quick: every process stops on SIGTERM, none waits for a SIGKILL')
  t.same(await containers('superset', true), [], 'no container left')
})
