// A real Prometheus scrapes a running proxy with deploy/prometheus's own relabelling and rules; its HTTP
// API must then return the fleetgate series with the values the traffic produced, every rule and
// dashboard query must evaluate, and the ejection alert must fire for an instance that refuses connects.

import type { IncomingMessage, ServerResponse } from 'node:http'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { request } from 'undici'
import { parse } from 'yaml'
import { eventually } from '../helpers/eventually.ts'
import { startBackend, startProxy, type Backend } from '../helpers/fleet.ts'
import { PROMETHEUS_INSTALL_HINT, requireBinary, startPrometheus, type PromSample } from '../helpers/prometheus.ts'
import { freePort } from '../helpers/zookeeper.ts'

t.setTimeout(120_000)

const deploy = (file: string): string => fileURLToPath(new URL(`../../deploy/${file}`, import.meta.url))

interface ScrapeConfig { job_name: string, static_configs: Array<{ targets: string[] }>, [key: string]: unknown }

const binary = requireBinary(t, 'prometheus', PROMETHEUS_INSTALL_HINT)
if (binary) {
  t.test('Prometheus scrapes the proxy: fleetgate series with the right values, upstream label, rules and dashboard queries', async t => {
    const service = 'superset'
    const backends = await Promise.all(['a', 'b'].map(n => startBackend(t, n)))
    const answered = backends.map(tallyCodes)
    // Nothing listens there: every connect is refused, so the proxy ejects it and retries elsewhere.
    const deadPort = await freePort()
    const staticList = [...backends.map(b => b.port), deadPort].map(p => `http://127.0.0.1:${p}`).join(',')
    const proxy = await startProxy(t, ['--static', staticList, '--service', service])
    await eventually(() => proxy.ready(), { message: 'proxy ready' })
    const proxyTarget = new URL(proxy.adminUrl).host
    const upstream = (port: number): string => `127.0.0.1:${port}`

    // The shipped config, with this proxy as its only target and a 1 s rhythm.
    const config = parse(readFileSync(deploy('prometheus/prometheus.yml'), 'utf8')) as {
      global: Record<string, string>, rule_files: string[], scrape_configs: ScrapeConfig[]
    }
    config.global = { ...config.global, scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' }
    config.rule_files = [deploy('prometheus/rules/fleetgate.rules.yml')]
    const job = config.scrape_configs.find(c => c.job_name === 'fleetgate-proxy')
    if (!job) throw new Error('deploy/prometheus/prometheus.yml has no fleetgate-proxy job')
    job.static_configs = [{ targets: [proxyTarget] }]
    config.scrape_configs = [job]
    const prometheus = await startPrometheus(t, binary, config)
    const values = async (expr: string): Promise<PromSample[]> => await prometheus.query(expr)
    const scalar = async (expr: string): Promise<number | undefined> => {
      const result = await values(expr)
      return result.length === 1 ? Number(result[0]!.value[1]) : undefined
    }

    // Scraped at least once before any traffic: the dead instance's ejection counter is seen at 0 first.
    await eventually(async () => await scalar(`fleetgate_ejections_total{upstream="${upstream(deadPort)}"}`) === 0, {
      timeoutMs: 20_000, message: () => `Prometheus scraped the proxy (log:\n${prometheus.logTail()})`,
    })

    const N = 150
    const plan = (i: number): { method: string, path: string } => ({
      method: i % 3 === 2 ? 'POST' : 'GET',
      path: i % 6 === 0 ? '/code/500' : i % 5 === 0 ? '/code/404' : `/page/${i}`,
    })
    // In two halves with a scrape between, so every series grows across scrapes and rate() sees it.
    for (const [from, to] of [[0, N / 2], [N / 2, N]] as const) {
      for (let i = from; i < to; i++) {
        const { method, path } = plan(i)
        const res = await request(`${proxy.url}${path}`, { method, body: method === 'POST' ? 'q=1' : null })
        await res.body.dump()
      }
      await eventually(async () => await scalar('sum(fleetgate_requests_total{job="fleetgate-proxy"})') === to, {
        timeoutMs: 20_000, message: `Prometheus has ${to} requests`,
      })
    }

    const byKey = await values('sum by (upstream, method, code) (fleetgate_requests_total{job="fleetgate-proxy"})')
    const got = Object.fromEntries(byKey.map(s => [`${s.metric.upstream} ${s.metric.method} ${s.metric.code}`, Number(s.value[1])]))
    const want: Record<string, number> = {}
    for (const [i, backend] of backends.entries()) {
      for (const [key, count] of answered[i]!) want[`${upstream(backend.port)} ${key}`] = count
    }
    t.same(got, want, 'requests_total by upstream, method and code matches what each backend answered')
    t.ok(Object.keys(want).some(k => k.endsWith(' 500')) && Object.keys(want).some(k => k.endsWith(' 404')), 'the traffic had 500s and 404s')

    const series = await values('fleetgate_requests_total')
    t.ok(series.length > 0 && series.every(s => s.metric.instance === proxyTarget && s.metric.job === 'fleetgate-proxy' && s.metric.service === service),
      'instance is the scraped proxy, job and service are set')
    t.same(await values('{__name__=~"fleetgate_.+", exported_instance!=""}'), [], 'no exported_instance label is left')
    t.equal(await scalar('sum(fleetgate_request_duration_seconds_count)'), N, 'one duration observation per request')
    t.equal(await scalar(`sum(fleetgate_instances{service="${service}"})`), 3, 'fleetgate_instances counts the 3 instances')
    const up = await values('fleetgate_instance_state{state="up"} == 1')
    for (const b of backends) t.ok(up.some(s => s.metric.upstream === upstream(b.port)), `instance_state says ${b.name} is up`)
    t.equal(await scalar(`fleetgate_discovery_stale{service="${service}",source="static"}`), 0, 'discovery is not stale')
    t.ok((await scalar(`fleetgate_ejections_total{upstream="${upstream(deadPort)}"}`) ?? 0) >= 1, 'the dead instance was ejected')
    t.ok((await scalar('fleetgate_retries_total{reason="connect_failure"}') ?? 0) >= 1, 'and its requests retried elsewhere')
    t.ok((await scalar('sum(fleetgate_upstream_connect_failures_total)') ?? 0) >= 1, 'connect failures counted')
    t.ok(await scalar('nodejs_heap_size_used_bytes') !== undefined && await scalar('process_cpu_seconds_total') !== undefined,
      'default process_ and nodejs_ metrics are scraped too')

    // Rules: all loaded and evaluating without error; the recording rules produce the service's series.
    const rules = await eventually(async () => {
      const data = await prometheus.api<{ groups: Array<{ rules: Array<{ name: string, health: string, lastError?: string, type: string }> }> }>('/api/v1/rules')
      const all = data.groups.flatMap(g => g.rules)
      return all.length > 0 && all.every(r => r.health === 'ok') ? all : undefined
    }, { timeoutMs: 20_000, message: 'every rule evaluated with health ok' }) ?? []
    t.same(rules.filter(r => r.type === 'alerting').map(r => r.name).sort(), [
      'FleetgateAgentDeregistered', 'FleetgateDiscoveryStale', 'FleetgateHigh5xxRatio', 'FleetgateInstanceEjected',
      'FleetgateInstanceFlapping', 'FleetgateNoLiveInstance', 'FleetgateTargetDown', 'FleetgateWorkerRestarted',
    ], 'every alert of deploy/prometheus/rules is loaded')
    await eventually(async () => ((await scalar(`service:fleetgate_requests_5xx:ratio_rate5m{service="${service}"}`)) ?? 0) > 0, {
      timeoutMs: 20_000, message: 'the 5xx ratio recording rule has a value',
    })

    // The ejection alert fires for the instance that refused connects, and only for it.
    const firing = await eventually(async () => {
      const data = await prometheus.api<{ alerts: Array<{ labels: Record<string, string>, state: string }> }>('/api/v1/alerts')
      const ejected = data.alerts.filter(a => a.labels.alertname === 'FleetgateInstanceEjected' && a.state === 'firing')
      return ejected.length > 0 ? ejected : undefined
    }, { timeoutMs: 20_000, message: 'FleetgateInstanceEjected firing' }) ?? []
    t.same(firing.map(a => a.labels.upstream), [upstream(deadPort)], 'FleetgateInstanceEjected fires for the dead instance')

    // Every query of the Grafana dashboard evaluates; those about traffic and discovery return data.
    const dashboard = JSON.parse(readFileSync(deploy('grafana/fleetgate-dashboard.json'), 'utf8')) as {
      panels: Array<{ title: string, targets?: Array<{ expr: string }> }>
    }
    const mayBeEmpty = /fleetgate_(agent_|no_live_instance_total|invalid_registrations_total|zookeeper_session_expirations_total)/
    let queries = 0
    for (const panel of dashboard.panels) {
      for (const target of panel.targets ?? []) {
        const expr = target.expr.replaceAll('$service', service).replaceAll('$proxy', '.*').replaceAll('$__rate_interval', '1m')
        queries++
        let result: PromSample[]
        try {
          result = await values(expr)
        } catch (err) {
          t.fail(`dashboard panel "${panel.title}": ${(err as Error).message}`)
          continue
        }
        if (!mayBeEmpty.test(expr)) t.ok(result.length > 0, `dashboard panel "${panel.title}" has data: ${expr}`)
      }
    }
    t.ok(queries >= 25, `${queries} dashboard queries evaluated`)
  })
}

/** The backend answers the code in the path (`/code/500`), else 200, and tallies `METHOD CODE`. */
function tallyCodes (backend: Backend): Map<string, number> {
  const answered = new Map<string, number>()
  backend.handle((req: IncomingMessage, res: ServerResponse) => {
    const code = Number(/^\/code\/(\d{3})/.exec(req.url ?? '')?.[1] ?? 200)
    req.resume()
    req.on('end', () => {
      const key = `${req.method} ${code}`
      answered.set(key, (answered.get(key) ?? 0) + 1)
      res.statusCode = code
      res.end()
    })
  })
  return answered
}
