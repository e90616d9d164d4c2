// promtool on the files in deploy/prometheus: the scrape config and the rules are valid, and the alerts'
// unit tests pass. Runs in CI (a missing promtool fails there); skipped with a hint elsewhere.

import { fileURLToPath } from 'node:url'
import t from 'tap'
import { PROMETHEUS_INSTALL_HINT, promtool, requireBinary } from '../helpers/prometheus.ts'

const deploy = (file: string): string => fileURLToPath(new URL(`../../deploy/prometheus/${file}`, import.meta.url))

if (requireBinary(t, 'promtool', PROMETHEUS_INSTALL_HINT)) {
  const cases: Array<[string, string[], RegExp]> = [
    ['promtool check config accepts deploy/prometheus/prometheus.yml', ['check', 'config', deploy('prometheus.yml')], /SUCCESS: .*valid prometheus config/],
    ['promtool check rules accepts deploy/prometheus/rules/fleetgate.rules.yml', ['check', 'rules', deploy('rules/fleetgate.rules.yml')], /SUCCESS: \d+ rules found/],
    ['promtool test rules passes deploy/prometheus/tests/fleetgate.rules.test.yml', ['test', 'rules', deploy('tests/fleetgate.rules.test.yml')], /SUCCESS/],
  ]
  for (const [name, args, success] of cases) {
    t.test(name, async t => {
      const { code, output } = promtool(args)
      if (code !== 0) t.comment(output)
      t.equal(code, 0, `promtool ${args.slice(0, 2).join(' ')} exits 0`)
      t.match(output, success)
      t.notMatch(output, /FAILED/)
    })
  }
}
