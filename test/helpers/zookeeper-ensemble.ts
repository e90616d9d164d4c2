// A real three-server ZooKeeper 3.8 ensemble on loopback (Debian's `zookeeper` package, QuorumPeerMain),
// as production runs it: clients get every server in their connect string, and a server may die or be
// killed under them. Reaches quorum in about 1.5 s; after its leader dies, the others serve again in
// about half a second (FIELD-NOTES section 4).

import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { eventually } from './eventually.ts'
import { isRunning, track } from './reaper.ts'
import { assertZooKeeperInstalled, fourLetterWord, SLF4J_JAR, ZOOKEEPER_JAR } from './zookeeper.ts'

const READY_TIMEOUT_MS = 30_000

export interface EnsembleMember {
  /** Its `myid`, from 1. */
  readonly id: number
  readonly clientPort: number
  readonly running: boolean
  /** `leader`, `follower`, or undefined while it does not serve (stopped, or without a quorum). */
  mode(): Promise<string | undefined>
  /** SIGKILL, as a crashed host: its clients see the connection drop. */
  kill(): Promise<void>
  /** Starts it again on its ports and data; resolves once it serves within the quorum. */
  start(): Promise<void>
  /** SIGSTOP, as a server hung in a long pause: its connections stay open, and nothing answers on them. */
  pause(): void
  /** SIGCONT after pause(). */
  resume(): void
  logTail(lines?: number): string
}

export interface ZooKeeperEnsemble {
  /** Every member, `127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3`, as a client is given it. */
  readonly connectString: string
  readonly members: readonly EnsembleMember[]
  /** The member serving as leader now; waits for an election under way. */
  leader(): Promise<EnsembleMember>
  /** The member a client's session (its id in hex, as the client gives it) is connected to now. */
  holding(sessionId: string): Promise<EnsembleMember>
  /** Every member stopped and its directory removed. */
  close(): Promise<void>
}

/**
 * `leaderServes: false` (ZooKeeper's `leaderServes=no`) keeps clients off the leader, on the followers: a
 * follower that hangs leaves the others serving, where a hung leader stops the ensemble until the others
 * have noticed and elected another (seconds to tens of seconds under load).
 */
export async function startEnsemble (size = 3, options: { leaderServes?: boolean } = {}): Promise<ZooKeeperEnsemble> {
  assertZooKeeperInstalled()
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'fleetgate-zk-ensemble-'))
  const ports = await Promise.all(Array.from({ length: size }, async () => ({ client: await fixedPort(), peer: await fixedPort(), election: await fixedPort() })))
  const servers = ports.map((p, i) => `server.${i + 1}=127.0.0.1:${p.peer}:${p.election}`)
  const members: Member[] = []
  for (const [i, p] of ports.entries()) {
    const dir = path.join(tmp, `server-${i + 1}`)
    await mkdir(path.join(dir, 'data'), { recursive: true })
    await writeFile(path.join(dir, 'data', 'myid'), `${i + 1}\n`)
    await writeFile(path.join(dir, 'zoo.cfg'), [
      'tickTime=500',
      'initLimit=20',
      'syncLimit=4',
      'minSessionTimeout=1000',
      'maxSessionTimeout=20000',
      `dataDir=${path.join(dir, 'data')}`,
      `clientPort=${p.client}`,
      'clientPortAddress=127.0.0.1',
      'admin.enableServer=false',
      '4lw.commands.whitelist=srvr,ruok,mntr,stat,cons',
      ...(options.leaderServes === false ? ['leaderServes=no'] : []),
      ...servers,
      '',
    ].join('\n'))
    members.push(new Member(i + 1, p.client, dir))
  }
  const ensemble: ZooKeeperEnsemble = {
    connectString: ports.map(p => `127.0.0.1:${p.client}`).join(','),
    members,
    async leader () {
      const found = await eventually(async () => {
        for (const member of members) if (await member.mode() === 'leader') return member
        return undefined
      }, { timeoutMs: READY_TIMEOUT_MS, message: () => `a leader; logs:\n${members.map(m => m.logTail(10)).join('\n')}` })
      return found!
    },
    async holding (sessionId) {
      // `cons` lists each connection with its session: `…,sid=0x300002fcc060001,…`.
      const sid = `sid=0x${BigInt(`0x${sessionId}`).toString(16)}`
      const found = await eventually(async () => {
        for (const member of members) {
          if (!member.running) continue
          const answer = await fourLetterWord(member.clientPort, 'cons', 1000)
          if (answer.split('\n').some(line => line.includes(`${sid},`) || line.includes(`${sid})`))) return member
        }
        return undefined
      }, { timeoutMs: 10_000, message: `the server holding session ${sessionId}` })
      return found!
    },
    async close () {
      await Promise.all(members.map(m => m.stop()))
      await rm(tmp, { recursive: true, force: true })
    },
  }
  try {
    for (const member of members) member.spawn()
    if (options.leaderServes === false) {
      // The leader then answers `srvr` as a server that does not serve: the others follow it.
      await eventually(async () => (await Promise.all(members.map(m => m.mode()))).filter(mode => mode === 'follower').length === size - 1,
        { timeoutMs: READY_TIMEOUT_MS, intervalMs: 50, message: () => `${size - 1} followers; logs:\n${members.map(m => m.logTail(10)).join('\n')}` })
    } else {
      await Promise.all(members.map(m => m.serving()))
    }
  } catch (err) {
    await ensemble.close()
    throw err
  }
  return ensemble
}

/**
 * A free port below Linux's ephemeral range (32768 and up): a server killed and started again must find
 * its ports free, and an outgoing connection elsewhere, which takes its local port from that range, could
 * hold one of them meanwhile.
 */
async function fixedPort (): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    const free = await new Promise<boolean>(resolve => {
      const server = net.createServer()
      server.once('error', () => resolve(false))
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
    })
    if (free) return port
  }
}

class Member implements EnsembleMember {
  #child: ChildProcess | undefined
  #exited: Promise<void> = Promise.resolve()
  #paused = false
  readonly #logFile: string

  constructor (readonly id: number, readonly clientPort: number, readonly dir: string) {
    this.#logFile = path.join(dir, 'zookeeper.log')
  }

  get running (): boolean {
    return this.#child !== undefined && isRunning(this.#child)
  }

  async mode (): Promise<string | undefined> {
    if (!this.running) return undefined
    return /^Mode: (\w+)/m.exec(await fourLetterWord(this.clientPort, 'srvr', 1000))?.[1]
  }

  spawn (): void {
    const fd = openSync(this.#logFile, 'a')
    try {
      this.#child = spawn('java', [
        '-Xmx128m', '-XX:+UseSerialGC', '-XX:TieredStopAtLevel=1',
        // An election waits this long for each peer's connection (5 s by default): with a hung peer
        // (SIGSTOP), whose kernel takes the connection and whose process never answers, the others
        // took 20 s and more under load to elect a new leader.
        '-Dzookeeper.cnxTimeout=1000',
        '-cp', `${ZOOKEEPER_JAR}:${SLF4J_JAR}`,
        'org.apache.zookeeper.server.quorum.QuorumPeerMain', path.join(this.dir, 'zoo.cfg'),
      ], { cwd: this.dir, stdio: ['ignore', fd, fd] })
    } finally {
      closeSync(fd)
    }
    const child = this.#child
    track(child)
    this.#exited = new Promise<void>(resolve => {
      child.once('exit', () => resolve())
      child.once('error', () => resolve())
    })
  }

  /** Resolves once it serves as leader or follower. */
  async serving (): Promise<void> {
    await eventually(async () => {
      if (!this.running) throw new Error(`server ${this.id} exited`)
      const mode = await this.mode()
      return mode === 'leader' || mode === 'follower'
    }, { timeoutMs: READY_TIMEOUT_MS, intervalMs: 50, message: () => `server ${this.id} serving; log:\n${this.logTail()}` })
  }

  async kill (): Promise<void> {
    if (!this.running) return
    this.#child!.kill('SIGKILL')
    await this.#exited
  }

  pause (): void {
    if (!this.running) throw new Error(`server ${this.id} is not running`)
    this.#child!.kill('SIGSTOP')
    this.#paused = true
  }

  resume (): void {
    if (this.running) this.#child!.kill('SIGCONT')
    this.#paused = false
  }

  async start (): Promise<void> {
    if (this.running) return
    this.spawn()
    await this.serving()
  }

  async stop (): Promise<void> {
    if (!this.running) return
    const child = this.#child!
    child.kill('SIGTERM')
    // A stopped JVM handles SIGTERM only once it runs again.
    if (this.#paused) this.resume()
    const timer = setTimeout(() => { if (isRunning(child)) child.kill('SIGKILL') }, 5000)
    await this.#exited
    clearTimeout(timer)
  }

  logTail (lines = 40): string {
    try {
      return readFileSync(this.#logFile, 'utf8').split('\n').slice(-lines - 1).join('\n')
    } catch {
      return '(no log)'
    }
  }
}
