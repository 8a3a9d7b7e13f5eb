import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as TestDatabase from "../../../test/support/TestDatabase.js"
import * as AppendSql from "../src/internal/appendSql.js"
import * as ReadSql from "../src/internal/readSql.js"

/**
 * The append's statements are prepared once per connection, and after five runs
 * PostgreSQL may keep a generic plan made whatever the table held then. Planned
 * generically on an empty, never-analysed table (the worst moment), no statement
 * may scan `events` sequentially: each would turn every append into O(table).
 */
describe("append statements", () => {
  it.scopedLive("have index-only generic plans, even planned on an empty table", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.fresh
      const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 1, maxOverflow: 0 }))
      yield* PgMigrations.run.pipe(Effect.provide(context))
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
      const plan = (name: string, types: string, text: string, args: string) =>
        sql.withTransaction(
          Effect.gen(function* () {
            yield* sql.unsafe("SET LOCAL plan_cache_mode = force_generic_plan")
            yield* sql.unsafe(`PREPARE ${name}${types === "" ? "" : `(${types})`} AS ${text}`)
            const rows = yield* sql.unsafe<{ "QUERY PLAN": string }>(`EXPLAIN EXECUTE ${name}(${args})`)
            yield* sql.unsafe(`DEALLOCATE ${name}`)
            return rows.map((row) => row["QUERY PLAN"]).join("\n")
          })
        )
      const stream = "gen_random_uuid(), 'Order', NULL, NULL"
      const checked: Array<string> = []
      for (const base of ["expected", "head"] as const) {
        for (const shape of ["single", "batch"] as const) {
          for (const outbox of [false, true]) {
            const statement = AppendSql.appendStatement(base, shape, outbox)
            const expected = base === "expected" ? "int" : "boolean"
            const text = yield* plan(
              statement.name,
              shape === "single"
                ? `uuid, varchar, uuid, varchar, ${expected}, uuid, varchar, timestamptz, jsonb`
                : `uuid, varchar, uuid, varchar, ${expected}, jsonb`,
              statement.text,
              `${stream}, ${base === "expected" ? "3" : "true"}, ${
                shape === "single" ? "gen_random_uuid(), 'Placed', now(), '{}'" : "'[]'"
              }`
            )
            assert.notMatch(text, /Seq Scan on events/, `${statement.name}:\n${text}`)
            assert.match(text, /Index Only Scan( Backward)? using idx_events_aggregate_version/, statement.name)
            checked.push(statement.name)
          }
        }
      }
      const explain = yield* plan(
        AppendSql.explainStatement.name,
        "uuid, varchar, uuid[]",
        AppendSql.explainStatement.text,
        "gen_random_uuid(), 'Order', ARRAY[gen_random_uuid(), gen_random_uuid()]"
      )
      assert.notMatch(explain, /Seq Scan on events/, explain)
      assert.match(explain, /Index Scan using events_event_id_key/, explain)
      const head = yield* plan(
        AppendSql.headStatement.name,
        "uuid, varchar, uuid",
        AppendSql.headStatement.text,
        "gen_random_uuid(), 'Order', gen_random_uuid()"
      )
      assert.notMatch(head, /Seq Scan on events|Sort/, head)
      assert.match(head, /Index Only Scan Backward using idx_events_aggregate_version/, head)
      assert.match(head, /Index Only Scan using events_event_id_key/, head)
      assert.strictEqual(new Set(checked).size, 8)

      // The named reads: a stream both ways, the log both ways, a subscription's page, a fold.
      const target = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      const reads = [
        ReadSql.streamPage(target, true, 1, 100),
        ReadSql.streamPage(target, false, 100, 1),
        ReadSql.logPage({ direction: "forward" }, 0n),
        ReadSql.logPage({ direction: "backward" }, 100n),
        ReadSql.subscriptionPage({}, 0n, 100n)
      ].map(([query, order]) => ({ ...query.statement(order, 1000), values: query.values }))
      for (const read of [
        ...reads,
        { ...ReadSql.READ_STREAM_EVENTS, values: [target.aggregateId, "Order", 1, 1000] }
      ]) {
        assert.notStrictEqual(read.name, "")
        const literal = read.values.map((v) => `'${String(v)}'`).join(", ")
        const text = yield* plan("read_plan", "", read.text, literal)
        assert.notMatch(text, /Seq Scan on events|Sort/, `${read.text}:\n${text}`)
      }
      // With filters, a read is planned for its values on every run.
      const [filtered] = ReadSql.logPage({ direction: "forward", tenantId: crypto.randomUUID() }, 0n)
      assert.strictEqual(filtered.statement("global_position ASC", 10).name, "")
      const [typed] = ReadSql.subscriptionPage({ aggregateTypes: ["Order"] }, 0n, 10n)
      assert.strictEqual(typed.statement("global_position ASC", 10).name, "")
    })
  )
})

describe("append", () => {
  it.scopedLive(
    "a unique index of the application's is an EventStoreError naming it, never a conflict; a transaction survives it",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
        yield* PgMigrations.run.pipe(Effect.provide(context))
        const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
        // An application that wants one order per number across streams.
        yield* sql.unsafe("CREATE UNIQUE INDEX uq_order_number ON events ((payload->>'number'))")
        const Placed = Event.make("Placed", { number: Schema.String })
        const store = yield* PgEventStore.make({ registry: EventRegistry.make(Placed) }).pipe(Effect.provide(context))
        const order = () => ({ aggregateId: crypto.randomUUID(), aggregateType: "Order" })
        yield* store.append(order(), [{ event: Placed.make({ number: "A-1" }) }], {
          expectedVersion: ExpectedVersion.noStream
        })
        for (const expectedVersion of [ExpectedVersion.noStream, ExpectedVersion.any]) {
          for (const events of [[{ number: "A-1" }], [{ number: "A-2" }, { number: "A-1" }]]) {
            const error = yield* Effect.flip(
              store.append(
                order(),
                events.map((fields) => ({ event: Placed.make(fields) })),
                { expectedVersion }
              )
            )
            assert.strictEqual(error._tag, "EventStoreError", error.message)
            assert.include(error.message, "uq_order_number")
          }
        }
        // In a transaction: the failure is typed and the transaction goes on.
        const marker = crypto.randomUUID()
        yield* sql
          .withTransaction(
            Effect.gen(function* () {
              const error = yield* Effect.flip(
                store.append(order(), [{ event: Placed.make({ number: "A-1" }) }], {
                  expectedVersion: ExpectedVersion.noStream
                })
              )
              assert.strictEqual(error._tag, "EventStoreError")
              yield* store.append(order(), [{ event: Placed.make({ number: marker }) }], {
                expectedVersion: ExpectedVersion.noStream
              })
            })
          )
          .pipe(Effect.provide(context))
        const rows = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM events`
        assert.strictEqual(rows[0]!.n, 2)
      })
  )
})
