/**
 * Re-checks the mutants a Stryker run reports alive (`npm run mutate:recheck -- <run>`,
 * after `npm run mutate`): each one is applied by hand, the run's whole test set runs
 * against it (no per-test coverage), and the file is put back. Stryker's vitest runner
 * with `coverageAnalysis: "perTest"` sometimes credits a mutant's code to no test or the
 * wrong one (tests whose effects run after vitest moved on to the next test), and then
 * reports a mutant alive that the tests kill; what survives here survives the tests.
 *
 * `<run>` is `decisions`, `pg` or `cli`, as `EVENTFOLD_MUTATE` (reports/mutation/<run>.json);
 * any further arguments are vitest filters, to run only the tests that reach the mutated
 * module (`npm run mutate:recheck -- pg EventStore PgPool`).
 * Run it on a clean tree: it edits files in place and puts them back.
 */
import { spawnSync } from "node:child_process"
import * as Fs from "node:fs"

interface Location {
  readonly line: number
  readonly column: number
}

interface Report {
  readonly files: Record<
    string,
    {
      readonly source: string
      readonly mutants: ReadonlyArray<{
        readonly mutatorName: string
        readonly replacement: string
        readonly status: string
        readonly location: { readonly start: Location; readonly end: Location }
      }>
    }
  >
}

const run = process.argv[2]
if (run !== "decisions" && run !== "pg" && run !== "cli") {
  console.error("usage: npm run mutate:recheck -- decisions|pg|cli [vitest filters]")
  process.exit(2)
}
const filters = process.argv.slice(3)
const report: Report = JSON.parse(Fs.readFileSync(`reports/mutation/${run}.json`, "utf8"))

// Stopped midway (Ctrl-C, a signal): the mutated file is put back before leaving. A signal
// reaches the tests' process too, or is handled between two runs of them.
let stopped = false
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    stopped = true
  })
}
const between = () => new Promise<void>((resolve) => setImmediate(resolve))

let killed = 0
const survivors: Array<string> = []
const main = async () => {
  for (const [file, { source, mutants }] of Object.entries(report.files)) {
    const original = Fs.readFileSync(file, "utf8")
    if (original !== source) {
      console.error(`${file} changed since the report: run Stryker again`)
      process.exit(2)
    }
    const lines = original.split("\n")
    const offset = (at: Location) =>
      lines.slice(0, at.line - 1).reduce((n, line) => n + line.length + 1, 0) + at.column - 1
    for (const mutant of mutants.filter((m) => m.status === "Survived" || m.status === "NoCoverage")) {
      const from = offset(mutant.location.start)
      const to = offset(mutant.location.end)
      const shown = `${file}:${mutant.location.start.line} ${mutant.mutatorName} ${JSON.stringify(original.slice(from, to)).slice(0, 80)} -> ${JSON.stringify(mutant.replacement).slice(0, 60)}`
      Fs.writeFileSync(file, original.slice(0, from) + mutant.replacement + original.slice(to))
      try {
        // A mutant counts as killed when the tests fail twice: a test that timed out once on a
        // loaded machine does not kill it.
        const fails = () => {
          const tests = spawnSync(
            "npx",
            ["vitest", "run", "--config", "vitest.mutate.config.ts", "--bail", "1", ...filters],
            { env: { ...process.env, EVENTFOLD_MUTATE: run }, encoding: "utf8", timeout: 600_000 }
          )
          if (tests.signal === "SIGINT" || tests.signal === "SIGTERM") stopped = true
          return tests.status !== 0
        }
        const outcome = fails() && fails()
        if (stopped) break
        if (!outcome) {
          survivors.push(shown)
          console.log(`survived  ${shown}`)
        } else {
          killed++
          console.log(`killed    ${shown}`)
        }
      } finally {
        Fs.writeFileSync(file, original)
      }
      await between()
      if (stopped) break
    }
    if (stopped) {
      console.error("stopped: every file is back as it was")
      process.exit(130)
    }
  }
}

main().then(
  () => {
    console.log(
      `\n${killed} of ${killed + survivors.length} reported alive are killed by the tests; ${survivors.length} survive:`
    )
    for (const survivor of survivors) console.log(`  ${survivor}`)
  },
  (error: unknown) => {
    console.error(error)
    process.exit(2)
  }
)
