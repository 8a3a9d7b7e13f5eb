// Mutation testing of the modules that decide correctness (`npm run mutate`): each
// mutant is one deliberate bug, and a test must fail for it. Two runs, chosen by
// EVENTFOLD_MUTATE (see vitest.mutate.config.ts): "decisions" (pure modules, unit and
// memory tests) and "pg" (the SQL-bearing modules, PostgreSQL conformance suites).
// Bugs inside SQL text, which Stryker cannot make, are test/mutation/sqlMutants.ts.
//
// Stryker mutates the files in place: workspace packages resolve to their own sources
// through node_modules links, which a sandbox copy would not reach. Do not edit or test
// the tree while it runs.
const pg = process.env.EVENTFOLD_MUTATE === "pg"

/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: "vitest",
  vitest: { configFile: "vitest.mutate.config.ts", related: false },
  coverageAnalysis: "perTest",
  inPlace: true,
  concurrency: 2,
  timeoutMS: 30000,
  mutate: pg
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
  ...(pg ? {} : { mutator: { excludedMutations: ["StringLiteral"] } }),
  reporters: ["clear-text", "progress", "html", "json"],
  htmlReporter: { fileName: `reports/mutation/${pg ? "pg" : "decisions"}.html` },
  jsonReporter: { fileName: `reports/mutation/${pg ? "pg" : "decisions"}.json` },
  thresholds: { high: 90, low: 80, break: null }
}
