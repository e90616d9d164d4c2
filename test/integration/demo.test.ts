// The one-command demo fleet: `node dist/demo.js` starts ZooKeeper, three agent-wrapped backends and the
// proxy; all three instances answer through it; SIGINT (Ctrl-C) stops every process it started.

import { spawn } from 'node:child_process'
import { readdir, readFile, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { eventually } from '../helpers/eventually.ts'
import { get } from '../helpers/fleet.ts'
import { isAlive, isRunning, killIfSame, startTimeOf, track } from '../helpers/reaper.ts'

const DEMO = fileURLToPath(new URL('../../dist/demo.js', import.meta.url))


t.test('npm run demo: three instances answer through the proxy, and Ctrl-C stops everything', async t => {
  const demo = spawn(process.execPath, [DEMO, '--port', '0'], { stdio: ['ignore', 'pipe', 'pipe'] })
  track(demo)
  let output = ''
  demo.stdout!.setEncoding('utf8').on('data', (s: string) => { output += s })
  demo.stderr!.setEncoding('utf8').on('data', (s: string) => { output += s })
  const exited = new Promise<number | null>(resolve => demo.once('exit', code => resolve(code)))
  const pids: number[] = []
  /** Each one's start time, taken when it was reported: the teardown kills only those very processes. */
  const started = new Map<number, string | undefined>()
  t.teardown(async () => {
    // The demo keeps its logs for the user; a test run need not.
    const logs = output.match(/(\/\S*?fleetgate-demo-[^/\s]+)/)?.[1]
    if (!logs) return
    if (!t.passing()) {
      // What each process the demo started said, for the failure at hand.
      for (const name of await readdir(logs).catch(() => [])) {
        const text = await readFile(join(logs, name), 'utf8').catch(() => '')
        t.comment(`${name} (last 3000 characters):\n${text.slice(-3000)}`)
      }
    }
    await rm(logs, { recursive: true, force: true })
  })
  t.teardown(async () => {
    if (isRunning(demo)) {
      demo.kill('SIGINT')
      await Promise.race([exited, new Promise(resolve => setTimeout(resolve, 20_000))])
    }
    // Only if the demo failed to stop them: the processes it reported starting.
    for (const [pid, startTime] of started) killIfSame(pid, startTime)
  })

  // A demo that gives up (no ZooKeeper, a fleet that does not come up) exits with its reason: stop
  // waiting then, and fail showing all it printed (its stdio closed, so nothing is missing).
  let closed = false
  demo.once('close', () => { closed = true })
  const printed = await eventually(() => output.match(/proxy +(http:\/\/127\.0\.0\.1:\d+)\//)?.[1] ?? (closed ? { gaveUp: demo.exitCode ?? demo.signalCode } : undefined),
    { timeoutMs: 60_000, message: () => `proxy URL printed; output:\n${output}` })
  if (typeof printed !== 'string') throw new Error(`the demo exited (${printed?.gaveUp}) before the fleet was up; it printed:\n${output}`)
  const proxyUrl = printed
  const pidLine = (await eventually(() => output.match(/pids: (.*)/)?.[1], { message: 'pids printed' }))!
  pids.push(...[...pidLine.matchAll(/=(\d+)/g)].map(m => Number(m[1])))
  for (const pid of pids) started.set(pid, startTimeOf(pid))
  t.equal(pids.length, 5, `zookeeper, proxy and three agents: ${pidLine}`)
  t.match(output, /Add an instance:\n +node \S+cli\.js agent .* -- node \S+backend\.js --name d/)
  t.match(output, /kill -TERM \d+/)

  const seen = new Set<string>()
  await eventually(async () => {
    const res = await get(proxyUrl)
    if (res.status === 200) seen.add(JSON.parse(res.body).instance)
    return seen.size === 3
  }, { timeoutMs: 10_000, message: () => `all three instances answer; seen ${[...seen]}` })
  t.same([...seen].sort(), ['a', 'b', 'c'])
  const backendPorts = [...output.matchAll(/\/status +http:\/\/127\.0\.0\.1:(\d+)\//g)].map(m => Number(m[1]))
  t.equal(backendPorts.length, 3)

  demo.kill('SIGINT')
  t.equal(await exited, 0, 'the demo exits 0')
  t.match(output, /stopping: agents drain first/)
  await eventually(() => pids.every(pid => !isAlive(pid)), { timeoutMs: 5000, message: 'every process the demo started is gone' })
  for (const port of backendPorts) {
    await eventually(async () => {
      try {
        await get(`http://127.0.0.1:${port}`)
        return false
      } catch {
        return true
      }
    }, { timeoutMs: 5000, message: `backend on ${port} stopped` })
  }
  await t.rejects(get(proxyUrl), 'the proxy is gone')
})
