// The ZooKeeper health probes of the deploy files (the Kubernetes readiness probe and Compose's
// healthcheck), run with bash against a real server: they pass while it serves, and fail while it is
// hung or down.

import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import t from 'tap'
import { parse, parseAllDocuments } from 'yaml'
import { startZooKeeper } from '../helpers/zookeeper.ts'

const read = (file: string): string => readFileSync(new URL(`../../${file}`, import.meta.url), 'utf8')

/** How long a probe may take here; Kubernetes and Compose give it 5 s and kill it then. */
const PROBE_TIMEOUT_MS = 3_000

interface ProbeRun { readonly code: number | null, readonly timedOut: boolean, readonly ms: number }

/** Runs `argv` (bash -c SCRIPT) and kills it after PROBE_TIMEOUT_MS, as the orchestrator would. */
function runProbe (argv: readonly string[]): Promise<ProbeRun> {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0]!, argv.slice(1), { stdio: 'ignore' })
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      child.kill('SIGKILL')
    }, PROBE_TIMEOUT_MS)
    child.once('error', reject)
    child.once('exit', code => {
      clearTimeout(timer)
      resolve({ code, timedOut, ms: performance.now() - started })
    })
  })
}

const statefulSet = parseAllDocuments(read('deploy/kubernetes/zookeeper.yaml'))
  .map(doc => doc.toJS() as { kind?: string, metadata?: { name?: string }, spec?: any })
  .find(doc => doc.kind === 'StatefulSet' && doc.metadata?.name === 'zookeeper')
const kubernetesProbe = (statefulSet?.spec.template.spec.containers as Array<{ name: string, readinessProbe?: { exec?: { command?: string[] } } }>)
  .find(c => c.name === 'zookeeper')?.readinessProbe?.exec?.command
const composeCheck = (parse(read('docker-compose.yml')) as { services: Record<string, { healthcheck?: { test?: string[] } }> })
  .services.zookeeper?.healthcheck?.test

t.test('the Kubernetes readiness probe and the Compose healthcheck ask ZooKeeper the same way', async t => {
  t.equal(kubernetesProbe?.[0], 'bash', 'Kubernetes runs bash')
  t.same(composeCheck?.slice(0, 1), ['CMD'], 'Compose runs the command itself, not through a shell')
  t.same(composeCheck?.slice(1), kubernetesProbe, 'the same command')
  t.match(kubernetesProbe?.[2], /\/dev\/tcp\/127\.0\.0\.1\/2181\b/, 'on the client port, 2181, which both deployments use')
})

t.test('the probe against a real ZooKeeper', async t => {
  const zk = await startZooKeeper()
  t.teardown(() => zk.close())
  const [shell, flag, script] = kubernetesProbe as [string, string, string]
  const probe = [shell, flag, script.replaceAll('/2181', `/${zk.port}`)]

  const serving = await runProbe(probe)
  t.equal(serving.code, 0, 'passes while the server serves')
  t.notOk(serving.timedOut, 'and answers at once')

  zk.pause()
  try {
    const hung = await runProbe(probe)
    t.ok(hung.timedOut || hung.code !== 0, `fails while the server is hung (SIGSTOPped): exit ${hung.code}, ${hung.timedOut ? 'killed at the timeout' : 'ended'}`)
  } finally {
    zk.resume()
  }

  await zk.stop()
  const down = await runProbe(probe)
  t.not(down.code, 0, 'fails while nothing listens')
  t.notOk(down.timedOut, 'and at once: the connection is refused')

  await zk.start()
  t.equal((await runProbe(probe)).code, 0, 'passes again once the server is back')
})
