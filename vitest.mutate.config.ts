/**
 * The tests `npm run mutate` (Stryker) runs against each mutant, one vitest project per
 * Stryker configuration (Stryker runs a single project):
 *
 * - `EVENTFOLD_MUTATE=decisions`: the pure modules that decide correctness, against
 *   their unit tests and the memory conformance suites (no database);
 * - `EVENTFOLD_MUTATE=pg`: the PostgreSQL modules whose SQL carries those decisions,
 *   against the PostgreSQL conformance suites and the pg package's store and pool tests
 *   (`DATABASE_URL`, or embedded);
 * - `EVENTFOLD_MUTATE=cli`: what the eventfold command prints and how it ends, against
 *   the cli package's unit tests (the binary's own tests, test/cli, take minutes).
 *
 * The fault suites are left out: they test recovery, not these decisions, and take
 * minutes.
 */
import { defineConfig, defineProject, mergeConfig } from "vitest/config"
import { databaseSetup, shared } from "./vitest.shared.js"

const decisions = [
  "packages/core/test/**/*.test.ts",
  "packages/pg/test/appendDecision.test.ts",
  "packages/pg/test/horizon.test.ts",
  "test/conformance/*.memory.test.ts"
]

const pg = [
  // The PostgreSQL modules' own tests: stream heads and their repair, retries after a dropped connection.
  "packages/pg/test/PgEventStore.test.ts",
  "packages/pg/test/PgPool.test.ts",
  "test/conformance/EventStore.pg.test.ts",
  "test/conformance/CheckpointStore.pg.test.ts",
  "test/conformance/DeadLetterQueue.pg.test.ts",
  "test/conformance/Outbox.pg.test.ts"
]

const cli = ["packages/cli/test/*.test.ts"]

const suites: Record<string, ReadonlyArray<string>> = { decisions, pg, cli }

const project = mergeConfig(shared, defineProject({ test: { name: "mutate", globalSetup: [databaseSetup] } }))
// Replaced after the merge: mergeConfig would add these to the shared config's include.
project.test = { ...project.test, include: [...(suites[process.env.EVENTFOLD_MUTATE ?? "decisions"] ?? decisions)] }

// One inline project: without `projects`, vitest would pick up vitest.workspace.ts and run every project.
export default defineConfig({ test: { projects: [project] } })
