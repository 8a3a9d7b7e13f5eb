/**
 * Mutants Stryker cannot make: bugs inside SQL text and in the few rules whose loss a
 * review found no test noticed (issue 11). Each mutant replaces one exact piece of a
 * source file; the tests it names must then fail. `npm run mutate:sql` applies them one
 * at a time, runs the tests, restores the file, and exits non-zero when a mutant
 * survives (or no longer applies: the source changed and the list must follow).
 *
 * Run it on a clean tree: it edits files in place and puts them back.
 */
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"

interface Mutant {
  readonly name: string
  readonly file: string
  readonly from: string
  readonly to: string
  readonly tests: ReadonlyArray<string>
}

const eventStore = ["test/conformance/EventStore.pg.test.ts", "test/conformance/EventStore.memory.test.ts"]

const mutants: ReadonlyArray<Mutant> = [
  {
    name: "replay without ids at consecutive versions (PostgreSQL)",
    file: "packages/pg/src/internal/appendDecision.ts",
    from: "base === row.base_max &&",
    to: "true &&",
    tests: ["test/conformance/EventStore.pg.test.ts", "packages/pg/test/appendDecision.test.ts"]
  },
  {
    name: "replay without ids at consecutive versions (memory)",
    file: "packages/core/src/internal/memoryEventStore.ts",
    from: "stored.version === first.version + i",
    to: "stored.version >= first.version",
    tests: ["test/conformance/EventStore.memory.test.ts"]
  },
  {
    name: "checkpoint save from the expected position without its forward guard (PostgreSQL)",
    file: "packages/pg/src/PgCheckpointStore.ts",
    from: "AND c.global_position < ${input.position}",
    to: "",
    tests: ["test/conformance/CheckpointStore.pg.test.ts"]
  },
  {
    name: "checkpoint save without its forward guard (memory)",
    file: "packages/core/src/CheckpointStore.ts",
    from: "if (current !== undefined && input.position <= current.position) return [Effect.succeed(current), map]",
    to: "",
    tests: ["test/conformance/CheckpointStore.memory.test.ts"]
  },
  {
    name: "outbox claim without 'the aggregate's first unpublished entry is free'",
    file: "packages/pg/src/PgOutbox.ts",
    from: "AND (SELECT h.id = o.id OR (h.status = 'pending'",
    to: "AND (SELECT true OR (h.status = 'pending'",
    tests: ["test/conformance/Outbox.pg.test.ts"]
  },
  {
    name: "dead letter re-added overwrites retry_count",
    file: "packages/pg/src/PgDeadLetterQueue.ts",
    from: "retry_count = d.retry_count + EXCLUDED.retry_count",
    to: "retry_count = EXCLUDED.retry_count",
    tests: ["test/conformance/DeadLetterQueue.pg.test.ts"]
  },
  {
    name: "dead letter re-added does not reopen a resolved one",
    file: "packages/pg/src/PgDeadLetterQueue.ts",
    from: "status = 'failed', resolved_at = NULL, resolved_by = NULL,",
    to: "",
    tests: ["test/conformance/DeadLetterQueue.pg.test.ts"]
  },
  {
    name: "a page of a stream read without its aggregate type",
    file: "packages/pg/src/internal/readSql.ts",
    from: '.where(`aggregate_type = ${query.param(stream.aggregateType, "varchar")}`)',
    to: "",
    tests: eventStore.slice(0, 1)
  },
  {
    name: "a stream folded without its aggregate type",
    file: "packages/pg/src/internal/readSql.ts",
    from: "WHERE aggregate_id = $1::uuid AND aggregate_type = $2::varchar AND version >= $3::int",
    to: "WHERE aggregate_id = $1::uuid AND $2::varchar IS NOT NULL AND version >= $3::int",
    tests: eventStore.slice(0, 1)
  },
  {
    name: "an exact append that does not check the head's version",
    file: "packages/pg/src/internal/appendSql.ts",
    from: 'WHERE ${stream} AND version = ${bind("expected", "int")}',
    to: 'WHERE ${stream} AND ${bind("expected", "int")} IS NOT NULL',
    tests: eventStore.slice(0, 1)
  },
  {
    name: "noStream that updates an existing head",
    file: "packages/pg/src/internal/appendSql.ts",
    from: ': "NOTHING"',
    to: ': "UPDATE SET version = s.version + EXCLUDED.version, updated_at = now()"',
    tests: eventStore.slice(0, 1)
  },
  {
    name: "an append that moves another tenant's head (exact, streamExists)",
    file: "packages/pg/src/internal/appendSql.ts",
    from: "const ownTenant = `tenant_id IS NOT DISTINCT FROM ${tenant}`",
    to: "const ownTenant = `${tenant}::text IS NULL OR true`",
    tests: eventStore.slice(0, 1)
  },
  {
    name: "an any append that moves another tenant's head",
    file: "packages/pg/src/internal/appendSql.ts",
    from: "\\n   WHERE s.tenant_id IS NOT DISTINCT FROM EXCLUDED.tenant_id",
    to: "",
    tests: eventStore.slice(0, 1)
  },
  {
    name: "a lookup blind to another tenant's head past row-level security",
    file: "packages/pg/src/internal/appendSql.ts",
    from: "THEN eventfold_stream_tenant_differs(${id}, ${type}) ELSE false END)",
    to: "THEN false ELSE false END)",
    tests: ["test/tenancy/rowLevelSecurity.pg.test.ts"]
  },
  {
    name: "a stream read in a tenant scope without its tenant filter",
    file: "packages/pg/src/internal/readSql.ts",
    from: 'if (tenantId !== null) query.where(`tenant_id = ${query.param(tenantId, "uuid")}`)',
    to: "",
    tests: eventStore.slice(0, 1)
  },
  {
    name: "the events policy without its WITH CHECK",
    file: "packages/pg/src/internal/migrations.ts",
    // The policies come from one template: the mutant spares every table but events.
    from: "  WITH CHECK (tenant_id = (SELECT nullif(current_setting('eventfold.tenant_id', true), '')::uuid));\n`",
    to: '  WITH CHECK (${table === "events" ? "true" : "tenant_id = (SELECT nullif(current_setting(\'eventfold.tenant_id\', true), \'\')::uuid)"});\n`',
    tests: ["test/tenancy/rowLevelSecurity.pg.test.ts"]
  },
  {
    name: "a stream's tenant not fixed by its first append (memory)",
    file: "packages/core/src/internal/memoryEventStore.ts",
    from: "(events[0] !== undefined && events[0].tenantId !== input.tenantId) ||",
    to: "",
    tests: ["test/conformance/EventStore.memory.test.ts"]
  }
]

const only = process.argv.slice(2)
const survivors: Array<string> = []
for (const mutant of mutants.filter((m) => only.length === 0 || only.some((o) => m.name.includes(o)))) {
  const original = Fs.readFileSync(mutant.file, "utf8")
  const at = original.indexOf(mutant.from)
  if (at < 0 || original.indexOf(mutant.from, at + 1) >= 0) {
    survivors.push(`${mutant.name}: the text to mutate is not found exactly once in ${mutant.file}`)
    continue
  }
  Fs.writeFileSync(mutant.file, original.slice(0, at) + mutant.to + original.slice(at + mutant.from.length))
  let killed = false
  try {
    execFileSync("npx", ["vitest", "run", "--bail=1", ...mutant.tests], { stdio: "ignore" })
  } catch {
    killed = true
  } finally {
    Fs.writeFileSync(mutant.file, original)
  }
  console.log(`${killed ? "killed  " : "SURVIVED"} ${mutant.name}`)
  if (!killed) survivors.push(mutant.name)
}
if (survivors.length > 0) {
  console.error(`\n${survivors.length} mutant(s) not killed:\n- ${survivors.join("\n- ")}`)
  process.exit(1)
}
