import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import pg from "pg"
import { eventually } from "../../../test/support/eventually.js"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)
const stream = () => ({ aggregateId: crypto.randomUUID(), aggregateType: "Note" })
const note = [{ event: Noted.make({ text: "x" }) }]

/**
 * An advisory lock of the test's own database (advisory locks are per database),
 * held by a session outside the pool until `open`; `waiters` counts the sessions
 * waiting for it.
 */
const advisoryGate = (url: string) =>
  Effect.gen(function* () {
    const key = Math.floor(Math.random() * 2 ** 31)
    const client = yield* Effect.acquireRelease(
      Effect.promise(async () => {
        const client = new pg.Client({ connectionString: url })
        await client.connect()
        await client.query("SELECT pg_advisory_lock($1)", [key])
        return client
      }),
      (client) => Effect.promise(() => client.end())
    )
    return {
      key,
      open: Effect.promise(() => client.query("SELECT pg_advisory_unlock($1)", [key])).pipe(Effect.asVoid),
      waiters: Effect.promise(() =>
        client.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_locks
            WHERE locktype = 'advisory' AND NOT granted AND objid = $1
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
          [key]
        )
      ).pipe(Effect.map((result) => result.rows[0]!.n))
    }
  })

const pool = (options: Omit<PgPool.Options, "url">) =>
  Effect.gen(function* () {
    const url = yield* TestDatabase.fresh
    const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), ...options }))
    yield* PgMigrations.run.pipe(Effect.provide(context))
    const store = yield* PgEventStore.make({ registry }).pipe(Effect.provide(context))
    return { context, store, url }
  })

describe("PgPool", () => {
  it.effect("reads its settings from the environment, with defaults where it says nothing", () =>
    Effect.gen(function* () {
      const options = yield* PgPool.config({ poolSize: 5, prePing: false }).pipe(
        Effect.withConfigProvider(
          ConfigProvider.fromMap(
            new Map([
              ["DATABASE_URL", "postgres://app:s3cret@db.internal:6543/orders"],
              ["DATABASE_MAX_OVERFLOW", "20"],
              ["DATABASE_POOL_TIMEOUT", "45 seconds"],
              ["DATABASE_POOL_PRE_PING", "true"]
            ])
          )
        )
      )
      assert.strictEqual(Redacted.value(options.url!), "postgres://app:s3cret@db.internal:6543/orders")
      assert.notInclude(String(options.url), "s3cret")
      assert.strictEqual(options.poolSize, 5)
      assert.strictEqual(options.maxOverflow, 20)
      assert.isTrue(Duration.equals(Duration.decode(options.acquireTimeout!), Duration.seconds(45)))
      assert.isTrue(options.prePing)
      assert.isTrue(PgPool.hasServer(options))
      const none = yield* PgPool.config().pipe(Effect.withConfigProvider(ConfigProvider.fromMap(new Map())))
      assert.isFalse(PgPool.hasServer(none))
      const bad = yield* Effect.flip(
        PgPool.config().pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["DATABASE_POOL_SIZE", "many"]])))
        )
      )
      assert.include(String(bad), "DATABASE_POOL_SIZE")
    })
  )

  it.scopedLive("reports size, checked out, idle, overflow and waiting as the spec's pool does", () =>
    Effect.gen(function* () {
      const { context, url } = yield* pool({ poolSize: 2, maxOverflow: 2, acquireTimeout: "5 seconds" })
      const { stats } = yield* PgPool.PgPool.pipe(Effect.provide(context))
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
      const idle = yield* stats
      assert.strictEqual(idle.size, 2)
      assert.strictEqual(idle.max, 4)
      assert.strictEqual(idle.checkedOut, 0)
      // Five sessions at once, each waiting on an advisory lock (of this database) that a
      // session outside the pool holds: four connections busy, one caller waiting.
      const gate = yield* advisoryGate(url)
      const busy = yield* Effect.forkScoped(
        Effect.all(
          Array.from({ length: 5 }, () => sql`SELECT pg_advisory_xact_lock_shared(${gate.key})`),
          { concurrency: "unbounded" }
        )
      )
      const loaded = yield* eventually(stats, (s) => s.checkedOut === 4 && s.waiting === 1, {
        what: "four connections checked out and one caller waiting"
      })
      assert.strictEqual(loaded.overflow, 2)
      // The four are really inside PostgreSQL, waiting on the gate.
      yield* eventually(gate.waiters, (n) => n === 4, { what: "four sessions waiting on the gate" })
      yield* gate.open
      yield* Fiber.join(busy)
      const after = yield* stats
      assert.strictEqual(after.checkedOut, 0)
      assert.strictEqual(after.waiting, 0)
    })
  )

  it.scopedLive("an exhausted pool fails the caller after the acquire timeout with a typed error", () =>
    Effect.gen(function* () {
      const { context, store } = yield* pool({ poolSize: 1, maxOverflow: 0, acquireTimeout: "300 millis" })
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
      // The pool's one connection is held in a transaction until the latch opens.
      const holding = yield* Deferred.make<void>()
      const release = yield* Effect.makeLatch(false)
      const holder = yield* Effect.forkScoped(
        sql.withTransaction(Effect.zipRight(Deferred.succeed(holding, undefined), release.await))
      )
      yield* Deferred.await(holding)
      const error = yield* Effect.flip(store.append(stream(), note, { expectedVersion: ExpectedVersion.any }))
      assert.strictEqual(error._tag, "EventStoreError")
      assert.include(error.message.toLowerCase(), "timeout")
      yield* release.open
      yield* Fiber.join(holder)
      assert.strictEqual((yield* store.append(stream(), note, { expectedVersion: ExpectedVersion.any })).version, 1)
    })
  )

  it.scopedLive(
    "a connection dropped mid-append is a typed EventStoreError; nothing is half-written and the pool recovers",
    () =>
      Effect.gen(function* () {
        // Its own application name: the connections it kills are found by it, in its own database.
        const applicationName = `eventfold-test-${crypto.randomUUID().slice(0, 8)}`
        const { context, store, url } = yield* pool({
          poolSize: 2,
          maxOverflow: 2,
          prePing: true,
          prePingAfterIdle: 0,
          applicationName
        })
        const s = stream()
        // The append waits on version 1 of the stream, inserted by another session whose
        // transaction stays open; we then kill the waiting session.
        const admin = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 1, maxOverflow: 0 }))
        const adminSql = yield* SqlClient.SqlClient.pipe(Effect.provide(admin))
        const inserted = yield* Deferred.make<void>()
        const rival = yield* Effect.forkScoped(
          adminSql.withTransaction(
            Effect.gen(function* () {
              yield* adminSql`INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
                              VALUES (gen_random_uuid(), ${s.aggregateId}::uuid, ${s.aggregateType}, 'Noted', 1, now(), '{}')`
              yield* Deferred.succeed(inserted, undefined)
              return yield* Effect.never
            })
          )
        )
        yield* Deferred.await(inserted)
        const appending = yield* Effect.forkScoped(
          Effect.flip(store.append(s, note, { expectedVersion: ExpectedVersion.any }))
        )
        // The append's session, waiting for the rival's transaction: of this pool, in this database
        // (looked for, and killed, from outside the pool under test).
        const [waiter] = yield* eventually(
          TestDatabase.withClient(url, (client) =>
            client
              .query<{ pid: number }>(
                `SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'transactionid' AND NOT l.granted
                    AND a.datname = current_database() AND a.application_name = $1`,
                [applicationName]
              )
              .then((result) => result.rows)
          ),
          (rows) => rows.length === 1,
          { what: "the append to wait for the rival's transaction" }
        )
        const { stats } = yield* PgPool.PgPool.pipe(Effect.provide(context))
        const open = (yield* stats).open
        yield* TestDatabase.withClient(url, (client) => client.query("SELECT pg_terminate_backend($1)", [waiter!.pid]))
        const error = yield* Fiber.join(appending)
        assert.strictEqual(error._tag, "EventStoreError")
        // Until the pool has dropped the killed connection, it could hand it out again.
        yield* eventually(stats, (s) => s.open === open - 1, { what: "the pool to drop the killed connection" })
        // The rival rolls back: its version 1 was never there.
        yield* Fiber.interrupt(rival)
        // The next append gets a healthy connection.
        assert.strictEqual((yield* store.append(s, note, { expectedVersion: ExpectedVersion.noStream })).version, 1)
        // Every pooled connection killed while idle: once the pool has dropped them, the next
        // append opens a fresh one. (Before that, pre-ping replaces only the first dead
        // connection it checks out: its retry takes the next idle one unchecked.)
        const killed = yield* adminSql<{ pid: number }>`
          SELECT pid, pg_terminate_backend(pid) AS killed FROM pg_stat_activity
           WHERE application_name = ${applicationName} AND datname = current_database()`
        assert.isAbove(killed.length, 0)
        yield* eventually(stats, (s) => s.open === 0, { what: "the pool to drop its killed connections" })
        assert.strictEqual((yield* store.append(s, note, { expectedVersion: ExpectedVersion.exact(1) })).version, 2)
      })
  )
})
