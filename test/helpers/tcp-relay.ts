// A TCP relay on 127.0.0.1 in front of a registry, so a test can cut one client off (down) and let it back
// (up, same port) while the registry itself keeps running and changing.

import net, { type AddressInfo, type Socket } from 'node:net'
import { Transform } from 'node:stream'

export interface Relay {
  /** The relay's port: point the client here. */
  readonly port: number
  readonly isUp: boolean
  /** Stops listening and destroys every relayed connection (both sides). */
  down(): Promise<void>
  /** Listens again on the same port. */
  up(): Promise<void>
  close(): Promise<void>
  /** From now on, what the registry sends is held back (each connection's first chunk held stops it). */
  hold(): void
  /** Passes on what was held, and all that follows. */
  release(): void
  /** Bytes from the registry held back so far, released or not. */
  readonly heldBytes: number
  /** Connections accepted since the relay started. */
  readonly connections: number
  /** Relayed connections still open. */
  readonly openConnections: number
}

export async function startRelay (targetPort: number, targetHost = '127.0.0.1'): Promise<Relay> {
  const sockets = new Set<Socket>()
  let holding = false
  let heldBytes = 0
  let connections = 0
  const clients = new Set<Socket>()
  const held = new Set<() => void>()
  const server = net.createServer(client => {
    connections++
    clients.add(client)
    const upstream = net.connect(targetPort, targetHost)
    // A chunk held is one not yet passed on: the pipe stops reading the registry until it is.
    const gate = new Transform({
      transform (chunk: Buffer, _encoding, done) {
        if (!holding) return done(null, chunk)
        heldBytes += chunk.length
        const pass = (): void => {
          held.delete(pass)
          if (!gate.destroyed) done(null, chunk)
        }
        held.add(pass)
      },
    })
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
      socket.on('error', () => {
        client.destroy()
        upstream.destroy()
      })
    }
    client.pipe(upstream)
    upstream.pipe(gate).pipe(client)
    client.once('close', () => {
      clients.delete(client)
      upstream.destroy()
      gate.destroy()
    })
    upstream.once('close', () => client.destroy())
  })
  let port = 0
  let isUp = false
  const listen = (): Promise<void> => new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject)
      port = (server.address() as AddressInfo).port
      isUp = true
      resolve()
    })
  })
  const down = async (): Promise<void> => {
    if (!isUp) return
    isUp = false
    const closed = new Promise<void>(resolve => server.close(() => resolve()))
    for (const socket of sockets) socket.destroy()
    await closed
  }
  await listen()
  return {
    get port () { return port },
    get isUp () { return isUp },
    down,
    up: async () => { if (!isUp) await listen() },
    close: down,
    hold: () => { holding = true },
    release: () => {
      holding = false
      for (const pass of held) pass()
    },
    get heldBytes () { return heldBytes },
    get connections () { return connections },
    get openConnections () { return clients.size },
  }
}
