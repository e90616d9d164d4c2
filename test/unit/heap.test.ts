import t from 'tap'
import { heapGrowthFlag, HEAP_GROWING_PERCENT } from '../../src/proxy/heap.ts'

t.test('the proxy grows its old generation by 10 % unless node is told otherwise', async t => {
  t.equal(heapGrowthFlag([]), `--heap-growing-percent=${HEAP_GROWING_PERCENT}`)
  t.equal(heapGrowthFlag(['--enable-source-maps', '--max-old-space-size=512']), '--heap-growing-percent=10')
  // Either spelling of the V8 flag on node's command line wins.
  t.equal(heapGrowthFlag(['--heap-growing-percent=50']), undefined)
  t.equal(heapGrowthFlag(['--heap_growing_percent=0']), undefined)
  // A flag that merely starts alike does not.
  t.equal(heapGrowthFlag(['--heap-growing-percentage=50']), '--heap-growing-percent=10')
})
