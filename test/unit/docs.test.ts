// README is the front door: every flag and every error code must be documented there.

import { readFileSync } from 'node:fs'
import t from 'tap'
import { AgentConfigSchema, kebab, ProxyConfigSchema, snake } from '../../src/config.ts'
import { ERRORS } from '../../src/errors.ts'

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8')

t.test('every flag of every command is in README with its environment variable', async t => {
  for (const schema of [ProxyConfigSchema, AgentConfigSchema]) {
    for (const key of Object.keys(schema.properties)) {
      t.ok(readme.includes(`\`--${kebab(key)}\``), `--${kebab(key)} documented`)
      t.ok(readme.includes(`\`FLEETGATE_${snake(key)}\``), `FLEETGATE_${snake(key)} documented`)
    }
  }
})

t.test('every error code is in README', async t => {
  for (const code of Object.keys(ERRORS)) t.ok(readme.includes(`\`${code}\``), `${code} documented`)
})
