import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { AgentConfigSchema, loadConfig, ProxyConfigSchema, splitHostPort } from '../../src/config.ts'
import { isFleetgateError } from '../../src/errors.ts'
import { parseStaticInstances } from '../../src/membership/static.ts'

const load = (argv: string[], env: Record<string, string> = {}) => loadConfig(ProxyConfigSchema, { argv, env })

function throwsConfig (t: Test, fn: () => unknown, code: string, ...fragments: RegExp[]): void {
  try {
    fn()
    t.fail('expected an error')
  } catch (err) {
    t.ok(isFleetgateError(err), String(err))
    if (isFleetgateError(err)) {
      t.equal(err.code, code)
      for (const f of fragments) t.match(err.message, f)
    }
  }
}

t.test('defaults suit Superset', async t => {
  const { config } = load([])
  t.match(config, {
    service: 'superset', basePath: '/services', listen: '0.0.0.0:8080', adminListen: '127.0.0.1:9901',
    connectTimeoutMs: 5000, headersTimeoutMs: 120000, idleTimeoutMs: 300000, resyncIntervalMs: 30000, tries: 3,
  })
  t.ok(Object.isFrozen(config))
})

t.test('flags beat environment beat file', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-config-'))
  const file = join(dir, 'c.yaml')
  writeFileSync(file, 'service: from-file\nlisten: 127.0.0.1:1\ntries: 2\n')
  const { config } = load(['--config', file, '--listen', '127.0.0.1:3'], { FLEETGATE_LISTEN: '127.0.0.1:2', FLEETGATE_SERVICE: 'from-env' })
  t.equal(config.listen, '127.0.0.1:3')
  t.equal(config.service, 'from-env')
  t.equal(config.tries, 2)
})

t.test('numbers are coerced from flags and env', async t => {
  const { config } = load(['--connect-timeout-ms', '250'], { FLEETGATE_TRIES: '5' })
  t.equal(config.connectTimeoutMs, 250)
  t.equal(config.tries, 5)
})

t.test('bad values name the key, the value and what was expected', async t => {
  throwsConfig(t, () => load(['--listen', 'nonsense']), 'FLEETGATE_ERR_CONFIG_INVALID', /--listen = "nonsense": expected HOST:PORT/)
  throwsConfig(t, () => load([], { FLEETGATE_TRIES: 'lots' }), 'FLEETGATE_ERR_CONFIG_INVALID', /FLEETGATE_TRIES = "lots": expected an integer/)
  throwsConfig(t, () => load(['--log-level', 'loud']), 'FLEETGATE_ERR_CONFIG_INVALID', /--log-level = "loud": expected fatal, error/)
  throwsConfig(t, () => load(['--connect-timeout-ms=-1']), 'FLEETGATE_ERR_CONFIG_INVALID', /--connect-timeout-ms/)
})

t.test('unknown key in the config file is rejected with the file named', async t => {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-config-'))
  const file = join(dir, 'c.json')
  writeFileSync(file, JSON.stringify({ service: 'x', lisen: '0.0.0.0:1' }))
  throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_INVALID', /unknown key "lisen" in config file/, /known keys: /)
})

t.test('unreadable or malformed files are clear errors', async t => {
  throwsConfig(t, () => load(['--config', '/nonexistent/fleetgate.yaml']), 'FLEETGATE_ERR_CONFIG_FILE', /nonexistent/)
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-config-'))
  const file = join(dir, 'c.yaml')
  writeFileSync(file, '- a list\n- not a mapping\n')
  throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_FILE', /mapping/)
})

t.test('unknown flags and stray arguments are usage errors', async t => {
  throwsConfig(t, () => load(['--bogus', '1']), 'FLEETGATE_ERR_CLI_USAGE', /bogus/)
  throwsConfig(t, () => load(['stray']), 'FLEETGATE_ERR_CLI_USAGE', /stray/)
})

t.test('agent: arguments after -- are the wrapped command', async t => {
  const { config, command } = loadConfig(AgentConfigSchema, { argv: ['--advertise', '127.0.0.1:8088', '--', 'gunicorn', '--bind', ':8088'], env: {} })
  t.equal(config.advertise, '127.0.0.1:8088')
  t.same(command, ['gunicorn', '--bind', ':8088'])
  throwsConfig(t, () => loadConfig(AgentConfigSchema, { argv: [], env: {} }), 'FLEETGATE_ERR_CONFIG_INVALID', /advertise is required/)
})

t.test('--consul-wait-ms stays within the 10 min Consul holds a query', async t => {
  t.equal(load(['--discovery', 'consul', '--consul-wait-ms', '600000']).config.consulWaitMs, 600_000)
  throwsConfig(t, () => load(['--discovery', 'consul', '--consul-wait-ms', '600001']), 'FLEETGATE_ERR_CONFIG_INVALID', /consul-wait-ms.*600000/)
})

t.test('agent: an id that is not a znode name is refused', async t => {
  const agent = (id: string) => loadConfig(AgentConfigSchema, { argv: ['--advertise', '127.0.0.1:8088', '--id', id], env: {} }).config
  t.equal(agent('web-1.prod:8088').id, 'web-1.prod:8088')
  t.equal(agent('...').id, '...', 'only "." and ".." are special')
  for (const id of ['.', '..', 'a/b', '']) throwsConfig(t, () => agent(id), 'FLEETGATE_ERR_CONFIG_INVALID', /id/)
})

t.test('splitHostPort handles IPv6 and rejects ports above 65535', async t => {
  t.same(splitHostPort('[::1]:8080'), { host: '::1', port: 8080 })
  t.same(splitHostPort('0.0.0.0:0'), { host: '0.0.0.0', port: 0 })
  t.throws(() => splitHostPort('127.0.0.1:99999'))
})

t.test('static instance lists', async t => {
  const list = parseStaticInstances('http://127.0.0.1:1, 127.0.0.1:2 ,http://[::1]:3')
  t.same(list.map(i => [i.host, i.port]), [['127.0.0.1', 1], ['127.0.0.1', 2], ['::1', 3]])
  throwsConfig(t, () => parseStaticInstances('http://a'), 'FLEETGATE_ERR_CONFIG_INVALID', /host:port/)
  throwsConfig(t, () => parseStaticInstances('https://a:1'), 'FLEETGATE_ERR_CONFIG_INVALID')
  throwsConfig(t, () => parseStaticInstances('a:1,a:1'), 'FLEETGATE_ERR_CONFIG_INVALID', /twice/)
})
