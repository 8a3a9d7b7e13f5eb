import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
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
      for (const base of ["expected", "known", "contended", "head"] as const) {
        for (const shape of ["single", "batch"] as const) {
          for (const outbox of [false, true]) {
            const statement = AppendSql.appendStatement(base, shape, outbox)
            const expected = base === "head" ? "boolean" : "int"
            const text = yield* plan(
              statement.name,
              shape === "single"
                ? `uuid, varchar, uuid, varchar, ${expected}, uuid, varchar, timestamptz, jsonb`
                : `uuid, varchar, uuid, varchar, ${expected}, jsonb`,
              statement.text,
              `${stream}, ${base === "head" ? "true" : "3"}, ${
                shape === "single" ? "gen_random_uuid(), 'Placed', now(), '{}'" : "'[]'"
              }`
            )
            assert.notMatch(text, /Seq Scan on events/, `${statement.name}:\n${text}`)
            if (base === "known" || base === "contended") {
              // The expected version is known to be stored: nothing of the stream is read.
              assert.notMatch(text, /Scan.* on events|Scan using/, `${statement.name}:\n${text}`)
            } else {
              assert.match(text, /Index Only Scan( Backward)? using idx_events_aggregate_version/, statement.name)
            }
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
      assert.strictEqual(new Set(checked).size, 16)

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

/**
 * An append that expects a version the store saw committed skips reading the stream
 * (internal/knownVersions.ts). What it remembers must never let an append through
 * that the probe would have stopped.
 */
describe("known versions", () => {
  const Placed = Event.make("Placed", { number: Schema.String })
  const registry = EventRegistry.make(Placed)
  const placed = (number: string) => [{ event: Placed.make({ number }) }]

  const setup = Effect.gen(function* () {
    const url = yield* TestDatabase.fresh
    const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
    yield* PgMigrations.run.pipe(Effect.provide(context))
    const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
    const store = () => PgEventStore.make({ registry }).pipe(Effect.provide(context))
    const versions = (aggregateId: string) =>
      sql<{ version: number }>`SELECT version FROM events WHERE aggregate_id = ${aggregateId} ORDER BY version`.pipe(
        Effect.map((rows) => rows.map((row) => row.version))
      )
    return { sql, store, versions, context }
  })

  it.scopedLive("a version written or read in a transaction that rolled back is not trusted", () =>
    Effect.gen(function* () {
      const { sql, store: makeStore, versions, context } = yield* setup
      const store = yield* makeStore()
      for (const how of ["append", "read"] as const) {
        const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
        yield* store.append(stream, placed("1"), { expectedVersion: ExpectedVersion.noStream })
        // Version 2 exists only inside the transaction, which then rolls back.
        const rolledBack = yield* sql
          .withTransaction(
            Effect.gen(function* () {
              yield* store.append(stream, placed("2"), { expectedVersion: ExpectedVersion.exact(1) })
              if (how === "read") {
                const seen = yield* Stream.runCollect(store.readStream(stream))
                assert.strictEqual(Chunk.size(seen), 2)
              }
              return yield* Effect.fail("roll back" as const)
            })
          )
          .pipe(Effect.provide(context), Effect.flip)
        assert.strictEqual(rolledBack, "roll back")
        const error = yield* Effect.flip(
          store.append(stream, placed("3"), { expectedVersion: ExpectedVersion.exact(2) })
        )
        assert.strictEqual(error._tag, "ConcurrencyError")
        assert.strictEqual(error._tag === "ConcurrencyError" && error.actualVersion, 1)
        assert.deepStrictEqual(yield* versions(stream.aggregateId), [1])
      }
    })
  )

  it.scopedLive("a store that knows a version loses to another store's append, and is told the version now", () =>
    Effect.gen(function* () {
      const { store: makeStore, versions } = yield* setup
      const [mine, theirs] = [yield* makeStore(), yield* makeStore()]
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* mine.append(stream, placed("1"), { expectedVersion: ExpectedVersion.noStream })
      yield* mine.append(stream, placed("2"), { expectedVersion: ExpectedVersion.exact(1) })
      yield* theirs.append(stream, placed("3"), { expectedVersion: ExpectedVersion.exact(2) })
      // `mine` knows version 2; 3 is taken. An older expectation fails alike, batches too.
      for (const [expected, events] of [
        [2, placed("x")],
        [1, placed("y")],
        [2, [...placed("z1"), ...placed("z2")]]
      ] as const) {
        const error = yield* Effect.flip(
          mine.append(stream, events, { expectedVersion: ExpectedVersion.exact(expected) })
        )
        assert.strictEqual(error._tag, "ConcurrencyError")
        assert.strictEqual(error._tag === "ConcurrencyError" && error.actualVersion, 3)
      }
      // Told of version 3, it appends after it.
      const result = yield* mine.append(stream, placed("4"), { expectedVersion: ExpectedVersion.exact(3) })
      assert.strictEqual(result.version, 4)
      assert.deepStrictEqual(yield* versions(stream.aggregateId), [1, 2, 3, 4])
    })
  )

  it.scopedLive(
    "in a REPEATABLE READ transaction, a version committed after the snapshot is PostgreSQL's serialization failure",
    () =>
      Effect.gen(function* () {
        const { sql, store: makeStore, versions, context } = yield* setup
        const [mine, theirs] = [yield* makeStore(), yield* makeStore()]
        const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
        yield* mine.append(stream, placed("1"), { expectedVersion: ExpectedVersion.noStream })
        const error = yield* sql
          .withTransaction(
            Effect.gen(function* () {
              yield* sql`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`
              yield* sql`SELECT count(*) FROM events`
              // Committed after the snapshot, by another session.
              yield* Effect.promise(() =>
                Effect.runPromise(theirs.append(stream, placed("2"), { expectedVersion: ExpectedVersion.exact(1) }))
              )
              return yield* mine.append(stream, placed("x"), { expectedVersion: ExpectedVersion.exact(1) })
            })
          )
          .pipe(Effect.provide(context), Effect.flip)
        // Not a conflict "expected version 1, but the stream is at version 1": the snapshot cannot see version 2.
        assert.strictEqual(error._tag, "EventStoreError")
        assert.include(error.message, "could not serialize")
        assert.deepStrictEqual(yield* versions(stream.aggregateId), [1, 2])
      })
  )

  it.scopedLive("a version the store never saw is read from the stream: no gap, with or without the memory", () =>
    Effect.gen(function* () {
      const { context, versions } = yield* setup
      for (const knownVersions of [10_000, 0]) {
        const store = yield* PgEventStore.make({ registry, knownVersions }).pipe(Effect.provide(context))
        const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
        yield* store.append(stream, placed("1"), { expectedVersion: ExpectedVersion.noStream })
        const error = yield* Effect.flip(
          store.append(stream, placed("2"), { expectedVersion: ExpectedVersion.exact(5) })
        )
        assert.strictEqual(error._tag === "ConcurrencyError" && error.actualVersion, 1)
        yield* store.append(stream, placed("2"), { expectedVersion: ExpectedVersion.exact(1) })
        assert.deepStrictEqual(yield* versions(stream.aggregateId), [1, 2])
      }
    })
  )
})
