import * as Fs from "node:fs"
import * as Path from "node:path"
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

const schemaFile = Path.join(import.meta.dirname, "..", "sql", "schema.sql")

/** A pool on a fresh database, for the duration of the scope. */
const freshDatabase = Effect.gen(function* () {
  const url = yield* TestDatabase.fresh
  return yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 2, maxOverflow: 4 }))
})

const withSql = <A, E>(f: (sql: SqlClient.SqlClient) => Effect.Effect<A, E>) => Effect.flatMap(SqlClient.SqlClient, f)

/** Everything about the schema that a program can observe, in a stable order. */
const catalog = withSql((sql) =>
  Effect.all({
    columns: sql`
      SELECT table_name, column_name, data_type, character_maximum_length, is_nullable, column_default
      FROM information_schema.columns WHERE table_schema = 'public'
      ORDER BY table_name, ordinal_position`,
    constraints: sql`
      SELECT conrelid::regclass::text AS table_name, conname, pg_get_constraintdef(oid) AS definition
      FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2`,
    indexes: sql`SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2`,
    functions: sql`
      SELECT proname, pg_get_function_identity_arguments(oid) AS args, md5(prosrc) AS body
      FROM pg_proc WHERE pronamespace = 'public'::regnamespace ORDER BY 1, 2`,
    migrations: sql`SELECT migration_id, name FROM eventfold_migrations ORDER BY migration_id`
  })
)

// The spec's own setup_database(): the table and the three indexes it creates.
const specDdl = `
CREATE TABLE IF NOT EXISTS events (
global_position BIGSERIAL PRIMARY KEY,
event_id UUID NOT NULL UNIQUE,
aggregate_id UUID NOT NULL,
aggregate_type VARCHAR(255) NOT NULL,
event_type VARCHAR(255) NOT NULL,
tenant_id UUID,
actor_id VARCHAR(255),
version INTEGER NOT NULL,
timestamp TIMESTAMP WITH TIME ZONE NOT NULL,
payload JSONB NOT NULL,
created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
CONSTRAINT uq_events_aggregate_version
UNIQUE (aggregate_id, aggregate_type, version)
);
CREATE INDEX IF NOT EXISTS idx_events_aggregate_id
ON events(aggregate_id);
CREATE INDEX IF NOT EXISTS idx_events_aggregate_type
ON events(aggregate_type);
CREATE INDEX IF NOT EXISTS idx_events_timestamp
ON events(timestamp);
`

const OrderCreated = Event.make("OrderCreated", { customer_id: Schema.String, total: Schema.Number })

describe("PgMigrations", () => {
  it.scopedLive("the migrations and the plain SQL file produce the same catalog, and both are idempotent", () =>
    Effect.gen(function* () {
      const migrated = yield* freshDatabase
      const applied = yield* PgMigrations.run.pipe(Effect.provide(migrated))
      assert.isAbove(applied.length, 0)
      assert.deepStrictEqual(yield* PgMigrations.run.pipe(Effect.provide(migrated)), [])
      const fromMigrations = yield* catalog.pipe(Effect.provide(migrated))

      const fromFile = yield* freshDatabase
      const script = Fs.readFileSync(schemaFile, "utf8")
      yield* withSql((sql) => sql.unsafe(script)).pipe(Effect.provide(fromFile))
      yield* withSql((sql) => sql.unsafe(script)).pipe(Effect.provide(fromFile))
      // The Migrator sees the file's record and has nothing left to do.
      assert.deepStrictEqual(yield* PgMigrations.run.pipe(Effect.provide(fromFile)), [])
      const fromScript = yield* catalog.pipe(Effect.provide(fromFile))

      assert.deepStrictEqual(fromScript, fromMigrations)
      assert.strictEqual(script, PgMigrations.schemaSql(), "sql/schema.sql is stale: run `npm run schema`")
      const indexes = fromMigrations.indexes.map((row) => row.indexname)
      for (const name of [
        "idx_events_aggregate_id",
        "idx_events_aggregate_type",
        "idx_events_event_type",
        "idx_events_timestamp",
        "idx_events_tenant_id",
        "idx_events_type_tenant_timestamp",
        "idx_events_aggregate_version",
        "idx_outbox_pending"
      ]) {
        assert.include(indexes, name)
      }
      assert.include(
        fromMigrations.constraints.map((row) => row.conname),
        "uq_events_aggregate_version"
      )
      assert.include(
        fromMigrations.constraints.map((row) => row.conname),
        "chk_outbox_status"
      )
    })
  )

  it.scopedLive("adopts a database made with the spec's own DDL: adds what is missing, keeps the rows", () =>
    Effect.gen(function* () {
      const reference = yield* freshDatabase
      yield* PgMigrations.run.pipe(Effect.provide(reference))
      const expected = yield* catalog.pipe(Effect.provide(reference))

      const legacy = yield* freshDatabase
      const aggregateId = crypto.randomUUID()
      yield* withSql((sql) =>
        Effect.zipRight(
          sql.unsafe(specDdl),
          sql`INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
              VALUES (${crypto.randomUUID()}, ${aggregateId}, 'Order', 'OrderCreated', 1, NOW(),
                      '{"customer_id": "cust-123", "total": 299.99}'::jsonb)`
        )
      ).pipe(Effect.provide(legacy))
      yield* PgMigrations.run.pipe(Effect.provide(legacy))
      assert.deepStrictEqual(yield* catalog.pipe(Effect.provide(legacy)), expected)

      const events = yield* Effect.flatMap(PgEventStore.make({ registry: EventRegistry.make(OrderCreated) }), (store) =>
        Stream.runCollect(store.readStream({ aggregateId, aggregateType: "Order" }))
      ).pipe(Effect.provide(legacy))
      assert.deepStrictEqual(
        Chunk.toReadonlyArray(events).map((e): unknown => e.event),
        [{ _tag: "OrderCreated", customer_id: "cust-123", total: 299.99 }]
      )
      // The stream stored before the heads existed has its head, taken from its events.
      const heads = yield* withSql(
        (sql) => sql`SELECT version FROM event_streams WHERE aggregate_id = ${aggregateId}`
      ).pipe(Effect.provide(legacy))
      assert.deepStrictEqual(heads, [{ version: 1 }])
      const appended = yield* Effect.flatMap(
        PgEventStore.make({ registry: EventRegistry.make(OrderCreated) }),
        (store) =>
          Effect.all([
            Effect.flip(
              store.append(
                { aggregateId, aggregateType: "Order" },
                [{ event: OrderCreated.make({ customer_id: "cust-123", total: 1 }) }],
                { expectedVersion: ExpectedVersion.noStream }
              )
            ),
            store.append(
              { aggregateId, aggregateType: "Order" },
              [{ event: OrderCreated.make({ customer_id: "cust-123", total: 2 }) }],
              { expectedVersion: ExpectedVersion.exact(1) }
            )
          ])
      ).pipe(Effect.provide(legacy))
      assert.deepInclude(appended[0], { _tag: "ConcurrencyError", actualVersion: 1 })
      assert.strictEqual(appended[1].version, 2)
    })
  )

  it.scopedLive("concurrent runs apply each migration once", () =>
    Effect.gen(function* () {
      // The full list: what one run applies to an empty database.
      const all = yield* PgMigrations.run.pipe(Effect.provide(yield* freshDatabase))
      assert.isAbove(all.length, 0)
      const ids = all.map(([id]) => id)

      const database = yield* freshDatabase
      const results = yield* Effect.all([PgMigrations.run, PgMigrations.run, PgMigrations.run], {
        concurrency: "unbounded"
      }).pipe(Effect.provide(database))
      // Between them the runs applied every migration, none twice.
      const applied = results.flat()
      assert.deepStrictEqual(
        applied.map(([id]) => id).sort((a, b) => a - b),
        ids,
        `applied by the concurrent runs: ${JSON.stringify(results)}`
      )
      assert.deepStrictEqual(
        [...applied].sort(([a], [b]) => a - b),
        [...all]
      )
      const recorded = yield* withSql(
        (sql) =>
          sql<{ id: number; n: number }>`
          SELECT migration_id AS id, count(*)::int AS n FROM eventfold_migrations
           GROUP BY migration_id ORDER BY migration_id`
      ).pipe(Effect.provide(database))
      assert.deepStrictEqual(
        recorded.map((r) => [r.id, r.n]),
        ids.map((id) => [id, 1])
      )
      // And the schema is whole: a later run has nothing left to do.
      assert.deepStrictEqual(yield* PgMigrations.run.pipe(Effect.provide(database)), [])
    })
  )

  it.scopedLive("a migration that cannot apply is a typed MigrationError and changes nothing", () =>
    Effect.gen(function* () {
      const database = yield* freshDatabase
      // An unrelated table already named "events", without the columns the indexes need.
      yield* withSql((sql) => sql`CREATE TABLE events (id serial PRIMARY KEY)`).pipe(Effect.provide(database))
      const error = yield* Effect.flip(PgMigrations.run.pipe(Effect.provide(database)))
      assert.strictEqual(error._tag, "MigrationError")
      assert.include(error.message, "events")
      const tables = yield* withSql(
        (sql) =>
          sql<{
            n: number
          }>`SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'events' AND tablename <> 'eventfold_migrations'`
      ).pipe(Effect.provide(database))
      assert.strictEqual(tables[0]!.n, 0)
    })
  )
})

describe("the spec's SQL runs unchanged on a migrated database", () => {
  // Each statement as the spec prints it; only SQLAlchemy's :name parameters become $n.
  const monitoring = [
    "SELECT COUNT(*) AS total_events FROM events;",
    "SELECT aggregate_type, COUNT(*) AS count\nFROM events\nGROUP BY aggregate_type\nORDER BY count DESC;",
    "SELECT DATE(timestamp) AS date, COUNT(*) AS events\nFROM events\nWHERE timestamp >= CURRENT_DATE - INTERVAL '7 days'\nGROUP BY DATE(timestamp)\nORDER BY date DESC;",
    "SELECT aggregate_id, aggregate_type, COUNT(*) AS event_count\nFROM events\nGROUP BY aggregate_id, aggregate_type\nORDER BY event_count DESC\nLIMIT 10;",
    "SELECT\npg_size_pretty(pg_total_relation_size('events')) AS total_size,\npg_size_pretty(pg_relation_size('events')) AS table_size,\npg_size_pretty(pg_total_relation_size('events') - pg_relation_size('events')) AS index_size;",
    // The spec's index-usage query selects tablename/indexname, which pg_stat_user_indexes has
    // never had (it fails with 42703 on any PostgreSQL); this is it with the view's real columns.
    "SELECT\nschemaname,\nrelname AS tablename,\nindexrelname AS indexname,\nidx_scan AS scans,\nidx_tup_read AS tuples_read,\nidx_tup_fetch AS tuples_fetched\nFROM pg_stat_user_indexes\nWHERE relname = 'events'\nORDER BY idx_scan DESC;"
  ]
  const jsonb = [
    "CREATE INDEX idx_events_payload_customer_id\nON events ((payload->>'customer_id'));",
    "CREATE INDEX idx_events_payload_gin\nON events USING GIN (payload);"
  ]
  const maintenance = ["VACUUM ANALYZE events;", "REINDEX TABLE events;", "ANALYZE events;"]
  const archive = [
    "CREATE TABLE events_archive (LIKE events INCLUDING ALL);",
    "INSERT INTO events_archive\nSELECT * FROM events\nWHERE timestamp < NOW() - INTERVAL '1 year';",
    "DELETE FROM events\nWHERE timestamp < NOW() - INTERVAL '1 year';",
    "VACUUM ANALYZE events;"
  ]

  it.scopedLive("monitoring, JSONB, outbox worker, maintenance and archive", () =>
    Effect.gen(function* () {
      const database = yield* freshDatabase
      yield* PgMigrations.run.pipe(Effect.provide(database))
      const registry = EventRegistry.make(OrderCreated)
      const store = yield* PgEventStore.make({ registry }).pipe(Effect.provide(database))
      const old = new Date(Date.now() - 400 * 24 * 3600 * 1000)
      yield* store.append(
        { aggregateId: crypto.randomUUID(), aggregateType: "Order" },
        [
          { event: OrderCreated.make({ customer_id: "cust-123", total: 10 }), timestamp: old },
          { event: OrderCreated.make({ customer_id: "cust-456", total: 20 }) }
        ],
        { expectedVersion: ExpectedVersion.any }
      )
      yield* Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        for (const statement of [...monitoring, ...jsonb]) yield* sql.unsafe(statement)
        const [count] = yield* sql.unsafe<{ total_events: unknown }>(monitoring[0]!)
        assert.strictEqual(String(count!.total_events), "2")

        const byCustomer = yield* sql.unsafe<{ event_type: string; payload: { customer_id: string } }>(
          "SELECT event_id, event_type, payload\nFROM events\nWHERE payload->>'customer_id' = $1",
          ["cust-123"]
        )
        assert.strictEqual(byCustomer.length, 1)
        assert.strictEqual(byCustomer[0]!.payload.customer_id, "cust-123")

        // The outbox worker's three statements, inside its transaction.
        yield* sql`INSERT INTO event_outbox (event_id, event_type, aggregate_id, aggregate_type, event_data)
                   VALUES (${crypto.randomUUID()}, 'OrderCreated', ${crypto.randomUUID()}, 'Order', '{}'::jsonb)`
        yield* sql.withTransaction(
          Effect.gen(function* () {
            const pending = yield* sql.unsafe<{ id: string }>(
              "SELECT id, event_id, event_type, event_data\nFROM event_outbox\nWHERE status = 'pending'\nORDER BY created_at ASC\nLIMIT 100\nFOR UPDATE SKIP LOCKED"
            )
            assert.strictEqual(pending.length, 1)
            yield* sql.unsafe(
              "UPDATE event_outbox\nSET retry_count = retry_count + 1,\nlast_error = $1,\nstatus = CASE\nWHEN retry_count >= 5 THEN 'failed'\nELSE 'pending'\nEND\nWHERE id = $2",
              ["broker down", pending[0]!.id]
            )
            yield* sql.unsafe("UPDATE event_outbox\nSET status = 'published',\npublished_at = NOW()\nWHERE id = $1", [
              pending[0]!.id
            ])
          })
        )

        for (const statement of [...maintenance, ...archive]) yield* sql.unsafe(statement)
        const archived = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM events_archive`
        assert.strictEqual(archived[0]!.n, 1)
        const left = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM events`
        assert.strictEqual(left[0]!.n, 1)
      }).pipe(Effect.provide(database))

      // The store still works on the archived and re-indexed table.
      const after = yield* Stream.runCollect(store.readAll({ aggregateTypes: ["Order"] }))
      assert.strictEqual(after.length, 1)
      const more = yield* store.append(
        { aggregateId: crypto.randomUUID(), aggregateType: "Order" },
        [{ event: OrderCreated.make({ customer_id: "cust-789", total: 30 }) }],
        { expectedVersion: ExpectedVersion.noStream }
      )
      assert.strictEqual(more.version, 1)
    })
  )
})
