/**
 * Tenant isolation enforced by PostgreSQL: a real role that is neither superuser, nor
 * BYPASSRLS, nor the tables' owner (row-level security binds none of those), given
 * `PgMigrations.tenantRoleGrants` and, for the worst case, every other privilege on the
 * tenant tables. Through the API in a tenant scope and through plain SQL on the role's
 * own connections (never changing the tenant setting), no row of another tenant can be
 * read or written. The guarantee protects against application bugs; code that sets
 * another tenant's id on purpose is that tenant, and these tests do not try it.
 */
import { randomBytes } from "node:crypto"
import * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import { assert, describe, it } from "@effect/vitest"
import { Aggregate, AggregateRepository, EventStore, ExpectedVersion } from "@eventfold/core"
import { PgDeadLetterQueue, PgMigrations } from "@eventfold/pg"
import { NoteWritten, registry } from "@eventfold/testing/EventStoreSuite"
import * as Chunk from "effect/Chunk"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Stream from "effect/Stream"
import * as PgClients from "../support/pgClients.js"
import * as TestDatabase from "../support/TestDatabase.js"

const uuid = () => crypto.randomUUID()
const collect = <A, E>(s: Stream.Stream<A, E>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)
const note = (text: string): EventStore.EventToAppend => ({ event: NoteWritten.make({ text }) })

/** The tables whose rows belong to tenants (migration 12). */
const tables = [
  "events",
  "event_streams",
  "event_outbox",
  "projection_checkpoints",
  "dead_letter_queue",
  "snapshots"
] as const

/** A row of `table` for `tenant` (a uuid literal, or NULL), with everything else made up. */
const insertRow = (table: (typeof tables)[number], tenant: string): string => {
  switch (table) {
    case "events":
      return `INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id, version, timestamp, payload)
              VALUES (gen_random_uuid(), gen_random_uuid(), 'Seed', 'NoteWritten', ${tenant}, 1, now(), '{"text":"x"}')`
    case "event_streams":
      return `INSERT INTO event_streams (aggregate_id, aggregate_type, tenant_id, version)
              VALUES (gen_random_uuid(), 'Seed', ${tenant}, 1)`
    case "event_outbox":
      return `INSERT INTO event_outbox (event_id, event_type, aggregate_id, aggregate_type, tenant_id, event_data)
              VALUES (gen_random_uuid(), 'NoteWritten', gen_random_uuid(), 'Seed', ${tenant}, '{}')`
    case "projection_checkpoints":
      return `INSERT INTO projection_checkpoints (projection_name, tenant_id) VALUES ('seed-' || gen_random_uuid(), ${tenant})`
    case "dead_letter_queue":
      return `INSERT INTO dead_letter_queue (event_id, projection_name, event_type, event_data, error_message, tenant_id)
              VALUES (gen_random_uuid(), 'seed', 'NoteWritten', '{}', 'seeded', ${tenant})`
    case "snapshots":
      return `INSERT INTO snapshots (aggregate_id, aggregate_type, version, state, tenant_id)
              VALUES (gen_random_uuid(), 'Seed', 1, '{}', ${tenant})`
  }
}

const Notebook = Aggregate.make({
  type: "Notebook",
  events: [NoteWritten],
  initialState: (): ReadonlyArray<string> => [],
  evolve: (state, event) => [...state, event.text]
})
const write = (text: string) =>
  Aggregate.command(Notebook, () => Effect.succeed([NoteWritten.make({ text })]))(undefined)

/**
 * A database migrated by the superuser (who owns the tables), seeded with rows of tenant
 * A, tenant B and no tenant in every tenant table, and a fresh role the policies bind.
 */
const setup = Effect.gen(function* () {
  const server = TestDatabase.serverUrl()
  const role = `eventfold_rls_${randomBytes(6).toString("hex")}`
  // A password of its own: the embedded server (a fresh machine's) authenticates by password.
  const password = randomBytes(12).toString("hex")
  // Made before the database, so dropped after it (the database holds the role's grants).
  yield* Effect.acquireRelease(
    TestDatabase.withClient(server, (c) =>
      c.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}' NOSUPERUSER NOBYPASSRLS NOINHERIT`)
    ),
    () =>
      TestDatabase.withClient(server, (c) => c.query(`DROP ROLE IF EXISTS ${role}`)).pipe(
        Effect.catchAll((error) => Effect.logWarning(`could not drop role ${role}`, error))
      )
  )
  const url = yield* TestDatabase.fresh
  const admin = yield* PgClients.connect("sql", url, { poolSize: 2, maxOverflow: 2 })
  yield* PgMigrations.run.pipe(Effect.provide(admin.context))
  const [tenantA, tenantB] = [uuid(), uuid()]
  const adminStore = yield* admin.makeStore({ registry, outbox: true })
  // A's stream through the API (events, head, outbox), and rows of A, B and no tenant in every table.
  const streamA = { aggregateId: uuid(), aggregateType: "Notebook" }
  yield* adminStore.append(streamA, [note("A1"), note("A2")], {
    expectedVersion: ExpectedVersion.noStream,
    tenantId: tenantA
  })
  yield* TestDatabase.withClient(url, async (c) => {
    for (const table of tables) {
      for (const tenant of [`'${tenantA}'`, `'${tenantB}'`, "NULL"]) await c.query(insertRow(table, tenant))
    }
    await c.query(PgMigrations.tenantRoleGrants(role))
    // The worst case: every privilege on the tenant tables. Only the policies stand in the way.
    await c.query(`GRANT ALL ON ${tables.join(", ")} TO ${role}`)
    await c.query(`GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ${role}`)
  })
  const roleUrl = new URL(url)
  roleUrl.username = role
  roleUrl.password = password
  /** What the superuser sees: every row of every table, by tenant. */
  const census = TestDatabase.withClient(url, async (c) => {
    const counts: Record<string, string> = {}
    for (const table of tables) {
      const { rows } = await c.query<{ tenant: string | null; n: string; digest: string }>(
        `SELECT tenant_id::text AS tenant, count(*)::text AS n, md5(string_agg(t::text, ',' ORDER BY t::text)) AS digest
           FROM ${table} t GROUP BY tenant_id ORDER BY tenant_id`
      )
      for (const row of rows) counts[`${table}/${row.tenant ?? "none"}`] = `${row.n}:${row.digest}`
    }
    return counts
  })
  return { url, roleUrl: roleUrl.toString(), role, tenantA, tenantB, streamA, adminStore, census }
})

/** A probe's statement ran; its savepoint is rolled back all the same. */
class RolledBack extends Data.TaggedError("RolledBack")<{ readonly rows: ReadonlyArray<{ readonly n: number }> }> {}

/** The SQLSTATE a failed statement ended with. */
const sqlState = (error: SqlError): string | undefined => {
  const cause = error.cause
  return typeof cause === "object" && cause !== null && "code" in cause ? String(cause.code) : undefined
}

describe("tenant isolation by row-level security", () => {
  for (const client of ["prepared", "sql"] as const) {
    it.scopedLive(`through the API (${client}): a tenant scope reads and writes only its tenant's rows`, () =>
      Effect.gen(function* () {
        const { adminStore, census, roleUrl, streamA, tenantB } = yield* setup
        const before = yield* census
        const connected = yield* PgClients.connect(client, roleUrl, { poolSize: 2, maxOverflow: 2 })
        const store = yield* connected.makeStore({ registry, outbox: true })
        const sql = yield* Effect.provide(SqlClient.SqlClient, connected.context)

        // No tenant set: the role sees no tenant's rows, and writes none.
        assert.strictEqual((yield* collect(store.readAll())).length, 0)
        assert.strictEqual((yield* collect(store.readStream(streamA))).length, 0)
        const unscoped = yield* Effect.flip(
          store.append({ aggregateId: uuid(), aggregateType: "Notebook" }, [note("nobody")], {
            expectedVersion: ExpectedVersion.any,
            tenantId: tenantB
          })
        )
        assert.strictEqual(unscoped._tag, "EventStoreError")

        // Tenant B's scope.
        const scopedB = yield* store.forTenant(tenantB)
        const streamB = { aggregateId: uuid(), aggregateType: "Notebook" }
        yield* scopedB.append(streamB, [note("B1")], { expectedVersion: ExpectedVersion.noStream })
        yield* scopedB.append(streamB, [note("B2"), note("B3")], { expectedVersion: ExpectedVersion.exact(1) })
        assert.deepStrictEqual(
          (yield* collect(scopedB.readStream(streamB))).map((e) => [e.version, e.tenantId]),
          [
            [1, tenantB],
            [2, tenantB],
            [3, tenantB]
          ]
        )
        assert.strictEqual((yield* collect(scopedB.readStream(streamA))).length, 0)
        assert.strictEqual((yield* collect(scopedB.readStreamEvents(streamA))).length, 0)
        // The log in B's scope: B's three events, and the seeded B event.
        const log = yield* collect(scopedB.readAll())
        assert.strictEqual(log.length, 4)
        assert.isTrue(log.every((e) => e.tenantId === tenantB))
        // Live: the subscription's horizon works for a role that owns nothing.
        const live = yield* collect(scopedB.subscribe().pipe(Stream.take(4)))
        assert.deepStrictEqual(
          live.map((e) => e.eventId),
          log.map((e) => e.eventId)
        )
        // Every kind of append to A's stream is the typed error, and writes nothing.
        for (const expectedVersion of [
          ExpectedVersion.any,
          ExpectedVersion.noStream,
          ExpectedVersion.streamExists,
          ExpectedVersion.exact(2),
          ExpectedVersion.exact(0)
        ]) {
          for (const events of [[note("intruder")], [note("intruder 1"), note("intruder 2")]]) {
            const error = yield* Effect.flip(scopedB.append(streamA, events, { expectedVersion }))
            assert.strictEqual(error._tag, "TenantMismatchError", `${expectedVersion._tag} x${events.length}`)
          }
          // In a transaction of the caller's too, which the error does not abort.
          yield* sql.withTransaction(
            Effect.gen(function* () {
              const error = yield* Effect.flip(scopedB.append(streamA, [note("intruder")], { expectedVersion }))
              assert.strictEqual(error._tag, "TenantMismatchError")
              yield* scopedB.append(streamB, [note("in tx")], { expectedVersion: ExpectedVersion.any })
            })
          )
        }
        // Replaying A's ids from B's scope is no replay; an id of A's in a stream of B's is taken.
        const storedA = yield* collect(adminStore.readStream(streamA))
        const replay = yield* Effect.flip(
          scopedB.append(
            streamA,
            storedA.map((e) => ({ event: e.event, eventId: e.eventId })),
            { expectedVersion: ExpectedVersion.noStream }
          )
        )
        assert.strictEqual(replay._tag, "TenantMismatchError")
        const taken = yield* Effect.flip(
          scopedB.append(streamB, [{ ...note("taken id"), eventId: storedA[0]!.eventId }], {
            expectedVersion: ExpectedVersion.any
          })
        )
        assert.strictEqual(taken._tag, "DuplicateEventError")

        // A repository in B's scope: A's aggregate does not load, and saving over it fails typed.
        yield* Effect.gen(function* () {
          const repo = yield* AggregateRepository.make(Notebook)
          assert.strictEqual((yield* Effect.flip(repo.load(streamA.aggregateId)))._tag, "StreamNotFoundError")
          const saved = yield* Effect.flip(
            repo.create(streamA.aggregateId).pipe(write("B's note"), Effect.flatMap(repo.save))
          )
          assert.strictEqual(saved._tag, "TenantMismatchError")
          const own = yield* repo.load(streamB.aggregateId)
          assert.strictEqual(own.version, 3 + 5)
        }).pipe(EventStore.withTenant(tenantB), Effect.provideService(EventStore.EventStore, store))

        // The tenant setting of the lean path ended with its statement: plain SQL on the
        // same pool, after all that, sees nothing.
        const [visible] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM events`
        assert.strictEqual(visible!.n, 0)

        // A's rows, and those of no tenant, are exactly as they were; B has its new rows.
        const after = yield* census
        for (const [key, value] of Object.entries(before)) {
          if (!key.includes(tenantB)) assert.strictEqual(after[key], value, key)
        }
        const outboxB = yield* adminStore.readAll({ tenantId: tenantB }).pipe(
          collect,
          Effect.map((events) => events.length)
        )
        assert.strictEqual(outboxB, 1 + 3 + 5)
        assert.strictEqual(after[`event_outbox/${tenantB}`]?.split(":")[0], String(1 + 3 + 5))
      })
    )
  }

  it.scopedLive("a dead letter keeps its event's tenant, so a bound role sees it in that tenant's scope only", () =>
    Effect.gen(function* () {
      const { adminStore, roleUrl, streamA, tenantA, tenantB, url } = yield* setup
      const admin = yield* PgClients.connect("sql", url, { poolSize: 1, maxOverflow: 1 })
      const dlq = yield* Effect.provide(PgDeadLetterQueue.make, admin.context)
      const [recorded] = yield* collect(adminStore.readStream(streamA))
      const { event, ...envelope } = recorded!
      yield* dlq.add("tenant-projection", { ...envelope, payload: { ...event } }, { message: "failed", attempts: 1 })
      const [row] = yield* TestDatabase.withClient(url, (c) =>
        c.query<{ tenant: string }>(`SELECT tenant_id::text AS tenant FROM dead_letter_queue
                                      WHERE projection_name = 'tenant-projection'`)
      ).pipe(Effect.map((result) => result.rows))
      assert.strictEqual(row?.tenant, tenantA)
      // The bound role, in a transaction of each tenant's (as a tenant scope sets it).
      const role = yield* PgClients.connect("sql", roleUrl, { poolSize: 1, maxOverflow: 1 })
      const sql = yield* Effect.provide(SqlClient.SqlClient, role.context)
      const seen = (tenant: string) =>
        sql.withTransaction(
          Effect.zipRight(
            sql`SELECT set_config('eventfold.tenant_id', ${tenant}, true)`,
            sql<{
              n: number
            }>`SELECT count(*)::int AS n FROM dead_letter_queue WHERE projection_name = 'tenant-projection'`
          )
        )
      assert.strictEqual((yield* seen(tenantA))[0]?.n, 1)
      assert.strictEqual((yield* seen(tenantB))[0]?.n, 0)
    })
  )

  it.scopedLive("through plain SQL on the role's connection: 0 rows of another tenant readable or writable", () =>
    Effect.gen(function* () {
      const { census, roleUrl, tenantA, tenantB } = yield* setup
      const before = yield* census
      const connected = yield* PgClients.connect("sql", roleUrl, { poolSize: 2, maxOverflow: 2 })
      const sql = yield* Effect.provide(SqlClient.SqlClient, connected.context)
      const store = yield* connected.makeStore({ registry })
      const scopedB = yield* store.forTenant(tenantB)

      /** Runs `statement` under a savepoint that is always rolled back: its SQLSTATE when it failed, else its rows. */
      const attempt = (statement: string) =>
        sql
          .withTransaction(
            Effect.flatMap(sql.unsafe<{ n: number }>(statement), (rows) => Effect.fail(new RolledBack({ rows })))
          )
          .pipe(
            Effect.flip,
            Effect.map((outcome) =>
              outcome._tag === "RolledBack"
                ? { failed: undefined, rows: outcome.rows }
                : { failed: sqlState(outcome), rows: [] }
            )
          )
      const countOf = (statement: string) =>
        Effect.map(sql.unsafe<{ n: number }>(statement), (rows) => rows[0]?.n ?? Number.NaN)

      // No tenant set (autocommit statements): nothing is visible, nothing can be written.
      for (const table of tables) {
        assert.strictEqual(yield* countOf(`SELECT count(*)::int AS n FROM ${table}`), 0, table)
        for (const tenant of [`'${tenantA}'`, "NULL"]) {
          const inserted = yield* attempt(insertRow(table, tenant))
          assert.strictEqual(inserted.failed, "42501", `${table}: insert for ${tenant} without a tenant`)
        }
        const updated = yield* attempt(`WITH u AS (UPDATE ${table} SET tenant_id = tenant_id RETURNING 1)
                                         SELECT count(*)::int AS n FROM u`)
        assert.strictEqual(updated.rows[0]?.n, 0, table)
        const deleted = yield* attempt(`WITH d AS (DELETE FROM ${table} RETURNING 1) SELECT count(*)::int AS n FROM d`)
        assert.strictEqual(deleted.rows[0]?.n, 0, table)
      }

      // In a transaction where the library set tenant B (by an append in B's scope), plain
      // SQL that leaves the setting alone sees B's rows and no other's.
      yield* sql.withTransaction(
        Effect.gen(function* () {
          yield* scopedB.append({ aggregateId: uuid(), aggregateType: "Notebook" }, [note("B")], {
            expectedVersion: ExpectedVersion.noStream
          })
          const [setting] = yield* sql<{ tenant: string }>`SELECT current_setting('eventfold.tenant_id') AS tenant`
          assert.strictEqual(setting!.tenant, tenantB)
          for (const table of tables) {
            assert.strictEqual(
              yield* countOf(`SELECT count(*)::int AS n FROM ${table} WHERE tenant_id IS DISTINCT FROM '${tenantB}'`),
              0,
              table
            )
            assert.isAbove(yield* countOf(`SELECT count(*)::int AS n FROM ${table}`), 0, table)
            // Another tenant's rows, or rows of none: not insertable, not reachable by UPDATE or DELETE.
            for (const tenant of [`'${tenantA}'`, "NULL"]) {
              const inserted = yield* attempt(insertRow(table, tenant))
              assert.strictEqual(inserted.failed, "42501", `${table}: insert for ${tenant}`)
            }
            const updated = yield* attempt(`WITH u AS (UPDATE ${table} SET tenant_id = tenant_id
                                                        WHERE tenant_id IS DISTINCT FROM '${tenantB}' RETURNING 1)
                                             SELECT count(*)::int AS n FROM u`)
            assert.strictEqual(updated.rows[0]?.n, 0, table)
            const deleted = yield* attempt(`WITH d AS (DELETE FROM ${table}
                                                        WHERE tenant_id IS DISTINCT FROM '${tenantB}' RETURNING 1)
                                             SELECT count(*)::int AS n FROM d`)
            assert.strictEqual(deleted.rows[0]?.n, 0, table)
            // B's rows cannot be handed to another tenant either.
            const moved = yield* attempt(`UPDATE ${table} SET tenant_id = '${tenantA}'`)
            assert.strictEqual(moved.failed, "42501", `${table}: moving B's rows to A`)
            // An unfiltered DELETE reaches B's rows only (rolled back with its savepoint).
            const everything = yield* attempt(`WITH d AS (DELETE FROM ${table} RETURNING tenant_id)
                                                SELECT count(*)::int AS n FROM d WHERE tenant_id IS DISTINCT FROM '${tenantB}'`)
            assert.strictEqual(everything.rows[0]?.n, 0, table)
          }
        })
      )

      // Nothing of A's, or of no tenant's, changed.
      const after = yield* census
      for (const [key, value] of Object.entries(before)) {
        if (!key.includes(tenantB)) assert.strictEqual(after[key], value, key)
      }
    })
  )
})
