// One conformance suite (test/helpers/conformance.ts), run against every source: ZooKeeper (a real server),
// Consul (the double, or a real agent with CONSUL_HTTP_ADDR) and Static. Each source is reached through a
// TCP relay, so an outage cuts the source off while its registry keeps running and changing.

import { CreateMode } from 'node-zookeeper-client'
import t from 'tap'
import { ConsulClient, consulConnection } from '../../src/consul/client.ts'
import { silentLogger } from '../../src/logger.ts'
import { ConsulSource } from '../../src/membership/consul.ts'
import type { Instance } from '../../src/membership/instance.ts'
import type { Membership } from '../../src/membership/source.ts'
import { parseStaticInstances, StaticSource } from '../../src/membership/static.ts'
import { ZooKeeperSource } from '../../src/membership/zookeeper.ts'
import { consulTarget, REAL_CONSUL, uniqueService } from '../helpers/consul.ts'
import { runConformance, type SourceDriverSpec } from '../helpers/conformance.ts'
import { eventually } from '../helpers/eventually.ts'
import { curatorData, registerCurator, removeNode, zk, zkClient } from '../helpers/fleet.ts'
import { startRelay } from '../helpers/tcp-relay.ts'
import { startZooKeeper } from '../helpers/zookeeper.ts'

const server = await startZooKeeper()
t.teardown(() => server.close())

const zookeeper: SourceDriverSpec = {
  name: 'zookeeper',
  unsupported: {},
  async create (t) {
    const writer = await zkClient(t, server.connectString, 30_000)
    const relay = await startRelay(server.port)
    t.teardown(() => relay.close())
    const service = uniqueService('conf')
    const ports = new Map<string, number>()
    let source: ZooKeeperSource | undefined
    const register = async (id: string, port: number, state: 'up' | 'draining' = 'up'): Promise<void> => {
      ports.set(id, port)
      await registerCurator(writer, { service, id, port, state })
    }
    const path = (id: string): string => `/services/${service}/${id}`
    return {
      async start (initial) {
        for (const i of initial) await register(i.id, i.port)
        source = new ZooKeeperSource({
          connectString: `127.0.0.1:${relay.port}`, basePath: '/services', service,
          sessionTimeoutMs: 6_000, resyncIntervalMs: 250, logger: silentLogger,
        })
        return source
      },
      add: i => register(i.id, i.port),
      remove: id => removeNode(writer, path(id)),
      // ZooKeeper has no health of its own: an instance that fails its checks is taken out by its agent,
      // which deletes the znode, and comes back as a new one.
      setHealth: (id, passing) => passing ? register(id, ports.get(id)!) : removeNode(writer, path(id)),
      setDraining: async (id, draining) => {
        await zk(cb => writer.setData(path(id), curatorData({ service, id, port: ports.get(id)!, state: draining ? 'draining' : 'up' }), -1, cb))
      },
      async outage () {
        await relay.down()
        return () => relay.up()
      },
      roundTrips: () => source?.reads ?? 0,
    }
  },
}

const consul: SourceDriverSpec = {
  name: REAL_CONSUL ? 'consul (real agent)' : 'consul (double)',
  unsupported: {},
  async create (t) {
    const target = await consulTarget(t)
    const upstream = new URL(target.address)
    const relay = await startRelay(Number(upstream.port), upstream.hostname)
    t.teardown(() => relay.close())
    const service = uniqueService('conf')
    const ports = new Map<string, number>()
    let source: ConsulSource | undefined
    const register = async (id: string, port: number): Promise<void> => {
      ports.set(id, port)
      await target.api.register({ name: service, id: `${service}-${id}`, port, address: '127.0.0.1' })
      t.teardown(() => target.api.deregister(`${service}-${id}`))
    }
    return {
      async start (initial) {
        for (const i of initial) await register(i.id, i.port)
        source = new ConsulSource({
          client: new ConsulClient(consulConnection({ consul: `${upstream.protocol}//127.0.0.1:${relay.port}`, consulToken: target.token })),
          service,
          // Short waits, so "nothing changes" spans several blocking queries.
          waitMs: 300,
          backoffBaseMs: 50,
          backoffMaxMs: 500,
          logger: silentLogger,
        })
        return source
      },
      add: i => register(i.id, i.port),
      remove: async id => { await target.api.deregister(`${service}-${id}`) },
      setHealth: (id, passing) => target.api.check(`service:${service}-${id}`, passing ? 'pass' : 'fail'),
      // Consul's own way: maintenance mode (Meta fleetgate_state=draining is covered in consul-source.test.ts).
      setDraining: (id, draining) => target.api.maintenance(`${service}-${id}`, draining),
      async outage () {
        await relay.down()
        return () => relay.up()
      },
      roundTrips: () => source?.queries ?? 0,
    }
  },
}

const FIXED = 'a static list is fixed when the proxy starts'
const staticList: SourceDriverSpec = {
  name: 'static',
  unsupported: {
    add: FIXED,
    remove: FIXED,
    setHealth: 'a static list has no health signal (the proxy\'s passive ejection covers dead instances)',
    setDraining: 'a static list has no draining state',
    outage: 'there is no registry to lose',
    roundTrips: 'a static list is read once and never polled',
  },
  async create () {
    const service = uniqueService('conf')
    const unsupported = (): Promise<never> => Promise.reject(new Error('not supported by a static list'))
    return {
      start: async initial => new StaticSource(service, parseStaticInstances(initial.map(i => `http://127.0.0.1:${i.port}`).join(','))),
      add: unsupported,
      remove: unsupported,
      setHealth: unsupported,
      setDraining: unsupported,
      outage: unsupported,
      roundTrips: () => 0,
    }
  },
}

for (const spec of [zookeeper, consul, staticList]) runConformance(t, spec)

t.test('zookeeper: each change names the instances it added and removed, so consumers need not compare the whole set', async t => {
  const writer = await zkClient(t, server.connectString, 30_000)
  const service = uniqueService('change')
  const path = (id: string): string => `/services/${service}/${id}`
  for (const id of ['a', 'b']) await registerCurator(writer, { service, id, port: id === 'a' ? 21001 : 21002 })
  // No periodic resync within the test: each change below is published from the watches alone.
  const source = new ZooKeeperSource({
    connectString: server.connectString, basePath: '/services', service,
    sessionTimeoutMs: 6_000, resyncIntervalMs: 600_000, logger: silentLogger,
  })
  const emissions: Membership[] = []
  source.subscribe(m => emissions.push(m))
  t.teardown(() => source.close())
  await source.start()
  const byId = (m: Membership | undefined, id: string): Instance | undefined => m?.instances.find(i => i.id === id)
  const changeOf = (m: Membership): string =>
    m.change ? `+${m.change.added.map(i => `${i.id}:${i.state}`).join(',')} -${m.change.removed.map(i => `${i.id}:${i.state}`).join(',')}` : 'none'
  t.equal(emissions[0]!.change, undefined, 'the first membership is the whole set, with no change')

  await registerCurator(writer, { service, id: 'c', port: 21003 })
  await eventually(() => emissions.length === 2, { timeoutMs: 20_000, message: 'add' })
  t.equal(changeOf(emissions[1]!), '+c:up -')
  t.equal(emissions[1]!.change!.added[0], byId(emissions[1], 'c'), 'the added object is the one in the set')

  await zk(cb => writer.setData(path('a'), curatorData({ service, id: 'a', port: 21001, state: 'draining' }), -1, cb))
  await eventually(() => emissions.length === 3, { timeoutMs: 20_000, message: 'drain' })
  t.equal(changeOf(emissions[2]!), '+a:draining -a:up', 'new data replaces the instance')
  t.equal(emissions[2]!.change!.removed[0], byId(emissions[1], 'a'), 'the removed object is the one the set before held')

  const readsBefore = source.reads
  await removeNode(writer, path('b'))
  await eventually(() => emissions.length === 4, { timeoutMs: 20_000, message: 'remove' })
  t.equal(changeOf(emissions[3]!), '+ -b:up')
  t.same(emissions[3]!.instances.map(i => `${i.id}:${i.state}`), ['a:draining', 'c:up'], 'sorted by id, as a full set is')
  t.equal(byId(emissions[3], 'c'), byId(emissions[1], 'c'), 'an untouched instance stays the same object')

  // A delete fires the child's data watch and the service's child watch: one list read, not one for each.
  // The add after it is read once the delete's reads are done: its list and its data.
  await registerCurator(writer, { service, id: 'd', port: 21004 })
  await eventually(() => emissions.length === 5, { timeoutMs: 20_000, message: 'add after the remove' })
  t.equal(source.reads - readsBefore, 3, 'the remove and the add cost 1 and 2 reads')

  // Deleted and created anew in one transaction (its agent back on another port, say): the list still
  // names it, so only the delete's data watch can tell that it must be read again.
  await zk(cb => writer.transaction()
    .remove(path('c'), -1)
    .create(path('c'), curatorData({ service, id: 'c', port: 21013 }), CreateMode.EPHEMERAL)
    .commit(cb))
  await eventually(() => byId(source.current(), 'c')?.port === 21013, { timeoutMs: 10_000, message: 'c read again after its re-creation' })
  t.equal(changeOf(emissions.at(-1)!), '+c:up -c:up')
})

t.test('zookeeper: a change during a full resync is published without waiting for the resync to read every child', async t => {
  const writer = await zkClient(t, server.connectString, 30_000)
  const service = uniqueService('resync')
  const path = (id: string): string => `/services/${service}/${id}`
  const size = 8000
  const id = (i: number): string => `i${String(i).padStart(4, '0')}`
  await registerCurator(writer, { service, id: id(0), port: 20000 })
  for (let from = 1; from < size; from += 500) {
    const batch = writer.transaction()
    for (let i = from; i < Math.min(size, from + 500); i++) batch.create(path(id(i)), curatorData({ service, id: id(i), port: 20000 + i }), CreateMode.EPHEMERAL)
    await zk(cb => batch.commit(cb))
  }
  const source = new ZooKeeperSource({
    connectString: server.connectString, basePath: '/services', service,
    sessionTimeoutMs: 6_000, resyncIntervalMs: 3_000, logger: silentLogger,
  })
  const publishedAt = new Map<string, number>()
  source.subscribe(m => {
    for (const instance of m.instances) if (instance.id.startsWith('late') && !publishedAt.has(instance.id)) publishedAt.set(instance.id, source.reads)
  })
  t.teardown(() => source.close())
  await source.start()
  t.equal(source.current()?.instances.length, size, 'the first membership')

  // A resync's reads: its list, then each child. A change in the middle costs a list and a read of its own.
  const resyncReads = size + 1
  for (let attempt = 1; ; attempt++) {
    const late = `late${attempt}`
    // A full resync under way (its list read, and its reads of every child begun), and then a new child.
    const before = source.reads
    await eventually(() => source.reads > before + 50, { timeoutMs: 10_000, intervalMs: 1, message: 'a full resync under way' })
    await zk(cb => writer.create(path(late), curatorData({ service, id: late, port: 19000 + attempt }), CreateMode.EPHEMERAL, cb))
    const readsAtCreate = source.reads - before
    await eventually(() => publishedAt.has(late), { timeoutMs: 10_000, message: `${late} published` })
    // The resync goes on after the change's own pass, and reads every child: nothing more, nothing less.
    await eventually(() => source.reads - before === resyncReads + 2, { timeoutMs: 10_000, intervalMs: 5, message: 'the resync done, and no more' })
    if (readsAtCreate >= resyncReads && attempt < 3) {
      t.comment(`the resync was over (${readsAtCreate} reads) before ${late} was created: once more, with the next resync`)
      continue
    }
    const readsBeforePublish = publishedAt.get(late)! - before
    t.ok(readsBeforePublish < resyncReads, `${late} published after ${readsBeforePublish} reads, of the resync's ${resyncReads}`)
    t.equal(source.current()?.instances.length, size + attempt, 'every child once, and the new ones')
    break
  }
})
