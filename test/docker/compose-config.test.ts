// docker-compose.yml as Compose itself reads it: `docker-compose config` passes for every profile, the
// superset service can scale, and what the files refer to one another by agrees (ports, service names,
// Prometheus targets and relabelling, mounted paths, the Superset image's copy of the build stages).
// Needs Debian's docker-compose (v1) but no Docker engine; run with the other Docker tests.

import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { parse } from 'yaml'
import { requireBinary } from '../helpers/prometheus.ts'
import { DOCKER_COMPOSE, INSTALL_HINT, runCommand } from './engine.ts'

const ROOT = fileURLToPath(new URL('../..', import.meta.url))
const read = (file: string): string => readFileSync(path.join(ROOT, file), 'utf8')

if (!existsSync(DOCKER_COMPOSE)) throw new Error(`docker-compose is not installed (${DOCKER_COMPOSE} is missing); ${INSTALL_HINT}`)

interface Service {
  image?: string
  build?: { context: string, dockerfile?: string }
  init?: boolean
  profiles?: string[]
  ports?: Array<string | { target: number, published?: number | string }>
  expose?: Array<string | number>
  container_name?: string
  environment?: Record<string, string | null>
  depends_on?: Record<string, { condition: string }>
  stop_grace_period?: string
  volumes?: Array<string | { source?: string, target: string, type: string }>
  command?: string[] | string
}
interface ComposeConfig { services: Record<string, Service> }

/** `docker-compose [--profile P] config`, parsed; fails the test with Compose's own message. */
async function composeConfig (profiles: string[] = [], env: Record<string, string> = {}): Promise<ComposeConfig> {
  const result = await runCommand(DOCKER_COMPOSE, [...profiles.flatMap(p => ['--profile', p]), 'config'], { cwd: ROOT, env: { ...process.env, COMPOSE_PROJECT_NAME: 'fleetgate', ...env } })
  if (result.code !== 0) throw new Error(`docker-compose config failed:\n${result.stderr}`)
  return parse(result.stdout) as ComposeConfig
}

const raw = parse(read('docker-compose.yml')) as ComposeConfig
const profiles = [...new Set(Object.values(raw.services).flatMap(s => s.profiles ?? []))].sort()
const config = await composeConfig()
const env = (service: string, key: string): string | undefined => config.services[service]?.environment?.[key] ?? undefined
const port = (address: string | undefined): string | undefined => address?.slice(address.lastIndexOf(':') + 1)

t.test('docker-compose config passes without a profile and with each one', async t => {
  t.ok(profiles.includes('consul'), `profiles: ${profiles.join(', ')}`)
  // Compose v1's `config` lists every service whatever the profiles; `up` starts only the active ones.
  t.same(config.services.consul?.profiles, ['consul'], 'consul only runs with --profile consul')
  for (const profile of profiles) {
    const withProfile = await composeConfig([profile])
    const members = Object.entries(withProfile.services).filter(([, s]) => s.profiles?.includes(profile)).map(([name]) => name)
    t.ok(members.length > 0, `--profile ${profile} config passes (${members.join(', ')})`)
  }
  const all = await composeConfig(profiles)
  t.same(Object.keys(all.services).sort(), Object.keys(raw.services).sort(), 'all profiles together: every service')
  t.notOk('version' in raw, 'no version key: the Compose Specification, read by v1 and v2 alike')
})

t.test('FLEETGATE_DISCOVERY=consul with the consul profile moves the proxy and the agents to Consul', async t => {
  t.equal(env('fleetgate', 'FLEETGATE_DISCOVERY'), 'zookeeper', 'ZooKeeper by default')
  const consul = await composeConfig(['consul'], { FLEETGATE_DISCOVERY: 'consul' })
  for (const service of ['fleetgate', 'superset']) {
    t.equal(consul.services[service]?.environment?.FLEETGATE_DISCOVERY, 'consul', `${service}: --discovery consul`)
    t.equal(consul.services[service]?.environment?.FLEETGATE_CONSUL, 'http://consul:8500', `${service}: the consul service's HTTP port`)
  }
  t.same(consul.services.consul?.command, ['agent', '-dev', '-client=0.0.0.0'], 'a dev-mode Consul agent that listens beyond loopback')
})

t.test('the superset service scales: no fixed name or host port, each instance advertises itself', async t => {
  const superset = config.services.superset!
  t.notOk(superset.container_name, 'no container_name')
  t.same(superset.ports ?? [], [], 'no published port')
  t.equal(superset.init, true, 'init: true')
  t.equal(superset.depends_on?.['superset-init']?.condition, 'service_completed_successfully', 'starts after the one-shot init')
  t.equal(superset.build?.dockerfile, 'deploy/superset/Dockerfile')
  t.same(config.services['superset-init']?.build, superset.build, 'superset-init is built from the same Dockerfile')
  t.equal(config.services['superset-init']?.image, superset.image, 'and tagged the same')
  const script = read('deploy/superset/superset-with-agent.sh')
  t.match(script, /hostname -i/, 'the entrypoint advertises the container\'s own address')
  t.match(read('deploy/superset/Dockerfile'), /superset-with-agent\.sh/, 'the Superset image runs that entrypoint')
  t.equal(spawnSync('sh', ['-n', path.join(ROOT, 'deploy/superset/superset-with-agent.sh')]).status, 0, 'the entrypoint parses (sh -n)')
  const grace = parseSeconds(superset.stop_grace_period)
  const drainAndStop = (Number(env('superset', 'FLEETGATE_DRAIN_MS')) + Number(env('superset', 'FLEETGATE_STOP_TIMEOUT_MS'))) / 1000
  t.ok(grace > drainAndStop, `stop_grace_period ${grace} s covers the drain and gunicorn's stop (${drainAndStop} s)`)
  t.equal(env('superset', 'FLEETGATE_ZOOKEEPER'), 'zookeeper:2181', 'agents register in the compose ZooKeeper')
  t.equal(env('superset', 'FLEETGATE_SERVICE'), env('fleetgate', 'FLEETGATE_SERVICE'), 'under the service the proxy follows')
  t.match(read('deploy/superset/superset_config.py'), /^ENABLE_PROXY_FIX = True$/m, 'ENABLE_PROXY_FIX in superset_config.py')
})

t.test('the proxy is published on 8088 and every long-running fleetgate process has an init', async t => {
  const fleetgate = config.services.fleetgate!
  const published = (fleetgate.ports ?? []).map(p => typeof p === 'string' ? p : `${p.published}:${p.target}`)
  t.ok(published.some(p => /(^|:)8088:8088$/.test(p) || p === '8088:8088'), `8088 published (${published.join(', ')})`)
  t.equal(port(env('fleetgate', 'FLEETGATE_LISTEN')), '8088', 'the proxy listens on 8088')
  for (const name of ['fleetgate', 'superset', 'superset-init']) t.equal(config.services[name]?.init, true, `${name}: init: true`)
  t.equal(config.services.fleetgate?.build?.context, ROOT.replace(/\/$/, ''), 'the proxy is built from the root Dockerfile')
})

t.test('Prometheus scrapes where the proxy and the agents listen, with the shipped rules and relabelling', async t => {
  const compose = parse(read('deploy/compose/prometheus.yml')) as PrometheusConfig
  const shipped = parse(read('deploy/prometheus/prometheus.yml')) as PrometheusConfig
  t.same(compose.scrape_configs.map(j => j.job_name), shipped.scrape_configs.map(j => j.job_name), 'the same job names as deploy/prometheus')
  for (const job of compose.scrape_configs) {
    const twin = shipped.scrape_configs.find(j => j.job_name === job.job_name)
    t.same(job.metric_relabel_configs, twin?.metric_relabel_configs, `${job.job_name}: the same relabelling (upstream)`)
  }
  t.same(compose.rule_files, shipped.rule_files, 'the same rule files')
  const proxyJob = compose.scrape_configs.find(j => j.job_name === 'fleetgate-proxy')
  t.same(proxyJob?.static_configs?.[0]?.targets, [`fleetgate:${port(env('fleetgate', 'FLEETGATE_ADMIN_LISTEN'))}`], 'proxy target: the fleetgate service\'s admin port')
  const agentJob = compose.scrape_configs.find(j => j.job_name === 'fleetgate-agent')
  t.same(agentJob?.dns_sd_configs?.[0]?.names, ['superset'], 'agents found by the superset service\'s name')
  // The script's default, on the compose network (with SUPERSET_PORT=0, on the host's, it takes a free port).
  const agentAdmin = read('deploy/superset/superset-with-agent.sh').match(/^admin_listen=(\S+)$/m)?.[1]
  t.equal(String(agentJob?.dns_sd_configs?.[0]?.port), port(agentAdmin), `agent port: the entrypoint's admin listener (${agentAdmin})`)

  const mounts = (config.services.prometheus?.volumes ?? []).map(v => typeof v === 'string' ? v : `${v.source}:${v.target}`)
  t.ok(mounts.some(m => m.includes('deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml')), 'compose mounts this config')
  t.ok(mounts.some(m => m.includes('deploy/prometheus/rules:/etc/prometheus/rules')), 'and the rules beside it')

  // promtool checks the config with the rules where compose puts them.
  t.test('promtool check config', async t => {
    // In CI a missing promtool fails the test rather than skip it.
    const promtool = requireBinary(t, 'promtool', 'apt-get install -y --no-install-recommends prometheus')
    if (!promtool) return
    const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-compose-prom-'))
    t.teardown(() => rmSync(dir, { recursive: true, force: true }))
    cpSync(path.join(ROOT, 'deploy/compose/prometheus.yml'), path.join(dir, 'prometheus.yml'))
    cpSync(path.join(ROOT, 'deploy/prometheus/rules'), path.join(dir, 'rules'), { recursive: true })
    const check = await runCommand(promtool, ['check', 'config', path.join(dir, 'prometheus.yml')])
    t.equal(check.code, 0, `promtool check config passes${check.code === 0 ? '' : `:\n${check.stdout}${check.stderr}`}`)
  })
})

t.test('Grafana gets the Prometheus data source and the dashboard where compose mounts them', async t => {
  const mounts = (config.services.grafana?.volumes ?? []).map(v => typeof v === 'string' ? v : `${v.source}:${v.target}`)
  const dashboards = parse(read('deploy/compose/grafana/provisioning/dashboards/fleetgate.yml')) as { providers: Array<{ options: { path: string } }> }
  const dashboardDir = dashboards.providers[0]?.options.path
  t.ok(mounts.some(m => m.includes(`deploy/grafana/fleetgate-dashboard.json:${dashboardDir}/`)), `the dashboard is mounted into ${dashboardDir}`)
  t.ok(mounts.some(m => m.includes('deploy/compose/grafana/provisioning:/etc/grafana/provisioning')), 'the provisioning folder is mounted')
  const datasources = parse(read('deploy/compose/grafana/provisioning/datasources/prometheus.yml')) as { datasources: Array<{ type: string, url: string, isDefault: boolean }> }
  t.match(datasources.datasources[0], { type: 'prometheus', url: 'http://prometheus:9090', isDefault: true }, 'Prometheus is the default data source')
})

t.test('the Superset image builds fleetgate with the same stages as the root Dockerfile', async t => {
  const stages = (dockerfile: string): string => {
    const text = read(dockerfile)
    return text.slice(text.indexOf('FROM ${NODE_IMAGE} AS deps'), text.indexOf('RUN npm run build') + 'RUN npm run build'.length)
  }
  const root = stages('Dockerfile')
  t.ok(root.length > 100, 'the root Dockerfile has the deps and build stages')
  t.equal(stages('deploy/superset/Dockerfile'), root, 'identical, so one build\'s layer cache serves both')
})

interface PrometheusConfig {
  rule_files: string[]
  scrape_configs: Array<{
    job_name: string
    static_configs?: Array<{ targets: string[] }>
    dns_sd_configs?: Array<{ names: string[], port: number }>
    metric_relabel_configs?: unknown[]
  }>
}

function parseSeconds (value: string | undefined): number {
  const match = /^(\d+)(s|m)$/.exec(value ?? '')
  if (!match) return 0
  return Number(match[1]) * (match[2] === 'm' ? 60 : 1)
}
