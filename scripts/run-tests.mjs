#!/usr/bin/env node
// Runs tap 21 on the given test files or directories (default: test/unit test/integration), streams its
// raw TAP output, and ends with one plain line CI can read:
//
//   N passed, N failed, N skipped
//
// Where the counts come from: tap's runner closes its raw TAP stream with a comment holding its root
// counts, printed with util.format, e.g. `# { total: 24, pass: 23, fail: 1, skip: 2, todo: 1 }` (keys whose
// value is 0, other than total and pass, are left out). Those counts are per *test point*: every assertion
// (t.ok, t.equal, ...) plus every subtest or test file that reports a result of its own without child
// assertions to carry it (a skipped subtest, a file whose process crashed, exited non-zero or timed out,
// a file with no tests at all, which counts as a skip). Subtests that merely summarise their assertions
// are not counted again. "skipped" here is tap's skip + todo. We only read that line (unindented, so it
// cannot come from a test file, whose output tap indents), plus top-level `not ok` lines for the fallback
// below.
//
// Exit status: tap's own when it failed; otherwise non-zero when no test point passed or failed (nothing
// ran) or when the counts line is missing or unreadable. If tap fails while its counts show no failure
// (e.g. a failed coverage check), the summary reports at least one failure, so the line never says
// "0 failed" next to a red exit.
//
// Usage: node scripts/run-tests.mjs [paths...] [-- extra tap args]
//   Arguments starting with "-" are passed to tap as they are (e.g. --grep=expiry, --bail).
//   Directories are expanded to their *.test.{ts,mts,js,mjs} files (fixture, fixtures, dist and
//   node_modules folders skipped), so helpers living next to tests are never run as tests.

import { spawn } from 'node:child_process'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const DEFAULT_PATHS = ['test/unit', 'test/integration']
const TEST_FILE = /\.test\.(ts|mts|js|mjs)$/
const SKIP_DIRS = new Set(['node_modules', 'fixture', 'fixtures', 'dist', '.tap'])
// Explicit, so the behaviour doesn't depend on .taprc (which mirrors these for direct `npx tap` runs).
const TAP_FLAGS = [
  '--reporter=tap',
  // Integration tests exercise code in child processes; see .taprc.
  '--disable-coverage',
  '--timeout=300',
  '--jobs=2',
]

function main() {
  const args = process.argv.slice(2)
  const dashdash = args.indexOf('--')
  const before = dashdash === -1 ? args : args.slice(0, dashdash)
  const extra = [...before.filter((a) => a.startsWith('-')), ...(dashdash === -1 ? [] : args.slice(dashdash + 1))]
  const requested = before.filter((a) => !a.startsWith('-'))
  const paths = requested.length > 0 ? requested : DEFAULT_PATHS

  let files
  try {
    files = paths.flatMap((p) => expand(p))
  } catch (err) {
    return finish(2, null, `run-tests: ${err instanceof Error ? err.message : String(err)}`)
  }
  if (files.length === 0) return finish(1, null, `run-tests: no test files found in ${paths.join(', ')}`)

  let tapBin
  try {
    tapBin = resolveTapBin()
  } catch (err) {
    return finish(2, null, `run-tests: tap is not installed (run npm ci): ${err instanceof Error ? err.message : String(err)}`)
  }
  const env = { ...process.env }
  // tap prints its counts only when it is the root runner, not when it thinks it is a child test.
  delete env.TAP_CHILD_ID
  const child = spawn(process.execPath, [tapBin, 'run', ...TAP_FLAGS, ...extra, ...files], {
    cwd: root,
    env,
    stdio: ['inherit', 'pipe', 'inherit'],
  })

  // Ctrl-C reaches tap too (same process group); let it stop its children and report, then summarise.
  process.on('SIGINT', () => {})
  process.on('SIGTERM', () => child.kill('SIGTERM'))

  const parser = new TopLevelTap()
  child.stdout.on('data', (chunk) => {
    process.stdout.write(chunk)
    parser.write(chunk.toString('utf8'))
  })
  child.on('error', (err) => finish(1, null, `run-tests: cannot start tap: ${err.message}`))
  child.on('close', (code, signal) => {
    parser.end()
    const tapFailed = code !== 0
    const counts = parser.counts()
    const notes = []
    if (signal) notes.push(`run-tests: tap was killed by ${signal}`)
    else if (tapFailed) notes.push(`run-tests: tap exited with code ${code}`)
    if (!counts) {
      notes.push('run-tests: could not find or parse tap\'s final "# { total: ... }" counts line')
      return finish(tapFailed && code ? code : 1, null, notes.join('\n'))
    }
    let { pass, fail, skip } = counts
    if (tapFailed && fail === 0) {
      fail = Math.max(1, parser.failedTopLevel)
      notes.push(`run-tests: tap failed but reported no failed test point; counting ${fail} failure(s) (see the top-level "not ok" lines above)`)
    }
    let status = tapFailed ? code || 1 : 0
    if (pass + fail === 0) {
      notes.push('run-tests: no test ran')
      status = status || 1
    }
    return finish(status, { pass, fail, skip }, notes.join('\n'))
  })
}

function finish(status, counts, note) {
  if (note) process.stderr.write(`${note}\n`)
  const c = counts ?? { pass: 0, fail: 0, skip: 0 }
  process.stdout.write(`\n${c.pass} passed, ${c.fail} failed, ${c.skip} skipped\n`)
  process.exitCode = status
}

/** The given file, or the sorted *.test.* files under the given directory. */
function expand(p) {
  const abs = path.resolve(root, p)
  let st
  try {
    st = statSync(abs)
  } catch {
    throw new Error(`no such test file or directory: ${p}`)
  }
  if (st.isFile()) return [path.relative(root, abs)]
  const found = []
  const walk = (dir) => {
    for (const entry of readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const full = path.join(dir, entry.name)
      if (entry.isDirectory()) {
        if (!SKIP_DIRS.has(entry.name)) walk(full)
      } else if (TEST_FILE.test(entry.name)) {
        found.push(path.relative(root, full))
      }
    }
  }
  walk(abs)
  return found
}

function resolveTapBin() {
  const require = createRequire(path.join(root, 'package.json'))
  const pkgPath = require.resolve('tap/package.json')
  const pkg = JSON.parse(readFileSync(pkgPath, 'utf8'))
  const bin = typeof pkg.bin === 'string' ? pkg.bin : pkg.bin.tap
  return path.join(path.dirname(pkgPath), bin)
}

/** Reads the runner's raw TAP: only unindented lines belong to the root (test files' output is indented). */
class TopLevelTap {
  #partial = ''
  #countsText = null
  #collecting = null
  failedTopLevel = 0

  write(text) {
    const lines = (this.#partial + text).split('\n')
    this.#partial = lines.pop() ?? ''
    for (const line of lines) this.#line(line.replace(/\r$/, ''))
  }

  end() {
    if (this.#partial) this.#line(this.#partial)
    this.#partial = ''
  }

  #line(line) {
    if (this.#collecting !== null) {
      // util.format may wrap a long object over several lines, each prefixed with "# ".
      if (line.startsWith('# ')) {
        this.#collecting += ` ${line.slice(2)}`
        if (line.trimEnd().endsWith('}')) this.#done()
        return
      }
      this.#collecting = null
    }
    if (/^not ok \d+/.test(line)) this.failedTopLevel++
    if (/^# \{/.test(line)) {
      this.#collecting = line.slice(2)
      if (line.trimEnd().endsWith('}')) this.#done()
    }
  }

  #done() {
    this.#countsText = this.#collecting
    this.#collecting = null
  }

  /** { pass, fail, skip } from the last counts line, skip including todo; null if absent or unreadable. */
  counts() {
    const text = this.#countsText
    if (text === null) return null
    const values = {}
    for (const m of text.matchAll(/(\w+):\s*(\d+)/g)) values[m[1]] = Number(m[2])
    if (values.total === undefined || values.pass === undefined) return null
    const pass = values.pass
    const fail = values.fail ?? 0
    const skip = (values.skip ?? 0) + (values.todo ?? 0)
    return { pass, fail, skip, total: values.total }
  }
}

main()
