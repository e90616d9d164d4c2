// The conformance suite every discovery source must pass (the MembershipSource contract in
// src/membership/source.ts), and the driver interface through which it acts on each registry.
//
// To add a source: write a SourceDriverSpec for it (how to register, remove, fail, drain and cut it off),
// and add it to test/integration/source-conformance.test.ts. An operation the registry cannot express is
// listed in `unsupported` with its reason, and the checks needing it are skipped with that reason, never
// faked. A source is done when every check that applies to it passes.

import type { Test } from 'tap'
import type { Membership, MembershipSource } from '../../src/membership/source.ts'
import { eventually } from './eventually.ts'

/** One instance as the suite asks for it. The port identifies it across sources (ids differ by registry). */
export interface DriverInstance {
  readonly id: string
  readonly port: number
}

export type Operation = 'add' | 'remove' | 'setHealth' | 'setDraining' | 'outage' | 'roundTrips'

export interface SourceDriver {
  /** Registers `initial` in the registry, then builds the source (not started). */
  start(initial: readonly DriverInstance[]): Promise<MembershipSource>
  /** Registers an instance, healthy and up. */
  add(instance: DriverInstance): Promise<void>
  remove(id: string): Promise<void>
  /** What the registry says about the instance's health: failing takes it out of the live set. */
  setHealth(id: string, passing: boolean): Promise<void>
  /** The registry's way to say "no new requests" (still listed, state draining). */
  setDraining(id: string, draining: boolean): Promise<void>
  /**
   * Cuts the source off its registry, which keeps running and accepting changes from others, until
   * the returned function restores the link.
   */
  outage(): Promise<() => Promise<void>>
  /** Grows with every round trip the source makes to its registry (queries, reads, resyncs). */
  roundTrips(): number
}

export interface SourceDriverSpec {
  readonly name: string
  /** Operations the registry cannot express, each with the reason; checks needing them are skipped. */
  readonly unsupported: Partial<Record<Operation, string>>
  /** A fresh driver on a fresh service; everything it starts is torn down with `t`. */
  create(t: Test): Promise<SourceDriver>
}

const A: DriverInstance = { id: 'a', port: 20001 }
const B: DriverInstance = { id: 'b', port: 20002 }
const C: DriverInstance = { id: 'c', port: 20003 }

/** `port:state` of each instance, ordered by port: comparable across sources whose ids differ. */
function view (membership: Membership | undefined): string {
  if (!membership) return '(none)'
  return [...membership.instances].sort((x, y) => x.port - y.port).map(i => `${i.port}:${i.state}`).join(',')
}

const up = (...instances: DriverInstance[]): string => instances.map(i => `${i.port}:up`).join(',')

interface Watched {
  readonly source: MembershipSource
  /** Every emitted membership, as view() strings. */
  readonly emitted: string[]
  readonly emissions: Membership[]
}

async function startWatched (t: Test, driver: SourceDriver, initial: readonly DriverInstance[]): Promise<Watched> {
  const source = await driver.start(initial)
  const emitted: string[] = []
  const emissions: Membership[] = []
  source.subscribe(m => {
    emissions.push(m)
    emitted.push(view(m))
  })
  t.teardown(() => source.close())
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error('start() did not resolve with a first membership within 20 s')), 20_000)
  })
  try {
    await Promise.race([source.start(), late])
  } finally {
    clearTimeout(timer)
  }
  return { source, emitted, emissions }
}

/**
 * Every emission is a full set, sorted by id, that differs from the one before, and revisions count up
 * by one. An emission that says what changed says it exactly: the set before, less what it removed
 * (objects of that set), plus what it added (objects it did not hold), is the new set, object for object.
 */
function checkEmissions (t: Test, watched: Watched): void {
  for (let i = 1; i < watched.emitted.length; i++) {
    if (watched.emitted[i] === watched.emitted[i - 1]) t.fail(`emission ${i + 1} repeats the one before: ${watched.emitted[i]}`)
  }
  watched.emissions.forEach((m, i) => {
    if (m.revision !== i + 1) t.fail(`emission ${i + 1} has revision ${m.revision}`)
    if (m.instances.some((instance, j) => j > 0 && m.instances[j - 1]!.id > instance.id)) t.fail(`emission ${i + 1} is not sorted by id`)
  })
  let described = 0
  for (let i = 1; i < watched.emissions.length; i++) {
    const { change, instances } = watched.emissions[i]!
    if (change === undefined) continue
    described++
    const before = watched.emissions[i - 1]!.instances
    if (change.removed.some(instance => !before.includes(instance))) t.fail(`emission ${i + 1} removes an instance the one before did not hold`)
    if (change.added.some(instance => before.includes(instance))) t.fail(`emission ${i + 1} adds an instance the one before held`)
    const gone = new Set(change.removed)
    const expected = new Set([...before.filter(instance => !gone.has(instance)), ...change.added])
    if (expected.size !== instances.length || instances.some(instance => !expected.has(instance))) {
      t.fail(`emission ${i + 1}: the one before with its change applied is not the set it emits`)
    }
  }
  t.pass(`${watched.emitted.length} emissions, each a change (${described} saying which): ${watched.emitted.join(' | ')}`)
}

const WAIT = { timeoutMs: 20_000 }

function skipFor (spec: SourceDriverSpec, needs: Operation[]): string | false {
  const missing = needs.find(op => spec.unsupported[op] !== undefined)
  return missing ? `${spec.name} cannot ${missing}: ${spec.unsupported[missing]}` : false
}

/** Runs every conformance check against one source. */
export function runConformance (t: Test, spec: SourceDriverSpec): void {
  t.test(`${spec.name}: the first membership is the full registered set, connected and fresh`, async t => {
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A, B])
    t.equal(view(watched.source.current()), up(A, B))
    t.equal(watched.source.current()!.revision, 1)
    t.equal(watched.source.current()!.service, watched.source.service)
    for (const instance of watched.source.current()!.instances) {
      t.ok(instance.id.length > 0 && instance.host.length > 0 && instance.weight >= 1, `${instance.id} at ${instance.host}:${instance.port}`)
    }
    await eventually(() => watched.source.state().status === 'connected' && !watched.source.state().stale, { ...WAIT, message: 'connected and fresh' })
    t.same(watched.emitted, [up(A, B)], 'one emission')
  })

  t.test(`${spec.name}: an add and a remove are each one full-set emission`, { skip: skipFor(spec, ['add', 'remove']) }, async t => {
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A])
    await driver.add(B)
    await eventually(() => view(watched.source.current()) === up(A, B), { ...WAIT, message: 'add' })
    await driver.remove(A.id)
    await eventually(() => view(watched.source.current()) === up(B), { ...WAIT, message: 'remove' })
    t.same(watched.emitted, [up(A), up(A, B), up(B)])
    checkEmissions(t, watched)
  })

  t.test(`${spec.name}: a health flap takes the instance out and brings it back`, { skip: skipFor(spec, ['setHealth']) }, async t => {
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A, B])
    await driver.setHealth(B.id, false)
    await eventually(() => view(watched.source.current()) === up(A), { ...WAIT, message: 'failing: out' })
    await driver.setHealth(B.id, true)
    await eventually(() => view(watched.source.current()) === up(A, B), { ...WAIT, message: 'passing: back' })
    t.same(watched.emitted, [up(A, B), up(A), up(A, B)])
    checkEmissions(t, watched)
  })

  t.test(`${spec.name}: an outage keeps the last membership, marked stale`, { skip: skipFor(spec, ['outage']) }, async t => {
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A, B])
    await eventually(() => watched.source.state().status === 'connected', WAIT)
    const restore = await driver.outage()
    await eventually(() => watched.source.state().stale && watched.source.state().status !== 'connected', { ...WAIT, message: 'stale, not connected' })
    t.equal(view(watched.source.current()), up(A, B), 'the last membership is kept')
    t.equal(watched.source.current()!.revision, 1, 'and not re-emitted')
    await restore()
    await eventually(() => !watched.source.state().stale && watched.source.state().status === 'connected', { ...WAIT, message: 'fresh after the outage' })
    t.same(watched.emitted, [up(A, B)], 'nothing changed, nothing emitted')
  })

  t.test(`${spec.name}: after an outage it resyncs to changes made meanwhile`, { skip: skipFor(spec, ['outage', 'add', 'remove']) }, async t => {
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A, B])
    await eventually(() => watched.source.state().status === 'connected', WAIT)
    const restore = await driver.outage()
    await eventually(() => watched.source.state().stale, { ...WAIT, message: 'stale' })
    await driver.remove(A.id)
    await driver.add(C)
    t.equal(view(watched.source.current()), up(A, B), 'cut off: still the old set')
    await restore()
    await eventually(() => view(watched.source.current()) === up(B, C) && !watched.source.state().stale, { ...WAIT, message: 'resynced' })
    t.same(watched.emitted, [up(A, B), up(B, C)], 'one emission for the resync')
    checkEmissions(t, watched)
  })

  t.test(`${spec.name}: draining is a state, not a removal`, { skip: skipFor(spec, ['setDraining']) }, async t => {
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A, B])
    await driver.setDraining(A.id, true)
    await eventually(() => view(watched.source.current()) === `${A.port}:draining,${B.port}:up`, { ...WAIT, message: 'draining' })
    await driver.setDraining(A.id, false)
    await eventually(() => view(watched.source.current()) === up(A, B), { ...WAIT, message: 'up again' })
    checkEmissions(t, watched)
    t.equal(watched.emitted.length, 3)
  })

  t.test(`${spec.name}: an unchanged instance stays the very same object, however often it is read`, { skip: skipFor(spec, ['add', 'roundTrips']) }, async t => {
    // The pool and the proxy's workers take a change as a change of one instance only if the others
    // are handed over as the objects they already hold.
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A])
    const before = driver.roundTrips()
    await eventually(() => driver.roundTrips() >= before + 4, { ...WAIT, message: 'four more round trips to the registry' })
    await driver.add(B)
    await eventually(() => view(watched.source.current()) === up(A, B), { ...WAIT, message: 'add' })
    // By port: a registry may name the instance its own way (Consul: "<service>-a").
    const first = watched.emissions[0]!.instances.find(i => i.port === A.port)
    const last = watched.emissions.at(-1)!.instances.find(i => i.port === A.port)
    t.ok(first !== undefined && first === last, `${A.id} is the same object after ${driver.roundTrips() - before} round trips and an add`)
  })

  t.test(`${spec.name}: no emission while nothing changes, however often the registry is read`, { skip: skipFor(spec, ['roundTrips']) }, async t => {
    const driver = await spec.create(t)
    const watched = await startWatched(t, driver, [A, B])
    const before = driver.roundTrips()
    await eventually(() => driver.roundTrips() >= before + 4, { ...WAIT, message: 'four more round trips to the registry' })
    t.same(watched.emitted, [up(A, B)], `${driver.roundTrips() - before} round trips, no emission`)
  })
}
