// deploy/kubernetes: every object validates against the Kubernetes API schema (kubernetes-models, the
// OpenAPI schemas compiled for ajv; the Prometheus Operator's CRD schemas for monitoring/), fleetgate's own
// config loader accepts the ConfigMaps' files, and what the objects refer to one another by agrees
// (selectors, named ports, probes on the admin port, the advertised pod address).
// Like kubeconform without -strict: a field the schema does not know is not an error, so the fields that
// matter are checked by name below.

import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import * as monitoring from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1'
import * as apps from 'kubernetes-models/apps/v1'
import * as policy from 'kubernetes-models/policy/v1'
import * as core from 'kubernetes-models/v1'
import t from 'tap'
import { parseAllDocuments } from 'yaml'
import { AgentConfigSchema, loadConfig, ProxyConfigSchema } from '../../src/config.ts'

const DIR = fileURLToPath(new URL('../../deploy/kubernetes/', import.meta.url))

interface Manifest {
  apiVersion: string
  kind: string
  metadata: { name: string, labels?: Record<string, string>, annotations?: Record<string, string> }
  spec?: any
  data?: Record<string, string>
}

type Validatable = new (data: any) => { validate(): void }
const MODELS: Record<string, Record<string, unknown>> = {
  v1: core,
  'apps/v1': apps,
  'policy/v1': policy,
  'monitoring.coreos.com/v1': monitoring,
}

function yamlFiles (dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap(entry => {
    const full = path.join(dir, entry.name)
    if (entry.isDirectory()) return yamlFiles(full)
    return /\.ya?ml$/.test(entry.name) && entry.name !== 'kustomization.yaml' ? [full] : []
  }).sort()
}

const files = yamlFiles(DIR)
const manifests: Array<Manifest & { file: string }> = []
for (const file of files) {
  for (const doc of parseAllDocuments(readFileSync(file, 'utf8'))) {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0]?.message}`)
    const value = doc.toJS() as Manifest | null
    if (value) manifests.push({ ...value, file: path.relative(DIR, file) })
  }
}
const find = (kind: string, name: string): Manifest => {
  const found = manifests.find(m => m.kind === kind && m.metadata.name === name)
  if (!found) throw new Error(`no ${kind} ${name} in deploy/kubernetes`)
  return found
}
const container = (deployment: Manifest, name: string): any =>
  deployment.spec.template.spec.containers.find((c: { name: string }) => c.name === name)

t.test('every object validates against its Kubernetes (or Prometheus Operator) schema', async t => {
  t.ok(manifests.length >= 10, `${manifests.length} objects in ${files.length} files`)
  for (const manifest of manifests) {
    const { file, ...object } = manifest
    const Model = MODELS[object.apiVersion]?.[object.kind] as Validatable | undefined
    if (!Model) {
      t.fail(`${file}: no schema for ${object.apiVersion} ${object.kind}`)
      continue
    }
    t.doesNotThrow(() => new Model(object).validate(), `${file}: ${object.kind} ${object.metadata.name}`)
  }
})

t.test('the schema check catches a wrong type (so the check above is not vacuous)', async t => {
  const deployment = structuredClone(find('Deployment', 'fleetgate-proxy'))
  deployment.spec.replicas = 'two'
  t.throws(() => new apps.Deployment(deployment as never).validate(), /replicas must be integer/)
})

t.test('kustomization.yaml lists every manifest outside monitoring/', async t => {
  const kustomization = parseAllDocuments(readFileSync(path.join(DIR, 'kustomization.yaml'), 'utf8'))[0]?.toJS() as { resources: string[], images: Array<{ name: string }> }
  const expected = files.map(f => path.relative(DIR, f)).filter(f => !f.startsWith('monitoring/')).sort()
  t.same([...kustomization.resources].sort(), expected)
  const images = new Set(manifests.flatMap(m => m.spec?.template?.spec?.containers?.map((c: { image: string }) => c.image) ?? []))
  t.ok(images.has('fleetgate') && kustomization.images.some(i => i.name === 'fleetgate'), 'the fleetgate image is set in one place (images:)')
})

t.test('the ConfigMaps\' files are valid fleetgate configuration', async t => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-k8s-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const proxyFile = path.join(dir, 'proxy.yaml')
  writeFileSync(proxyFile, find('ConfigMap', 'fleetgate-proxy').data!['proxy.yaml']!)
  const proxy = loadConfig(ProxyConfigSchema, { argv: ['--config', proxyFile], env: {} }).config
  t.equal(proxy.adminListen, '0.0.0.0:9901', 'the proxy\'s admin listener is reachable by the kubelet')

  const agentFile = path.join(dir, 'agent.yaml')
  writeFileSync(agentFile, find('ConfigMap', 'fleetgate-agent').data!['agent.yaml']!)
  const agent = loadConfig(AgentConfigSchema, { argv: ['--config', agentFile], env: { FLEETGATE_ADVERTISE: '10.0.0.7:8088' } }).config
  t.equal(agent.adminListen, '0.0.0.0:9902')
  t.equal(agent.zookeeper, proxy.zookeeper, 'agents and proxies use the same ZooKeeper')
  t.equal(agent.service, proxy.service, 'and the same service')
  t.equal(agent.target, 'http://127.0.0.1:8088', 'the agent checks gunicorn in its own pod')

  const zookeeper = find('StatefulSet', 'zookeeper')
  const hosts = Array.from({ length: zookeeper.spec.replicas as number }, (_, i) => `zookeeper-${i}.${zookeeper.spec.serviceName}:2181`)
  t.equal(proxy.zookeeper, hosts.join(','), 'the connect string names every ZooKeeper pod')
})

t.test('the proxy: 2 replicas, probes on the admin port, a Service and a PDB that select it', async t => {
  const deployment = find('Deployment', 'fleetgate-proxy')
  t.equal(deployment.spec.replicas, 2)
  const proxy = container(deployment, 'proxy')
  t.same(proxy.args, ['proxy', '--config', '/etc/fleetgate/proxy.yaml'])
  const admin = proxy.ports.find((p: { name: string }) => p.name === 'admin')
  t.equal(admin?.containerPort, 9901, 'admin port 9901')
  t.match(proxy.readinessProbe, { httpGet: { path: '/readyz', port: 'admin' } }, 'readiness: /readyz on the admin port')
  t.match(proxy.livenessProbe, { httpGet: { path: '/healthz', port: 'admin' } }, 'liveness: /healthz on the admin port')
  const labels = deployment.spec.template.metadata.labels as Record<string, string>
  t.same(deployment.spec.selector.matchLabels, labels)
  const selects = (selector: Record<string, string>): boolean => Object.entries(selector).every(([k, v]) => labels[k] === v)
  t.ok(selects(find('Service', 'fleetgate').spec.selector), 'the Service selects the proxy pods')
  // The users' Service is the one README says to make a LoadBalancer: it would publish every port it has.
  t.same(find('Service', 'fleetgate').spec.ports.map((p: { targetPort: string }) => p.targetPort), ['http'], 'the users\' Service carries the proxy port alone, not the admin port')
  const adminService = find('Service', 'fleetgate-admin')
  t.ok(selects(adminService.spec.selector), 'the admin Service selects the proxy pods')
  t.same(adminService.spec.ports.map((p: { name: string, targetPort: string }) => [p.name, p.targetPort]), [['admin', 'admin']], 'on their admin port')
  t.equal(adminService.spec.type ?? 'ClusterIP', 'ClusterIP', 'inside the cluster only')
  const monitored = find('ServiceMonitor', 'fleetgate-proxy').spec.selector.matchLabels as Record<string, string>
  const adminLabels = adminService.metadata.labels ?? {}
  t.ok(Object.entries(monitored).every(([k, v]) => adminLabels[k] === v), 'the ServiceMonitor scrapes the admin Service')
  t.ok(selects(find('PodDisruptionBudget', 'fleetgate-proxy').spec.selector.matchLabels), 'the PDB selects them')
  t.equal(deployment.spec.template.metadata.annotations['prometheus.io/port'], '9901', 'scrape annotation on the admin port')
  t.ok(deployment.spec.template.spec.terminationGracePeriodSeconds * 1000 > 30_000 + 5000, 'the grace period covers preStop and the shutdown timeout')
})

t.test('Superset pods carry the agent as a sidecar that advertises the pod IP', async t => {
  const deployment = find('Deployment', 'superset')
  const agent = container(deployment, 'fleetgate-agent')
  const env = Object.fromEntries(agent.env.map((e: { name: string, value?: string, valueFrom?: unknown }) => [e.name, e.value ?? e.valueFrom]))
  t.same(env.POD_IP, { fieldRef: { fieldPath: 'status.podIP' } }, 'POD_IP from the downward API')
  t.equal(env.FLEETGATE_ADVERTISE, '$(POD_IP):8088', 'advertised as the pod\'s address')
  const names = agent.env.map((e: { name: string }) => e.name)
  t.ok(names.indexOf('POD_IP') < names.indexOf('FLEETGATE_ADVERTISE'), 'POD_IP is defined first, so $(POD_IP) expands')
  const superset = container(deployment, 'superset')
  t.equal(superset.command[0], 'gunicorn', 'gunicorn runs as the container\'s process, so SIGTERM reaches it')
  const preStop = Number(superset.lifecycle.preStop.exec.command[1])
  t.ok(preStop * 1000 > 10_000, `gunicorn keeps serving (${preStop} s) while the agent drains (10 s)`)
  t.equal(find('ConfigMap', 'superset-config').data!['superset_config.py'], readFileSync(new URL('../../deploy/superset/superset_config.py', import.meta.url), 'utf8'), 'superset_config.py is the one in deploy/superset')
})

t.test('the Prometheus Operator objects scrape the admin ports as deploy/prometheus does', async t => {
  const shipped = parseAllDocuments(readFileSync(new URL('../../deploy/prometheus/prometheus.yml', import.meta.url), 'utf8'))[0]?.toJS() as {
    scrape_configs: Array<{ job_name: string, metric_relabel_configs: Array<Record<string, unknown>> }>
  }
  const agentPort = container(find('Deployment', 'superset'), 'fleetgate-agent').ports[0].name
  const endpoints = [
    { job: 'fleetgate-proxy', endpoint: find('ServiceMonitor', 'fleetgate-proxy').spec.endpoints[0], port: 'admin' },
    { job: 'fleetgate-agent', endpoint: find('PodMonitor', 'fleetgate-agent').spec.podMetricsEndpoints[0], port: agentPort },
  ]
  for (const { job, endpoint, port } of endpoints) {
    t.equal(endpoint.port, port, `${job}: the admin port (${port})`)
    t.match(endpoint.relabelings, [{ targetLabel: 'job', replacement: job }], `${job}: the job name the alert rules use`)
    const twin = shipped.scrape_configs.find(c => c.job_name === job)!
    const camel = twin.metric_relabel_configs.map(r => Object.fromEntries(Object.entries(r).map(([k, v]) => [k.replace(/_(\w)/g, (_, c: string) => c.toUpperCase()), v])))
    // A ServiceMonitor's targets carry the Operator's own `service` label (the Kubernetes Service), which
    // pushes fleetgate's aside: it is put back, and the renamed copy dropped with exported_instance.
    const expected = job !== 'fleetgate-proxy' ? camel : [
      camel[0],
      { sourceLabels: ['exported_service'], regex: '(.+)', targetLabel: 'service' },
      { action: 'labeldrop', regex: 'exported_(instance|service)' },
    ]
    t.same(camel.slice(1), [{ action: 'labeldrop', regex: 'exported_instance' }], `${job}: deploy/prometheus drops the renamed label`)
    t.same(endpoint.metricRelabelings, expected, `${job}: the same upstream relabelling${job === 'fleetgate-proxy' ? ', and fleetgate\'s service label back' : ''}`)
  }
})

t.test('ZooKeeper keeps its snapshots and its transaction log on the persistent volume, and purges them', async t => {
  const statefulSet = find('StatefulSet', 'zookeeper')
  const zookeeper = container(statefulSet, 'zookeeper')
  const env = Object.fromEntries((zookeeper.env as Array<{ name: string, value?: string }>).map(e => [e.name, e.value]))
  const claims = new Set((statefulSet.spec.volumeClaimTemplates as Array<{ metadata: { name: string } }>).map(c => c.metadata.name))
  const mounts = zookeeper.volumeMounts as Array<{ name: string, mountPath: string, subPath?: string }>
  // The official image's directories, unless the manifest moves them: zoo.cfg's dataDir and dataLogDir.
  for (const [variable, dir] of [['ZOO_DATA_DIR', env.ZOO_DATA_DIR ?? '/data'], ['ZOO_DATA_LOG_DIR', env.ZOO_DATA_LOG_DIR ?? '/datalog']] as const) {
    const mount = mounts.find(m => dir === m.mountPath || dir.startsWith(`${m.mountPath}/`))
    t.ok(mount !== undefined && claims.has(mount.name), `${variable} (${dir}) is on a volume claim, not in the container's own layer`)
  }
  t.ok(Number(env.ZOO_AUTOPURGE_PURGEINTERVAL) > 0, 'old snapshots and logs are purged (the image\'s default, 0, never does)')
})

t.test('ZooKeeper\'s heap and probe fit its memory limit', async t => {
  const zookeeper = container(find('StatefulSet', 'zookeeper'), 'zookeeper')
  const env = Object.fromEntries((zookeeper.env as Array<{ name: string, value?: string }>).map(e => [e.name, e.value]))
  const limitMi = /^(\d+)Gi$/.test(zookeeper.resources.limits.memory) ? Number(zookeeper.resources.limits.memory.slice(0, -2)) * 1024 : Number.parseInt(zookeeper.resources.limits.memory)
  // zkEnv.sh gives the server -Xmx${ZK_SERVER_HEAP:-1000}m; the JVM needs room beyond its heap.
  const heapMb = Number(env.ZK_SERVER_HEAP ?? 1000)
  t.ok(heapMb <= limitMi * 0.6, `a ${heapMb} MB heap leaves room under the ${limitMi} Mi limit for the JVM's own memory`)
  const probe = (zookeeper.readinessProbe.exec.command as string[]).join(' ')
  t.notMatch(probe, /zkServer\.sh|zkCli\.sh|java/, 'the readiness probe starts no JVM of its own every period')
  t.match(probe, /srvr/, 'it asks the server (srvr answers a Mode only while it serves)')
  t.ok(env.ZOO_4LW_COMMANDS_WHITELIST?.split(',').includes('srvr'), 'which the server allows')
})

t.test('the PrometheusRule holds the rules of deploy/prometheus, for a Prometheus Operator that loads no files', async t => {
  const rules = parseAllDocuments(readFileSync(new URL('../../deploy/prometheus/rules/fleetgate.rules.yml', import.meta.url), 'utf8'))[0]?.toJS() as { groups: unknown[] }
  const prometheusRule = find('PrometheusRule', 'fleetgate')
  t.same(prometheusRule.spec.groups, rules.groups, 'the same groups, rules, labels and annotations')
  t.same(prometheusRule.metadata.labels, find('ServiceMonitor', 'fleetgate-proxy').metadata.labels, 'picked up by the Prometheus that scrapes the monitors (the same release label)')
})
