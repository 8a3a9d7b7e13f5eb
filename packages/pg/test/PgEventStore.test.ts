import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
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
      // Each parameter's type and a value to plan with, by name (statements bind by name).
      const parameters: Record<keyof AppendSql.Parameters, readonly [string, string]> = {
        aggregateId: ["uuid", "gen_random_uuid()"],
        aggregateType: ["varchar", "'Order'"],
        tenantId: ["uuid", "NULL"],
        actorId: ["varchar", "NULL"],
        metadata: ["jsonb", "NULL"],
        expected: ["int", "3"],
        count: ["int", "2"],
        eventId: ["uuid", "gen_random_uuid()"],
        eventType: ["varchar", "'Placed'"],
        timestamp: ["timestamptz", "now()"],
        payload: ["jsonb", "'{}'"],
        events: ["jsonb", "'[]'"],
        eventIds: ["uuid[]", "ARRAY[gen_random_uuid(), gen_random_uuid()]"],
        lastVersion: ["int", "3"]
      }
      const planOf = (statement: AppendSql.Statement) =>
        plan(
          statement.name,
          statement.params.map((name) => parameters[name][0]).join(", "),
          statement.text,
          statement.params.map((name) => parameters[name][1]).join(", ")
        )
      const checked: Array<string> = []
      for (const base of ["exact", "noStream", "any", "streamExists"] as const) {
        for (const shape of ["single", "batch"] as const) {
          for (const outbox of [false, true]) {
            const statement = AppendSql.appendStatement(base, shape, outbox)
            const text = yield* planOf(statement)
            assert.notMatch(text, /Seq Scan/, `${statement.name}:\n${text}`)
            // The stream's head is the only thing read: events are inserted, never scanned.
            assert.notMatch(text, /Scan.* on events|using idx_events|using events_/, `${statement.name}:\n${text}`)
            if (base === "exact" || base === "streamExists") {
              assert.match(text, /Index Scan using pk_event_streams/, `${statement.name}:\n${text}`)
            }
            checked.push(statement.name)
          }
        }
      }
      assert.strictEqual(new Set(checked).size, 16)
      const explain = yield* planOf(AppendSql.explainStatement)
      assert.notMatch(explain, /Seq Scan/, explain)
      assert.match(explain, /Index Scan using events_event_id_key/, explain)
      assert.match(explain, /Index Only Scan Backward using idx_events_aggregate_version/, explain)
      assert.match(explain, /Index Scan using pk_event_streams/, explain)
      const head = yield* planOf(AppendSql.headStatement)
      assert.notMatch(head, /Seq Scan|Sort/, head)
      assert.match(head, /Index Scan using pk_event_streams/, head)
      assert.match(head, /Index Only Scan using events_event_id_key/, head)
      assert.match(head, /Index Only Scan Backward using idx_events_aggregate_version/, head)
      const repair = yield* planOf(AppendSql.repairStatement)
      assert.notMatch(repair, /Seq Scan|Sort/, repair)

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
 * Every stream has a head (`event_streams`) that the append moves in the same
 * statement as it inserts the events: it serializes the stream's writers and outlives
 * the stream's events.
 */
describe("stream heads", () => {
  const Placed = Event.make("Placed", { number: Schema.String })
  const registry = EventRegistry.make(Placed)
  const placed = (number: string) => [{ event: Placed.make({ number }) }]

  const setup = Effect.gen(function* () {
    const url = yield* TestDatabase.fresh
    const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2 }))
    yield* PgMigrations.run.pipe(Effect.provide(context))
    const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
    const store = (options: { readonly retry?: Schedule.Schedule<unknown, unknown> } = {}) =>
      PgEventStore.makePrepared({ registry, ...options }).pipe(Effect.provide(context))
    const versions = (aggregateId: string) =>
      sql<{ version: number }>`SELECT version FROM events WHERE aggregate_id = ${aggregateId} ORDER BY version`.pipe(
        Effect.map((rows) => rows.map((row) => row.version))
      )
    const head = (aggregateId: string) =>
      sql<{ version: number }>`SELECT version FROM event_streams WHERE aggregate_id = ${aggregateId}`.pipe(
        Effect.map((rows) => rows[0]?.version)
      )
    return { sql, store, versions, head, context }
  })

  it.scopedLive("an append that rolls back with the caller's transaction leaves the head where it was", () =>
    Effect.gen(function* () {
      const { sql, store: makeStore, versions, head, context } = yield* setup
      const store = yield* makeStore()
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* store.append(stream, placed("1"), { expectedVersion: ExpectedVersion.noStream })
      const rolledBack = yield* sql
        .withTransaction(
          Effect.gen(function* () {
            yield* store.append(stream, placed("2"), { expectedVersion: ExpectedVersion.exact(1) })
            const seen = yield* Stream.runCollect(store.readStream(stream))
            assert.strictEqual(Chunk.size(seen), 2)
            return yield* Effect.fail("roll back" as const)
          })
        )
        .pipe(Effect.provide(context), Effect.flip)
      assert.strictEqual(rolledBack, "roll back")
      assert.strictEqual(yield* head(stream.aggregateId), 1)
      const error = yield* Effect.flip(store.append(stream, placed("3"), { expectedVersion: ExpectedVersion.exact(2) }))
      assert.strictEqual(error._tag === "ConcurrencyError" && error.actualVersion, 1)
      assert.deepStrictEqual(yield* versions(stream.aggregateId), [1])
    })
  )

  it.scopedLive("a writer that lost a race is told the version now, whichever store won", () =>
    Effect.gen(function* () {
      const { store: makeStore, versions } = yield* setup
      const [mine, theirs] = [yield* makeStore(), yield* makeStore()]
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* mine.append(stream, placed("1"), { expectedVersion: ExpectedVersion.noStream })
      yield* mine.append(stream, placed("2"), { expectedVersion: ExpectedVersion.exact(1) })
      yield* theirs.append(stream, placed("3"), { expectedVersion: ExpectedVersion.exact(2) })
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
      const noStream = yield* Effect.flip(
        mine.append(stream, placed("n"), { expectedVersion: ExpectedVersion.noStream })
      )
      assert.strictEqual(noStream._tag === "ConcurrencyError" && noStream.actualVersion, 3)
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
              return yield* mine.append(stream, placed("x"), { expectedVersion: ExpectedVersion.any })
            })
          )
          .pipe(Effect.provide(context), Effect.flip)
        assert.strictEqual(error._tag, "EventStoreError")
        assert.include(error.message, "could not serialize")
        assert.deepStrictEqual(yield* versions(stream.aggregateId), [1, 2])
      })
  )

  it.scopedLive("the head outlives the events: a stream whose events were deleted never reuses a version", () =>
    Effect.gen(function* () {
      const { sql, store: makeStore, versions } = yield* setup
      const store = yield* makeStore()
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* store.append(stream, [...placed("1"), ...placed("2"), ...placed("3")], {
        expectedVersion: ExpectedVersion.noStream
      })
      // The spec's archive SQL moves old events away with a plain DELETE.
      yield* sql`DELETE FROM events WHERE aggregate_id = ${stream.aggregateId}`
      const noStream = yield* Effect.flip(
        store.append(stream, placed("x"), { expectedVersion: ExpectedVersion.noStream })
      )
      assert.strictEqual(noStream._tag === "ConcurrencyError" && noStream.actualVersion, 3)
      const result = yield* store.append(stream, placed("4"), { expectedVersion: ExpectedVersion.any })
      assert.strictEqual(result.version, 4)
      assert.deepStrictEqual(yield* versions(stream.aggregateId), [4])
    })
  )

  it.scopedLive("events written around the store raise the head: no conflict is lost, no version doubled", () =>
    Effect.gen(function* () {
      const { sql, store: makeStore, versions, head } = yield* setup
      const store = yield* makeStore()
      const written = (aggregateId: string, version: number) =>
        sql`INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
            VALUES (gen_random_uuid(), ${aggregateId}, 'Order', 'Placed', ${version}, now(), '{"number":"sql"}')`
      // A stream the store never saw, and one whose head is behind.
      const fresh = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* written(fresh.aggregateId, 1)
      yield* written(fresh.aggregateId, 2)
      for (const expectedVersion of [ExpectedVersion.noStream, ExpectedVersion.exact(1)]) {
        const error = yield* Effect.flip(store.append(fresh, placed("x"), { expectedVersion }))
        assert.strictEqual(error._tag === "ConcurrencyError" && error.actualVersion, 2, String(error))
      }
      assert.strictEqual(yield* head(fresh.aggregateId), 2)
      assert.strictEqual(
        (yield* store.append(fresh, placed("3"), { expectedVersion: ExpectedVersion.exact(2) })).version,
        3
      )
      const behind = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* store.append(behind, placed("1"), { expectedVersion: ExpectedVersion.noStream })
      yield* written(behind.aggregateId, 2)
      assert.strictEqual(
        (yield* store.append(behind, placed("3"), { expectedVersion: ExpectedVersion.any })).version,
        3
      )
      // A single event whose expectation holds of the stream's events, as its first append
      // through the store: the head is raised first, then the event lands after them.
      const unseen = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* written(unseen.aggregateId, 1)
      yield* written(unseen.aggregateId, 2)
      assert.strictEqual(
        (yield* store.append(unseen, placed("3"), { expectedVersion: ExpectedVersion.exact(2) })).version,
        3
      )
      const existing = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      yield* written(existing.aggregateId, 1)
      assert.strictEqual(
        (yield* store.append(existing, placed("2"), { expectedVersion: ExpectedVersion.streamExists })).version,
        2
      )
      assert.deepStrictEqual(yield* versions(fresh.aggregateId), [1, 2, 3])
      assert.deepStrictEqual(yield* versions(behind.aggregateId), [1, 2, 3])
      assert.deepStrictEqual(yield* versions(unseen.aggregateId), [1, 2, 3])
      assert.deepStrictEqual(yield* versions(existing.aggregateId), [1, 2])
      assert.strictEqual(yield* head(unseen.aggregateId), 3)
      assert.strictEqual(yield* head(existing.aggregateId), 2)
    })
  )

  it.scopedLive("with no retry left, an append that had to raise the head is a ConcurrencyError at that head", () =>
    Effect.gen(function* () {
      const { sql, store: makeStore, versions, head } = yield* setup
      const once = yield* makeStore({ retry: Schedule.stop })
      const s = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
      for (const version of [1, 2]) {
        yield* sql`INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
            VALUES (gen_random_uuid(), ${s.aggregateId}, 'Order', 'Placed', ${version}, now(), '{"number":"sql"}')`
      }
      // The head is raised to the stream's events, and the append would go again: the
      // schedule allows no second try, so the caller learns where the stream is.
      const error = yield* Effect.flip(once.append(s, placed("3"), { expectedVersion: ExpectedVersion.exact(2) }))
      assert.deepInclude(error, { _tag: "ConcurrencyError", actualVersion: 2 })
      assert.strictEqual(yield* head(s.aggregateId), 2)
      assert.strictEqual((yield* once.append(s, placed("3"), { expectedVersion: ExpectedVersion.exact(2) })).version, 3)
      assert.deepStrictEqual(yield* versions(s.aggregateId), [1, 2, 3])
    })
  )
})
