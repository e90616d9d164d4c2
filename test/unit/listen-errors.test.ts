// A listen that fails because of its address becomes FLEETGATE_ERR_LISTEN naming the setting; any other
// failure passes through as it is.

import { createServer } from 'node:net'
import t from 'tap'
import { isFleetgateError, listenFor } from '../../src/errors.ts'

/** Listens a fresh server on `host`, port 0, and closes it again if that worked. */
async function listenOn (host: string): Promise<void> {
  const server = createServer()
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, host, () => resolve())
  })
  await new Promise(resolve => server.close(resolve))
}

// Without IPv6 at all the kernel refuses an IPv6 address for another reason.
const ipv6 = await listenOn('::1').then(() => true, () => false)

t.test('an IPv6 multicast address takes no listener (EINVAL): a listen error naming the setting', { skip: ipv6 ? false : 'no IPv6 on this host' }, async t => {
  const err = await listenFor('--listen', () => listenOn('ff02::1')).then(() => undefined, (e: unknown) => e)
  t.ok(isFleetgateError(err, 'FLEETGATE_ERR_LISTEN'), `FLEETGATE_ERR_LISTEN, not a stack trace: ${String(err)}`)
  t.match((err as Error).message, /--listen: listen EINVAL/, 'naming the setting and what the kernel said')
})

t.test('an address in use: a listen error naming the setting', async t => {
  const taken = createServer()
  await new Promise<void>(resolve => taken.listen(0, '127.0.0.1', () => resolve()))
  t.teardown(() => new Promise(resolve => taken.close(resolve)))
  const { port } = taken.address() as { port: number }
  const err = await listenFor('--admin-listen', async () => {
    const server = createServer()
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, '127.0.0.1', () => resolve())
    })
  }).then(() => undefined, (e: unknown) => e)
  t.ok(isFleetgateError(err, 'FLEETGATE_ERR_LISTEN'))
  t.match((err as Error).message, /--admin-listen: listen EADDRINUSE/)
})

t.test('any other failure passes through unchanged', async t => {
  const own = new Error('not a listen error')
  const err = await listenFor('--listen', () => Promise.reject(own)).then(() => undefined, (e: unknown) => e)
  t.equal(err, own)
})
