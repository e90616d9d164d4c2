import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
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

/** A directory for config files, removed when the test ends. */
function tempDir (t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'fleetgate-config-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

t.test('flags beat environment beat file', async t => {
  const dir = tempDir(t)
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
  // A token read from a file with its newline: no header could carry it, so no request would ever go out.
  const consul = { FLEETGATE_DISCOVERY: 'consul' }
  // The message names the setting but never repeats the token: it goes to the logs.
  throwsConfig(t, () => load([], { ...consul, FLEETGATE_CONSUL_TOKEN: 'secret\n' }), 'FLEETGATE_ERR_CONFIG_INVALID', /^(?!.*secret).*FLEETGATE_CONSUL_TOKEN \(not shown, 7 characters\): expected a token of visible ASCII characters/s)
  throwsConfig(t, () => load(['--consul-token', 'two words'], consul), 'FLEETGATE_ERR_CONFIG_INVALID', /^(?!.*two words).*--consul-token \(not shown, 9 characters\)/s)
  t.equal(load([], { ...consul, FLEETGATE_CONSUL_TOKEN: 'b1gs33cr3t-4c5d-8e9f' }).config.consulToken, 'b1gs33cr3t-4c5d-8e9f', 'a token like Consul\'s passes')
})

t.test('numbers are whole and decimal: text JavaScript would also read as a number is refused', async t => {
  const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  for (const bad of ['0x3', '1e0', '+3', '3.0', ' 3', '3 ', '-1', '']) {
    throwsConfig(t, () => load([`--tries=${bad}`]), 'FLEETGATE_ERR_CONFIG_INVALID',
      new RegExp(escape(`--tries = ${JSON.stringify(bad)}: expected an integer from 1 to 10`)))
  }
  throwsConfig(t, () => load([], { FLEETGATE_CONNECT_TIMEOUT_MS: '5e3' }), 'FLEETGATE_ERR_CONFIG_INVALID', /FLEETGATE_CONNECT_TIMEOUT_MS = "5e3": expected/)
  const file = join(tempDir(t), 'c.yaml')
  writeFileSync(file, 'tries: "0x2"\nworkers: 2\n')
  throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_INVALID', /tries in config file .* = "0x2": expected an integer from 1 to 10/)
  // Unquoted too: YAML and JSON would read these as numbers.
  for (const bad of ['0x3', '1e0', '+3', '3.0', '0o3']) {
    writeFileSync(file, `tries: ${bad}\nworkers: 2\n`)
    throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_INVALID', new RegExp(escape(`tries in config file ${file} = "${bad}": expected an integer from 1 to 10`)))
  }
  const json = join(tempDir(t), 'c.json')
  writeFileSync(json, '{"tries": 3.0, "workers": 2}')
  throwsConfig(t, () => load(['--config', json]), 'FLEETGATE_ERR_CONFIG_INVALID', /tries in config file .* = "3\.0": expected an integer/)
  writeFileSync(file, 'tries: "2"\nworkers: 2\n')
  t.match(load(['--config', file]).config, { tries: 2, workers: 2 }, 'decimal text and numbers in a file are taken')
  writeFileSync(json, '{"tries": 2, "workers": 2}')
  t.match(load(['--config', json]).config, { tries: 2, workers: 2 }, 'in JSON too')
  t.match(load(['--tries', '03'], { FLEETGATE_WORKERS: '4' }).config, { tries: 3, workers: 4 }, 'decimal digits from flags and variables are taken')
})

t.test('unknown key in the config file is rejected with the file named', async t => {
  const dir = tempDir(t)
  const file = join(dir, 'c.json')
  writeFileSync(file, JSON.stringify({ service: 'x', lisen: '0.0.0.0:1' }))
  throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_INVALID', /unknown key "lisen" in config file/, /known keys: /)
})

t.test('unreadable or malformed files are clear errors', async t => {
  throwsConfig(t, () => load(['--config', '/nonexistent/fleetgate.yaml']), 'FLEETGATE_ERR_CONFIG_FILE', /nonexistent/)
  const dir = tempDir(t)
  const file = join(dir, 'c.yaml')
  writeFileSync(file, '- a list\n- not a mapping\n')
  throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_FILE', /mapping/)
})

t.test('the config file\'s errors name --config or FLEETGATE_CONFIG; an empty --config is an error', async t => {
  throwsConfig(t, () => load(['--config', '/nonexistent/fleetgate.yaml']), 'FLEETGATE_ERR_CONFIG_FILE', /^Configuration file cannot be read or parsed: --config \/nonexistent\/fleetgate\.yaml: ENOENT/)
  throwsConfig(t, () => load([], { FLEETGATE_CONFIG: '/nonexistent/fleetgate.yaml' }), 'FLEETGATE_ERR_CONFIG_FILE', /: FLEETGATE_CONFIG \/nonexistent\/fleetgate\.yaml: ENOENT/)
  const file = join(tempDir(t), 'c.yaml')
  writeFileSync(file, 'tries: [\n')
  throwsConfig(t, () => load([], { FLEETGATE_CONFIG: file }), 'FLEETGATE_ERR_CONFIG_FILE', new RegExp(`: FLEETGATE_CONFIG ${file}: `))
  // Not the defaults, nor the file of FLEETGATE_CONFIG the flag would have replaced.
  writeFileSync(file, 'tries: 2\n')
  throwsConfig(t, () => load(['--config', '']), 'FLEETGATE_ERR_CONFIG_INVALID', /^Invalid configuration: --config = "": expected the path of a JSON or YAML file$/)
  throwsConfig(t, () => load(['--config='], { FLEETGATE_CONFIG: file }), 'FLEETGATE_ERR_CONFIG_INVALID', /--config = ""/)
  t.equal(load([], { FLEETGATE_CONFIG: '' }).config.tries, 3, 'an empty variable is unset, as every other')
  t.equal(load([], { FLEETGATE_CONFIG: file }).config.tries, 2)
})

t.test('unknown flags and stray arguments are usage errors', async t => {
  throwsConfig(t, () => load(['--bogus', '1']), 'FLEETGATE_ERR_CLI_USAGE', /bogus/)
  throwsConfig(t, () => load(['stray']), 'FLEETGATE_ERR_CLI_USAGE', /stray/)
})

t.test('agent: arguments after -- are the wrapped command', async t => {
  const { config, command } = loadConfig(AgentConfigSchema, { argv: ['--advertise', '127.0.0.1:8088', '--', 'gunicorn', '--bind', ':8088'], env: {}, takesCommand: true })
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
  throwsConfig(t, () => parseStaticInstances('http://a'), 'FLEETGATE_ERR_CONFIG_INVALID', /HOST:PORT/)
  throwsConfig(t, () => parseStaticInstances('https://a:1'), 'FLEETGATE_ERR_CONFIG_INVALID')
  throwsConfig(t, () => parseStaticInstances('a:1,a:1'), 'FLEETGATE_ERR_CONFIG_INVALID', /twice/)
})

t.test('static instance lists: port 80 written out is a port, and a list must name one', async t => {
  t.same(parseStaticInstances('http://10.0.0.7:80,web:8088/').map(i => [i.id, i.host, i.port]), [['10.0.0.7:80', '10.0.0.7', 80], ['web:8088', 'web', 8088]])
  for (const bad of ['http://h:0', 'h:65536', 'http://h:1/path', 'h']) {
    throwsConfig(t, () => parseStaticInstances(bad), 'FLEETGATE_ERR_CONFIG_INVALID', /from 1 to 65535/)
  }
  throwsConfig(t, () => parseStaticInstances(' , '), 'FLEETGATE_ERR_CONFIG_INVALID', /at least one/)
})

t.test('a bad --static list names the flag, variable or file key it came from', async t => {
  for (const list of ['http://127.0.0.1:1, 127.0.0.1:2 ,http://[::1]:3', 'http://10.0.0.7:80,web:8088/', ',a:1,,', ' a:1 ']) {
    const { config } = load(['--static', list])
    t.equal(config.static, list, `${JSON.stringify(list)} is accepted`)
    t.ok(parseStaticInstances(config.static!).length > 0, 'and read')
  }
  for (const bad of ['https://a:1', 'http://a:1/path', 'http://a:1/?q=1', 'http://u:p@a:1', 'a', 'a:0', 'a:65536', ',', ' ']) {
    const escaped = JSON.stringify(bad).replace(/[.?*+[\]()/]/g, '\\$&')
    throwsConfig(t, () => load(['--static', bad]), 'FLEETGATE_ERR_CONFIG_INVALID', new RegExp(`--static = ${escaped}: expected http://HOST:PORT\\[,http://HOST:PORT\\.\\.\\.\\], ports from 1 to 65535`))
    throwsConfig(t, () => load([], { FLEETGATE_STATIC: bad }), 'FLEETGATE_ERR_CONFIG_INVALID', new RegExp(`^Invalid configuration: FLEETGATE_STATIC = ${escaped}: expected http://HOST:PORT`))
  }
  const file = join(tempDir(t), 'c.yaml')
  writeFileSync(file, 'static: https://a:1\n')
  throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_INVALID', /^Invalid configuration: static in config file .* = "https:\/\/a:1": expected http:\/\/HOST:PORT/)
})

t.test('ports: 0 to 65535 to listen on, 1 to 65535 to reach', async t => {
  t.equal(load(['--listen', '127.0.0.1:0']).config.listen, '127.0.0.1:0')
  throwsConfig(t, () => load(['--listen', '127.0.0.1:65536']), 'FLEETGATE_ERR_CONFIG_INVALID', /--listen = "127.0.0.1:65536": expected HOST:PORT with a port from 0 to 65535/)
  const agent = (...argv: string[]) => loadConfig(AgentConfigSchema, { argv: ['--zookeeper', 'zk:2181', ...argv], env: {} })
  throwsConfig(t, () => agent('--advertise', '10.0.0.1:99999'), 'FLEETGATE_ERR_CONFIG_INVALID', /--advertise = "10.0.0.1:99999": expected HOST:PORT with a port from 1 to 65535/)
  throwsConfig(t, () => agent('--advertise', '10.0.0.1:0'), 'FLEETGATE_ERR_CONFIG_INVALID', /--advertise/)
  throwsConfig(t, () => agent('--advertise', '10.0.0.1:80', '--target', 'http://127.0.0.1:99999'), 'FLEETGATE_ERR_CONFIG_INVALID', /--target = "http:\/\/127.0.0.1:99999"/)
  t.equal(agent('--advertise', '10.0.0.1:80', '--target', 'http://[::1]:8088').config.target, 'http://[::1]:8088')
})

t.test('a listener is not on an IPv6 address no socket takes: multicast, or link-local without its zone', async t => {
  const agent = (argv: string[]) => loadConfig(AgentConfigSchema, { argv: ['--zookeeper', 'zk:2181', '--advertise', '10.0.0.7:8088', ...argv], env: {} }).config
  for (const host of ['[fe80::1]', '[FE80::]', '[febf::1]', '[ff02::1]', '[ff0e::1]']) {
    const escaped = host.replace(/[[\].]/g, '\\$&')
    throwsConfig(t, () => load(['--listen', `${host}:8080`]), 'FLEETGATE_ERR_CONFIG_INVALID',
      new RegExp(`--listen = "${escaped}:8080": expected an address of this host to listen on; an IPv6 multicast address \\(ff00::/8\\) takes no listener, nor does a link-local one \\(fe80::/10\\) without its zone`))
    throwsConfig(t, () => load([], { FLEETGATE_ADMIN_LISTEN: `${host}:9901` }), 'FLEETGATE_ERR_CONFIG_INVALID', new RegExp(`FLEETGATE_ADMIN_LISTEN = "${escaped}:9901"`))
    throwsConfig(t, () => agent(['--admin-listen', `${host}:9902`]), 'FLEETGATE_ERR_CONFIG_INVALID', new RegExp(`--admin-listen = "${escaped}:9902"`))
  }
  for (const listen of ['[::]:8080', '[::1]:8080', '[fec0::1]:8080', '[fe7f::1]:8080', '[fd00::7]:8080', '[2001:db8::7]:8080', '[::ffff:127.0.0.1]:8080']) {
    t.equal(load(['--listen', listen]).config.listen, listen, `${listen} is accepted`)
  }
  t.equal(agent(['--admin-listen', '0.0.0.0:9902']).adminListen, '0.0.0.0:9902')
  t.equal(loadConfig(AgentConfigSchema, { argv: ['--zookeeper', 'zk', '--advertise', '[fe80::7]:8088'], env: {} }).config.advertise, '[fe80::7]:8088', '--advertise is not a listener')
})

t.test('--advertise is an address others can reach: not 0.0.0.0 or [::]; listeners may still use them', async t => {
  const agent = (argv: string[], env: Record<string, string> = {}) => loadConfig(AgentConfigSchema, { argv: ['--zookeeper', 'zk:2181', ...argv], env }).config
  for (const unspecified of ['0.0.0.0:8088', '[::]:8088', '[0:0:0:0:0:0:0:0]:8088', '[::0]:8088', '[::ffff:0.0.0.0]:8088', '0:8088', '0.0:8088', '0x0:8088']) {
    throwsConfig(t, () => agent(['--advertise', unspecified]), 'FLEETGATE_ERR_CONFIG_INVALID',
      new RegExp(`--advertise = ${JSON.stringify(unspecified).replace(/[[\].]/g, '\\$&')}: expected HOST:PORT .*a host others can reach.*not 0\\.0\\.0\\.0 or \\[::\\]`))
  }
  throwsConfig(t, () => agent([], { FLEETGATE_ADVERTISE: '0.0.0.0:8088' }), 'FLEETGATE_ERR_CONFIG_INVALID', /FLEETGATE_ADVERTISE = "0\.0\.0\.0:8088"/)
  for (const reachable of ['10.0.0.7:8088', '10.0.0.0:8088', '0.example:8088', 'superset-0:8088', '[::1]:8088', '[fe80::]:8088', '[2001:db8::7]:8088']) {
    t.equal(agent(['--advertise', reachable]).advertise, reachable, `${reachable} is accepted`)
  }
  // Kubernetes' status.podIP in an IPv6 cluster comes without brackets: the port follows the last colon.
  for (const [bare, bracketed] of [['2001:db8::7:8088', '[2001:db8::7]:8088'], ['::1:8088', '[::1]:8088'], ['fd00:0:0:0:0:0:0:7:80', '[fd00:0:0:0:0:0:0:7]:80']]) {
    t.equal(agent(['--advertise', bare!]).advertise, bracketed, `${bare} is ${bracketed}`)
  }
  t.equal(agent([], { FLEETGATE_ADVERTISE: 'fd00::7:8088' }).advertise, '[fd00::7]:8088', 'from the environment too')
  throwsConfig(t, () => agent(['--advertise', ':::8088']), 'FLEETGATE_ERR_CONFIG_INVALID', /--advertise = "\[::\]:8088": expected HOST:PORT .*a host others can reach/)
  throwsConfig(t, () => agent(['--advertise', 'fd00::7']), 'FLEETGATE_ERR_CONFIG_INVALID', /--advertise = "fd00::7": expected HOST:PORT/)
  throwsConfig(t, () => agent(['--advertise', 'fe80::1%eth0:8088']), 'FLEETGATE_ERR_CONFIG_INVALID', /--advertise = "\[fe80::1%eth0\]:8088": expected HOST:PORT/)
  t.equal(agent(['--advertise', '10.0.0.7:8088', '--admin-listen', '0.0.0.0:9902']).adminListen, '0.0.0.0:9902', 'the agent\'s admin may listen on every address')
  t.equal(load(['--listen', '0.0.0.0:8080']).config.listen, '0.0.0.0:8080', 'and so may the proxy')
  t.equal(load(['--listen', '[::]:8080']).config.listen, '[::]:8080')
})

t.test('a ZooKeeper connect string is checked whole before start-up', async t => {
  for (const good of ['zk:2181', 'zk1:2181,zk2:2182/prod/superset', 'zk', '10.0.0.1:2181/x', 'zk:2181/']) t.equal(load(['--zookeeper', good]).config.zookeeper, good)
  for (const bad of ['zk:2181/prod/', 'zk:2181//', 'zk:2181//x', 'zk:2181/a/..', 'zk:2181/./a', 'zk1:2181x', 'zk1:99999', 'zk1:0', 'zk 1:2181', ',zk:2181']) {
    throwsConfig(t, () => load(['--zookeeper', bad]), 'FLEETGATE_ERR_CONFIG_INVALID', /--zookeeper = .*expected HOST:PORT/)
  }
  throwsConfig(t, () => load(['--base-path', '/services/..']), 'FLEETGATE_ERR_CONFIG_INVALID', /--base-path/)
  t.equal(load(['--base-path', '/']).config.basePath, '/')
})

t.test('a chroot comes once, after the last host: one per host would leave the ensemble one host', async t => {
  // The client takes all after the first "/" as the chroot: zk1 alone, under "/prod,zk2:2181/prod".
  for (const bad of ['zk1:2181/prod,zk2:2181/prod', 'zk1:2181/prod,zk2:2181', 'zk1/a,b']) {
    throwsConfig(t, () => load(['--zookeeper', bad]), 'FLEETGATE_ERR_CONFIG_INVALID',
      new RegExp(`--zookeeper = "${bad.replace(/[.]/g, '\\.')}": expected HOST:PORT\\[,HOST:PORT\\.\\.\\.\\]\\[/chroot\\].*the chroot once, after the last host`))
  }
  throwsConfig(t, () => load([], { FLEETGATE_ZOOKEEPER: 'zk1:2181/prod,zk2:2181/prod' }), 'FLEETGATE_ERR_CONFIG_INVALID', /FLEETGATE_ZOOKEEPER = "zk1:2181\/prod,zk2:2181\/prod"/)
  t.equal(load(['--zookeeper', 'zk1:2181,zk2:2181/prod']).config.zookeeper, 'zk1:2181,zk2:2181/prod')
  t.equal(load(['--base-path', '/a,b']).config.basePath, '/a,b', 'a base path may still hold one: it is a znode name')
})

t.test('what is expected is what is taken: --zookeeper hosts are not IPv6, --target may be https and omit its port', async t => {
  for (const bad of ['[::1]:2181', '::1:2181', 'zk1:2181,[fd00::7]:2181']) {
    throwsConfig(t, () => load(['--zookeeper', bad]), 'FLEETGATE_ERR_CONFIG_INVALID', /expected HOST:PORT\[,HOST:PORT\.\.\.\]\[\/chroot\], hosts by name or IPv4 address \(the ZooKeeper client reads no IPv6 address\)/)
  }
  const agent = (target: string) => loadConfig(AgentConfigSchema, { argv: ['--zookeeper', 'zk', '--advertise', '10.0.0.1:80', '--target', target], env: {} }).config
  for (const good of ['https://127.0.0.1:8443', 'http://127.0.0.1', 'https://localhost']) t.equal(agent(good).target, good, `${good} is accepted`)
  for (const bad of ['http://127.0.0.1:8088/health', '127.0.0.1:8088', 'ftp://127.0.0.1:21']) {
    throwsConfig(t, () => agent(bad), 'FLEETGATE_ERR_CONFIG_INVALID', /--target = .*: expected http:\/\/HOST\[:PORT\] or https:\/\/HOST\[:PORT\], a port from 1 to 65535, without a path$/)
  }
})

t.test('a health path names a path on the target, not another host', async t => {
  const agent = (path: string) => loadConfig(AgentConfigSchema, { argv: ['--zookeeper', 'zk', '--advertise', '10.0.0.1:80', '--health-path', path], env: {} }).config
  t.equal(agent('/health?deep=0').healthPath, '/health?deep=0')
  for (const bad of ['//health', 'health', '/a b']) throwsConfig(t, () => agent(bad), 'FLEETGATE_ERR_CONFIG_INVALID', /--health-path/)
})

t.test('flags of another discovery backend are an error, not ignored', async t => {
  throwsConfig(t, () => load(['--zookeeper', 'zk:2181', '--static', 'http://b:2']), 'FLEETGATE_ERR_CONFIG_INVALID',
    /discovery is static \(--static is given\), so --zookeeper \(for zookeeper\) would be ignored/)
  throwsConfig(t, () => load(['--discovery', 'consul', '--static', 'http://b:2', '--base-path', '/x']), 'FLEETGATE_ERR_CONFIG_INVALID',
    /--discovery = "consul", so --base-path \(for zookeeper\), --static \(for static\) would be ignored/)
  throwsConfig(t, () => load(['--zookeeper', 'zk:2181'], { FLEETGATE_STATIC: 'http://b:2' }), 'FLEETGATE_ERR_CONFIG_INVALID', /discovery is static \(FLEETGATE_STATIC is given\)/)
  throwsConfig(t, () => load(['--consul-tag', 'web']), 'FLEETGATE_ERR_CONFIG_INVALID', /the default\), so --consul-tag \(for consul\)/)
  throwsConfig(t, () => load(['--zookeeper', 'zk'], { FLEETGATE_DISCOVERY: 'consul' }), 'FLEETGATE_ERR_CONFIG_INVALID', /FLEETGATE_DISCOVERY = "consul", so --zookeeper/)
  // One environment for either backend (docker-compose.yml switches with FLEETGATE_DISCOVERY alone).
  const either = { FLEETGATE_ZOOKEEPER: 'zookeeper:2181', FLEETGATE_CONSUL: 'http://consul:8500' }
  t.same(load([], either).ignored, ['FLEETGATE_CONSUL'], 'variables for the other backend are only reported')
  t.same(load([], { ...either, FLEETGATE_DISCOVERY: 'consul' }).ignored, ['FLEETGATE_ZOOKEEPER'])
  // Ignored, so not checked either: a value the other backend would refuse does not stop this one.
  const unread = load(['--zookeeper', 'zk:2181'], { FLEETGATE_CONSUL_TOKEN: 'not a token\n', FLEETGATE_CONSUL_WAIT_MS: 'soon' })
  t.same(unread.ignored, ['FLEETGATE_CONSUL_TOKEN', 'FLEETGATE_CONSUL_WAIT_MS'], 'bad values of the other backend are only reported')
  t.equal(unread.config.consulToken, undefined, 'and not kept')
  throwsConfig(t, () => load(['--zookeeper', 'zk:2181'], { FLEETGATE_DISCOVERY: 'etcd', FLEETGATE_CONSUL_TOKEN: 't' }), 'FLEETGATE_ERR_CONFIG_INVALID',
    /FLEETGATE_DISCOVERY = "etcd"/)
  throwsConfig(t, () => loadConfig(AgentConfigSchema, { argv: ['--discovery', 'consul', '--zookeeper', 'zk:2', '--advertise', '10.0.0.1:80'], env: {} }),
    'FLEETGATE_ERR_CONFIG_INVALID', /--zookeeper \(for zookeeper\)/)
  t.equal(load(['--discovery', 'consul', '--consul-token', 't', '--consul-tag', 'web']).config.consulTag, 'web', 'its own settings are fine')
  // The proxy's session timeout is ZooKeeper's; the agent's is its Consul TTL as well.
  throwsConfig(t, () => load(['--static', 'http://b:2', '--session-timeout-ms', '5000']), 'FLEETGATE_ERR_CONFIG_INVALID',
    /--session-timeout-ms \(for zookeeper\) would be ignored/)
  throwsConfig(t, () => load(['--discovery', 'consul', '--session-timeout-ms', '5000']), 'FLEETGATE_ERR_CONFIG_INVALID', /--session-timeout-ms \(for zookeeper\)/)
  t.equal(load(['--zookeeper', 'zk', '--session-timeout-ms', '5000']).config.sessionTimeoutMs, 5000)
  t.equal(loadConfig(AgentConfigSchema, { argv: ['--discovery', 'consul', '--session-timeout-ms', '5000', '--advertise', '10.0.0.1:80'], env: {} }).config.sessionTimeoutMs,
    5000, 'the agent\'s TTL with Consul')
})

t.test('an unknown flag names itself, the flag it is likely a misspelling of, and where the flags are listed', async t => {
  throwsConfig(t, () => load(['--zookeper', 'zk']), 'FLEETGATE_ERR_CLI_USAGE', /^Invalid command line: Unknown option '--zookeper' \(did you mean --zookeeper\?\): see fleetgate help proxy$/)
  throwsConfig(t, () => loadConfig(AgentConfigSchema, { argv: ['--advertize', '10.0.0.1:80'], env: {} }), 'FLEETGATE_ERR_CLI_USAGE', /Unknown option '--advertize' \(did you mean --advertise\?\): see fleetgate help agent$/)
  throwsConfig(t, () => load(['--slowstart-ms', '5']), 'FLEETGATE_ERR_CLI_USAGE', /Unknown option '--slowstart-ms' \(did you mean --slow-start-ms\?\)/)
  throwsConfig(t, () => load(['--frobnicate', '5']), 'FLEETGATE_ERR_CLI_USAGE', /^Invalid command line: Unknown option '--frobnicate': see fleetgate help proxy$/)
  // The agent's own flags are not the proxy's, and are not offered to it.
  throwsConfig(t, () => load(['--drain-ms', '5']), 'FLEETGATE_ERR_CLI_USAGE', /^Invalid command line: Unknown option '--drain-ms': see fleetgate help proxy$/)
})

t.test('a flag given twice is refused, naming both values (a secret\'s not shown), rather than the last taken', async t => {
  throwsConfig(t, () => load(['--listen', '127.0.0.1:8080', '--static', 'http://a:1', '--listen', '127.0.0.1:9090']), 'FLEETGATE_ERR_CLI_USAGE',
    /^Invalid command line: --listen is given twice \("127\.0\.0\.1:8080", then "127\.0\.0\.1:9090"\): give it once$/)
  throwsConfig(t, () => load(['--config', 'a.yaml', '--config', 'b.yaml']), 'FLEETGATE_ERR_CLI_USAGE', /--config is given twice/)
  try {
    load(['--consul-token', 'secret-one', '--consul-token', 'secret-two'])
    t.fail('expected an error')
  } catch (err) {
    t.match((err as Error).message, /--consul-token is given twice \(values not shown\)/)
    t.notMatch((err as Error).message, /secret/)
  }
  // Once as a flag and once in the environment is the usual override, not a repetition.
  t.equal(load(['--listen', '127.0.0.1:9090'], { FLEETGATE_LISTEN: '127.0.0.1:8080' }).config.listen, '127.0.0.1:9090')
})

t.test('a FLEETGATE_* variable that is no setting is reported, with the one it likely misspells', async t => {
  const { unknownVariables } = load([], {
    FLEETGATE_SLOWSTART_MS: '5', FLEETGATE_LISEN: ':80', FLEETGATE_WHATEVER: '1',
    // Known: the proxy's, the agent's (one environment may serve both), the file's, and the workers'.
    FLEETGATE_LISTEN: '127.0.0.1:80', FLEETGATE_DRAIN_MS: '5', FLEETGATE_CONFIG: '', FLEETGATE_WORKER_CONFIG: '{}',
    OTHER_SLOW_START_MS: '5',
  })
  t.same(unknownVariables, [
    { name: 'FLEETGATE_LISEN', suggestion: 'FLEETGATE_LISTEN' },
    { name: 'FLEETGATE_SLOWSTART_MS', suggestion: 'FLEETGATE_SLOW_START_MS' },
    { name: 'FLEETGATE_WHATEVER', suggestion: undefined },
  ])
  t.same(loadConfig(AgentConfigSchema, { argv: ['--advertise', '10.0.0.1:80'], env: { FLEETGATE_SLOW_START_MS: '5', FLEETGATE_DRAIN_M: '5' } }).unknownVariables,
    [{ name: 'FLEETGATE_DRAIN_M', suggestion: 'FLEETGATE_DRAIN_MS' }], 'the agent: the proxy\'s settings are known too')
})

t.test('a config file\'s empty or true/false value is an error, not 0 or 1', async t => {
  const dir = tempDir(t)
  const file = join(dir, 'c.yaml')
  writeFileSync(file, 'maxConnectionsPerInstance:\ntries: true\nconsulToken:\n')
  throwsConfig(t, () => load(['--config', file]), 'FLEETGATE_ERR_CONFIG_INVALID',
    /maxConnectionsPerInstance in config file .* = null: expected an integer from 0 to 100000/, /tries in config file .* = true: expected an integer from 1 to 10/)
  writeFileSync(file, 'shutdownTimeoutMs: 0\nservice: 1234\n')
  t.match(load(['--config', file]).config, { shutdownTimeoutMs: 0, service: '1234' }, 'numbers stay numbers, and may be names')
})

t.test('a config file\'s digits keep their text where a name is expected: leading zeros and long runs stay', async t => {
  const file = join(tempDir(t), 'c.yaml')
  writeFileSync(file, 'discovery: consul\nservice: 0042\nconsulTag: 007\nconsulDatacenter: 123456789012345678901234\ntries: 03\nworkers: 2\n')
  t.match(load(['--config', file]).config, { service: '0042', consulTag: '007', consulDatacenter: '123456789012345678901234', tries: 3, workers: 2 },
    'names as written; numbers read from the digits, as from a flag (--tries 03)')
  writeFileSync(file, 'advertise: 10.0.0.7:8088\nid: 0001\nlabels: rack=01\n')
  t.equal(loadConfig(AgentConfigSchema, { argv: ['--config', file], env: {} }).config.id, '0001')
  const json = join(tempDir(t), 'c.json')
  writeFileSync(json, '{"service": 1234, "tries": 2}')
  t.match(load(['--config', json]).config, { service: '1234', tries: 2 })
})

t.test('the first ejection may not be longer than the longest', async t => {
  throwsConfig(t, () => load(['--eject-base-ms', '60000', '--eject-max-ms', '1000']), 'FLEETGATE_ERR_CONFIG_INVALID',
    /--eject-base-ms = 60000 is above --eject-max-ms = 1000/)
  t.equal(load(['--eject-base-ms', '1000', '--eject-max-ms', '1000']).config.ejectMaxMs, 1000)
})

t.test('--health-path with a TCP check is an error as a flag, as it would be ignored', async t => {
  const agent = (argv: string[], env: Record<string, string> = {}) => loadConfig(AgentConfigSchema, { argv: ['--advertise', '10.0.0.1:80', ...argv], env }).config
  throwsConfig(t, () => agent(['--health-check', 'tcp', '--health-path', '/ready']), 'FLEETGATE_ERR_CONFIG_INVALID',
    /^Invalid configuration: --health-check = "tcp" only connects, so --health-path would be ignored: leave it out, or check with --health-check http$/)
  throwsConfig(t, () => agent(['--health-path', '/ready'], { FLEETGATE_HEALTH_CHECK: 'tcp' }), 'FLEETGATE_ERR_CONFIG_INVALID', /^Invalid configuration: FLEETGATE_HEALTH_CHECK = "tcp" only connects/)
  t.match(agent(['--health-check', 'tcp'], { FLEETGATE_HEALTH_PATH: '/ready' }), { healthCheck: 'tcp' }, 'a variable, which may serve either kind of check, is left alone')
  t.match(agent(['--health-check', 'http', '--health-path', '/ready']), { healthCheck: 'http', healthPath: '/ready' })
})

t.test('the worker watchdog is off at 0, or at least a second', async t => {
  t.equal(load([]).config.workerStallTimeoutMs, 10_000, 'ten seconds by default')
  t.equal(load(['--worker-stall-timeout-ms', '0']).config.workerStallTimeoutMs, 0, '0: never')
  t.equal(load(['--worker-stall-timeout-ms', '1000']).config.workerStallTimeoutMs, 1000)
  throwsConfig(t, () => load(['--worker-stall-timeout-ms', '999']), 'FLEETGATE_ERR_CONFIG_INVALID',
    /^Invalid configuration: --worker-stall-timeout-ms = 999: expected 0 \(never\), or milliseconds from 1000 to 86400000 \(a day\)$/)
  throwsConfig(t, () => load([], { FLEETGATE_WORKER_STALL_TIMEOUT_MS: '-1' }), 'FLEETGATE_ERR_CONFIG_INVALID', /FLEETGATE_WORKER_STALL_TIMEOUT_MS = "-1": expected 0 \(never\)/)
})

t.test('only the agent runs a command after --, and "--" must have one', async t => {
  throwsConfig(t, () => load(['--tries', '2', '--', '--tries', '1']), 'FLEETGATE_ERR_CLI_USAGE', /unexpected "-- --tries 1": only the agent runs a command/)
  throwsConfig(t, () => loadConfig(AgentConfigSchema, { argv: ['--advertise', '10.0.0.1:80', '--'], env: {}, takesCommand: true }), 'FLEETGATE_ERR_CLI_USAGE', /nothing after "--"/)
})
