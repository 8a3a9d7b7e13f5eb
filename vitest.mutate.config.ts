/**
 * The tests `npm run mutate` (Stryker) runs against each mutant, one vitest project per
 * Stryker configuration (Stryker runs a single project):
 *
 * - `EVENTFOLD_MUTATE=decisions`: the pure modules that decide correctness, against
 *   their unit tests and the memory conformance suites (no database);
 * - `EVENTFOLD_MUTATE=pg`: the PostgreSQL modules whose SQL carries those decisions,
 *   against the PostgreSQL conformance suites (`DATABASE_URL`, or embedded).
 *
 * The fault suites are left out: they test recovery, not these decisions, and take
 * minutes.
 */
import { defineConfig, mergeConfig } from "vitest/config"
import { databaseSetup, shared } from "./vitest.shared.js"

const decisions = [
  "packages/core/test/**/*.test.ts",
  "packages/pg/test/appendDecision.test.ts",
  "packages/pg/test/horizon.test.ts",
  "test/conformance/*.memory.test.ts"
]

const pg = [
  "test/conformance/EventStore.pg.test.ts",
  "test/conformance/CheckpointStore.pg.test.ts",
  "test/conformance/DeadLetterQueue.pg.test.ts",
  "test/conformance/Outbox.pg.test.ts"
]

export default mergeConfig(
  shared,
  defineConfig({
    test:
      process.env.EVENTFOLD_MUTATE === "pg"
        ? { include: pg, globalSetup: [databaseSetup] }
        : { include: decisions, globalSetup: [databaseSetup] }
  })
)
