// Mutation testing of the modules that decide correctness (`npm run mutate`): each
// mutant is one deliberate bug, and a test must fail for it. Two runs, chosen by
// EVENTFOLD_MUTATE (see vitest.mutate.config.ts): "decisions" (pure modules, unit and
// memory tests), "pg" (the SQL-bearing modules, PostgreSQL conformance suites) and "cli"
// (what the eventfold command prints and how it ends, against its unit tests).
// Bugs inside SQL text, which Stryker cannot make, are test/mutation/sqlMutants.ts.
//
// Stryker mutates the files in place: workspace packages resolve to their own sources
// through node_modules links, which a sandbox copy would not reach. Do not edit or test
// the tree while it runs.
const run = process.env.EVENTFOLD_MUTATE ?? "decisions"
const pg = run === "pg"

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: "vitest",
  vitest: { configFile: "vitest.mutate.config.ts", related: false },
  coverageAnalysis: "perTest",
  inPlace: true,
  // Only TypeScript gets Stryker's "// @ts-nocheck": in place, its default also rewrote
  // bin/eventfold.js and restored it without its executable bit.
  disableTypeChecks: "**/*.ts",
  concurrency: 2,
  timeoutMS: 30000,
  mutate:
    run === "cli"
      ? [
          "packages/cli/src/internal/errors.ts",
          "packages/cli/src/internal/output.ts",
          "packages/cli/src/internal/progress.ts"
        ]
      : pg
        ? [
            "packages/pg/src/internal/pgAppend.ts",
            "packages/pg/src/PgCheckpointStore.ts",
            "packages/pg/src/PgDeadLetterQueue.ts",
            "packages/pg/src/PgOutbox.ts"
          ]
        : [
            "packages/pg/src/internal/appendDecision.ts",
            "packages/pg/src/internal/horizon.ts",
            "packages/core/src/ExpectedVersion.ts",
            "packages/core/src/CheckpointStore.ts",
            "packages/core/src/internal/memoryEventStore.ts"
          ],
  // The decision modules' strings are messages; a changed message is not a changed decision.
  ...(run === "decisions" ? { mutator: { excludedMutations: ["StringLiteral"] } } : {}),
  reporters: ["clear-text", "progress", "html", "json"],
  htmlReporter: { fileName: `reports/mutation/${run}.html` },
  jsonReporter: { fileName: `reports/mutation/${run}.json` },
  thresholds: { high: 90, low: 80, break: null }
}
