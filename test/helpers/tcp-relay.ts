// A TCP relay on 127.0.0.1 in front of a registry, so a test can cut one client off (down) and let it back
// (up, same port) while the registry itself keeps running and changing.

import net, { type AddressInfo, type Socket } from 'node:net'

export interface Relay {
  /** The relay's port: point the client here. */
  readonly port: number
  readonly isUp: boolean
  /** Stops listening and destroys every relayed connection (both sides). */
  down(): Promise<void>
  /** Listens again on the same port. */
  up(): Promise<void>
  close(): Promise<void>
}

export async function startRelay (targetPort: number, targetHost = '127.0.0.1'): Promise<Relay> {
  const sockets = new Set<Socket>()
  const server = net.createServer(client => {
    const upstream = net.connect(targetPort, targetHost)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.once('close', () => sockets.delete(socket))
      socket.on('error', () => {
        client.destroy()
        upstream.destroy()
      })
    }
    client.pipe(upstream)
    upstream.pipe(client)
    client.once('close', () => upstream.destroy())
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
  }
}
