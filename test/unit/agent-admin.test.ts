// Who may drain an instance through the agent's admin listener: its own host, naming the agent by address.

import t from 'tap'
import { mayChangeMaintenance } from '../../src/agent/admin.ts'

t.test('maintenance changes only from a loopback address, with a Host that is an address or localhost', async t => {
  const cases: Array<[remote: string | undefined, host: string | undefined, allowed: boolean]> = [
    ['127.0.0.1', '127.0.0.1:9902', true],
    ['127.0.0.1', 'localhost:9902', true],
    ['127.0.0.1', 'LOCALHOST', true],
    ['127.1.2.3', '10.0.0.7:9902', true],
    ['::1', '[::1]:9902', true],
    ['::ffff:127.0.0.1', '127.0.0.1:9902', true],
    ['127.0.0.1', undefined, true],
    // From the pod network, or from the host through a published port: not the instance's own host.
    ['10.0.0.8', '10.0.0.7:9902', false],
    ['::ffff:10.0.0.8', '10.0.0.7:9902', false],
    ['172.17.0.1', 'localhost:9902', false],
    ['fe80::1', '[::1]:9902', false],
    [undefined, '127.0.0.1:9902', false],
    // A page whose name was pointed at 127.0.0.1 after it loaded (DNS rebinding).
    ['127.0.0.1', 'attacker.example:9902', false],
    ['127.0.0.1', 'attacker.example', false],
    ['127.0.0.1', 'localhost.attacker.example:9902', false],
  ]
  for (const [remote, host, allowed] of cases) {
    t.equal(mayChangeMaintenance(remote, host), allowed, `from ${remote} with Host ${host}: ${allowed ? 'allowed' : 'refused'}`)
  }
})
