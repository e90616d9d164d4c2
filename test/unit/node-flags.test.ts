// Which of the proxy's node flags a process still needs: the primary adds them to its workers' node
// arguments, and a single process names the missing ones.

import t from 'tap'
import { missingNodeFlags, PROXY_NODE_FLAGS } from '../../src/proxy/node-flags.ts'

t.test('a node started without them needs all of them', async t => {
  t.same(missingNodeFlags([]), PROXY_NODE_FLAGS)
  t.same(missingNodeFlags(['--max-old-space-size=512', '--enable-source-maps']), PROXY_NODE_FLAGS, 'other flags do not count')
  t.same(missingNodeFlags(['--no-memory-reducer']), ['--no-allocation-site-pretenuring'], 'each flag counts on its own')
})

t.test('a flag given in any of the spellings V8 reads is not added again', async t => {
  for (const spelling of ['--no-memory-reducer', '--no-memory_reducer', '--no_memory_reducer', '--nomemory-reducer']) {
    t.same(missingNodeFlags([spelling, '--no-allocation-site-pretenuring']), [], spelling)
  }
  for (const spelling of ['--no-allocation_site_pretenuring', '--noallocation-site-pretenuring']) {
    t.same(missingNodeFlags(['--no-memory-reducer', spelling]), [], spelling)
  }
})

t.test('an operator who sets the option the other way keeps it', async t => {
  for (const spelling of ['--memory-reducer', '--memory_reducer']) {
    t.same(missingNodeFlags([spelling]), ['--no-allocation-site-pretenuring'], spelling)
  }
  t.same(missingNodeFlags(['--allocation-site-pretenuring']), ['--no-memory-reducer'], '--allocation-site-pretenuring')
  t.same(missingNodeFlags(['--memory-reducer-for-small-heaps']), PROXY_NODE_FLAGS, 'but a longer option is another option')
})
