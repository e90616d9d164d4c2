import t from 'tap'
import { defaultInstanceId, parseLabels } from '../../src/agent/identity.ts'
import { resolveAgentSettings } from '../../src/agent/main.ts'
import { AgentConfigSchema, loadConfig } from '../../src/config.ts'
import { isFleetgateError } from '../../src/errors.ts'

const ids: Array<[string, string]> = [
  ['10.1.2.3:8088', '10.1.2.3-8088'],
  ['superset-1.internal:8088', 'superset-1.internal-8088'],
  ['Web-1.Example:80', 'web-1.example-80'],
  ['[::1]:8088', '__1-8088'],
  ['[fe80::1:2]:9000', 'fe80__1_2-9000'],
]

for (const [advertise, id] of ids) {
  t.test(`default id of ${advertise} is ${id}`, async t => {
    t.equal(defaultInstanceId(advertise), id)
    t.match(id, /^[A-Za-z0-9_.-]+$/, 'fits a znode name and the --id pattern')
  })
}

t.test('the default id is stable: a restarted instance takes its old place', async t => {
  t.equal(defaultInstanceId('10.0.0.7:8088'), defaultInstanceId('10.0.0.7:8088'))
  t.not(defaultInstanceId('10.0.0.7:8088'), defaultInstanceId('10.0.0.7:8089'))
})

const labels: Array<{ text: string | undefined, expected: Record<string, string> | RegExp }> = [
  { text: undefined, expected: {} },
  { text: '', expected: {} },
  { text: 'zone=a', expected: { zone: 'a' } },
  { text: 'zone=a,tier=web,version=4.1.2', expected: { zone: 'a', tier: 'web', version: '4.1.2' } },
  { text: 'empty=', expected: { empty: '' } },
  { text: 'query=a=b', expected: { query: 'a=b' } },
  { text: '__proto__=x', expected: { ['__proto__']: 'x' } },
  { text: 'zone=a,zone=b', expected: /key "zone" is given twice/ },
  { text: 'no-equals', expected: /bad pair "no-equals"; expected KEY=VALUE/ },
  { text: 'bad key=1', expected: /bad pair "bad key=1"/ },
]

for (const c of labels) {
  t.test(`labels ${JSON.stringify(c.text)}`, async t => {
    if (c.expected instanceof RegExp) {
      const err = (() => { try { parseLabels(c.text); return undefined } catch (e) { return e } })()
      t.ok(isFleetgateError(err, 'FLEETGATE_ERR_CONFIG_INVALID'), String(err))
      t.match((err as Error).message, c.expected)
      return
    }
    const parsed = parseLabels(c.text)
    t.same(Object.entries(parsed), Object.entries(c.expected))
    t.equal(Object.getPrototypeOf(parsed), Object.prototype, 'a label never replaces the prototype')
    t.ok(Object.isFrozen(parsed))
  })
}

const resolve = (argv: string[]) => resolveAgentSettings(loadConfig(AgentConfigSchema, { argv, env: {} }).config)

t.test('settings: defaults, the derived id and the parsed labels', async t => {
  const settings = resolve(['--zookeeper', '127.0.0.1:2181', '--advertise', '10.0.0.7:8088', '--labels', 'zone=a'])
  t.match(settings, { zookeeper: '127.0.0.1:2181', id: '10.0.0.7-8088', host: '10.0.0.7', port: 8088, labels: { zone: 'a' } })
  t.equal(settings.target.href, 'http://127.0.0.1:8088/')
})

t.test('settings: --id wins over the derived one', async t => {
  t.equal(resolve(['--zookeeper', 'zk:2181', '--advertise', '10.0.0.7:8088', '--id', 'superset-a']).id, 'superset-a')
})

t.test('settings: bad starts are configuration errors naming the flag', async t => {
  const cases: Array<[string[], RegExp]> = [
    [['--advertise', '10.0.0.7:8088'], /--zookeeper is required/],
    [['--zookeeper', 'zk:2181'], /--advertise is required/],
    [['--zookeeper', 'zk:2181', '--advertise', 'nope'], /--advertise = "nope": expected HOST:PORT/],
    [['--zookeeper', 'zk:2181', '--advertise', '10.0.0.7:0'], /--advertise = "10.0.0.7:0": expected HOST:PORT with a port from 1 to 65535/],
    [['--zookeeper', 'zk:2181', '--advertise', '10.0.0.7:8088', '--discovery', 'static'], /--discovery = "static": expected "zookeeper" or "consul" \(the agent registers/],
    [['--zookeeper', 'zk:2181', '--advertise', '10.0.0.7:8088', '--rise', '0'], /--rise = 0: expected an integer from 1 to 100/],
    [['--zookeeper', 'zk:2181', '--advertise', '10.0.0.7:8088', '--health-check', 'icmp'], /--health-check = "icmp": expected "http" or "tcp"/],
    [['--zookeeper', 'zk:2181', '--advertise', '10.0.0.7:8088', '--target', 'ftp://x'], /--target = "ftp:\/\/x": expected http:\/\/HOST\[:PORT\] or https:\/\/HOST\[:PORT\]/],
  ]
  for (const [argv, message] of cases) {
    const err = (() => { try { resolve(argv); return undefined } catch (e) { return e } })()
    t.ok(isFleetgateError(err, 'FLEETGATE_ERR_CONFIG_INVALID'), `${argv.join(' ')}: ${String(err)}`)
    t.match((err as Error).message, message)
  }
})
