import * as Util from "node:util"
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool, PgTransaction } from "@eventfold/pg"
import * as Config from "effect/Config"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import pg from "pg"
import { eventually } from "../../../test/support/eventually.js"
import * as TestDatabase from "../../../test/support/TestDatabase.js"

/** The environment, as `Config` reads it: `env` and nothing else. */
const environment = (env: Record<string, string>) => ConfigProvider.fromMap(new Map(Object.entries(env)))
const withEnvironment =
  (env: Record<string, string>) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>) =>
    Effect.withConfigProvider(effect, environment(env))

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

/** Holds a connection of `sql`'s pool in a transaction until `release` (which then waits for its end). */
const holdConnection = (sql: SqlClient.SqlClient) =>
  Effect.gen(function* () {
    const holding = yield* Deferred.make<void>()
    const latch = yield* Effect.makeLatch(false)
    const holder = yield* Effect.forkScoped(
      sql.withTransaction(Effect.zipRight(Deferred.succeed(holding, undefined), latch.await))
    )
    yield* Deferred.await(holding)
    return { release: Effect.zipRight(latch.open, Fiber.join(holder)) }
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
  it.effect("the preset reads Eventfold's variables over the defaults given in code", () =>
    Effect.gen(function* () {
      const options = yield* PgPool.config({ poolSize: 5, prePing: false, schema: "orders" }).pipe(
        withEnvironment({
          DATABASE_URL: "postgres://app:s3cret@db.internal:6543/orders",
          DATABASE_MAX_OVERFLOW: "20",
          DATABASE_POOL_TIMEOUT: "45 seconds",
          DATABASE_POOL_PRE_PING: "true"
        })
      )
      assert.strictEqual(Redacted.value(options.url!), "postgres://app:s3cret@db.internal:6543/orders")
      assert.notInclude(String(options.url), "s3cret")
      assert.strictEqual(options.poolSize, 5)
      assert.strictEqual(options.maxOverflow, 20)
      assert.isTrue(Duration.equals(Duration.decode(options.acquireTimeout!), Duration.seconds(45)))
      assert.isTrue(options.prePing)
      assert.strictEqual(options.schema, "orders")
      assert.isTrue(PgPool.hasServer(options))
      // Where the environment says nothing: the code's defaults, then the library's.
      const none = yield* PgPool.config().pipe(withEnvironment({}))
      assert.isFalse(PgPool.hasServer(none))
      assert.strictEqual(none.poolSize, 5)
      assert.strictEqual(none.maxOverflow, 10)
      assert.isTrue(Duration.equals(Duration.decode(none.acquireTimeout!), Duration.seconds(30)))
      assert.isUndefined(none.schema)
      const bad = yield* Effect.flip(PgPool.config().pipe(withEnvironment({ DATABASE_POOL_SIZE: "many" })))
      assert.include(String(bad), "DATABASE_POOL_SIZE")
    })
  )

  it.effect("durations as people write them; a plain number in the variable's documented unit", () =>
    Effect.gen(function* () {
      const read = (env: Record<string, string>) => PgPool.config().pipe(withEnvironment(env))
      const millisOf = (duration: Duration.DurationInput | undefined) => Duration.toMillis(duration!)
      for (const [text, ms] of [
        ["30s", 30_000],
        ["30 seconds", 30_000],
        ["1500 millis", 1500],
        ["1500ms", 1500],
        ["2m", 120_000],
        ["1h30m", 5_400_000],
        // A plain number: seconds, as the spec's pool_timeout.
        ["30", 30_000]
      ] as const) {
        assert.strictEqual(millisOf((yield* read({ DATABASE_POOL_TIMEOUT: text })).acquireTimeout), ms, text)
      }
      assert.strictEqual(millisOf((yield* read({ DATABASE_POOL_RECYCLE: "1800" })).recycle), 1_800_000)
      // PostgreSQL's own timeouts: a plain number is in milliseconds, as PostgreSQL reads it.
      const timeouts = yield* read({
        DATABASE_STATEMENT_TIMEOUT: "1500",
        DATABASE_LOCK_TIMEOUT: "2s",
        DATABASE_IDLE_IN_TRANSACTION_TIMEOUT: "1 minute"
      })
      assert.strictEqual(millisOf(timeouts.statementTimeout), 1500)
      assert.strictEqual(millisOf(timeouts.lockTimeout), 2000)
      assert.strictEqual(millisOf(timeouts.idleInTransactionTimeout), 60_000)
      const bad = yield* Effect.flip(read({ DATABASE_POOL_TIMEOUT: "soon" }))
      assert.include(String(bad), "DATABASE_POOL_TIMEOUT")
      assert.include(String(bad), "30s")
    })
  )

  it.effect("the URL's parts come first, the PG* variables fill what it leaves out, as libpq reads them", () =>
    Effect.gen(function* () {
      const options = yield* PgPool.config({ host: "from-code", sslMode: "require" }).pipe(
        withEnvironment({
          DATABASE_URL: "postgres://app@db.internal/orders?sslmode=verify-ca&sslrootcert=/etc/ca.pem",
          PGHOST: "other-host",
          PGPORT: "6000",
          PGPASSWORD: "from-env",
          PGSSLMODE: "disable"
        })
      )
      // Set fields replace the URL's: the preset sets only those the URL leaves out.
      assert.isUndefined(options.host)
      assert.isUndefined(options.sslMode)
      assert.strictEqual(options.port, 6000)
      assert.strictEqual(Redacted.value(options.password!), "from-env")
      assert.strictEqual(PgPool.describeServer(options), "db.internal:6000")
      // PGSSLMODE where the URL has no sslmode.
      const pgssl = yield* PgPool.config().pipe(
        withEnvironment({ DATABASE_URL: "postgres://app@db.internal/orders", PGSSLMODE: "require" })
      )
      assert.strictEqual(pgssl.sslMode, "require")
      const badMode = yield* Effect.flip(PgPool.config().pipe(withEnvironment({ PGHOST: "h", PGSSLMODE: "on" })))
      assert.include(String(badMode), "PGSSLMODE")
      // verify-full needs its CA: refused before anything connects.
      const noCa = yield* Effect.flip(PgPool.config().pipe(withEnvironment({ PGHOST: "h", PGSSLMODE: "verify-full" })))
      assert.include(String(noCa), "PGSSLROOTCERT")
    })
  )

  it.effect("a malformed DATABASE_URL is a ConfigError naming the variable and hiding the password", () =>
    Effect.gen(function* () {
      const secret = "S3cret-Pw_41"
      for (const url of [
        `app:${secret}@db.internal/orders`,
        `postgres://app:${secret}/x@db.internal/orders`,
        `postgresql+asyncpg://app:${secret}@db.internal/orders`,
        `postgres://app:${secret}@db.internal/orders?sslmode=on`
      ]) {
        const error = yield* Effect.flip(PgPool.config().pipe(withEnvironment({ DATABASE_URL: url })))
        assert.strictEqual(error._op, "InvalidData", url)
        const text = String(error)
        assert.include(text, "DATABASE_URL", url)
        assert.include(text, "PostgreSQL URL", url)
        assert.notInclude(text, secret, url)
        assert.notInclude(Util.inspect(error, { depth: null }), secret, url)
      }
      // The same through layerConfig, whatever variable the application reads its URL from.
      const error = yield* Effect.flip(
        Effect.scoped(
          Layer.build(
            PgPool.layerConfig({ url: Config.redacted("ORDERS_DATABASE_URL") }).pipe(
              Layer.provide(Layer.setConfigProvider(environment({ ORDERS_DATABASE_URL: `base:${secret}@x/y` })))
            )
          )
        )
      )
      assert.strictEqual(error._tag, "ConfigError")
      assert.include(String(error), "is not a URL")
      assert.notInclude(String(error), secret)
    })
  )

  it.scopedLive(
    "layerConfig takes the options from the Configs it is given; the environment does not change them",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.fresh
        const context = yield* Layer.build(
          PgPool.layerConfig({
            url: Config.succeed(Redacted.make(url)),
            poolSize: Config.succeed(2),
            applicationName: Config.string("APP_NAME").pipe(Config.withDefault("orders"))
          }).pipe(
            // Eventfold's variables are set, and wrong: layerConfig does not read them.
            Layer.provide(
              Layer.setConfigProvider(
                environment({ DATABASE_URL: "postgres://nobody@127.0.0.1:1/none", DATABASE_POOL_SIZE: "7" })
              )
            )
          )
        )
        const pool = yield* PgPool.PgPool.pipe(Effect.provide(context))
        assert.strictEqual((yield* pool.stats).size, 2)
        const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
        const [row] = yield* sql<{ name: string }>`SELECT current_setting('application_name') AS name`
        assert.strictEqual(row!.name, "orders")
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
      // The pool's one connection is held in a transaction until released.
      const held = yield* holdConnection(yield* SqlClient.SqlClient.pipe(Effect.provide(context)))
      const error = yield* Effect.flip(store.append(stream(), note, { expectedVersion: ExpectedVersion.any }))
      assert.strictEqual(error._tag, "EventStoreError")
      assert.include(error.message.toLowerCase(), "timeout")
      yield* held.release
      assert.strictEqual((yield* store.append(stream(), note, { expectedVersion: ExpectedVersion.any })).version, 1)
    })
  )

  it.scopedLive("an append interrupted while it waits for a connection is never sent", () =>
    Effect.gen(function* () {
      const { context, url } = yield* pool({ poolSize: 1, maxOverflow: 0, acquireTimeout: "30 seconds" })
      const store = yield* PgEventStore.makePrepared({ registry }).pipe(Effect.provide(context))
      const held = yield* holdConnection(yield* SqlClient.SqlClient.pipe(Effect.provide(context)))
      const s = stream()
      const abandoned = yield* Effect.fork(store.append(s, note, { expectedVersion: ExpectedVersion.any }))
      const stats = yield* PgPool.PgPool.pipe(Effect.provide(context))
      yield* eventually(stats.stats, (now) => now.waiting === 1, { what: "the append to wait for the connection" })
      yield* Fiber.interrupt(abandoned)
      yield* held.release
      // The pool hands its connection out in order: the abandoned append's turn comes first.
      const next = yield* store.append(s, [{ event: Noted.make({ text: "y" }) }], {
        expectedVersion: ExpectedVersion.any
      })
      assert.strictEqual(next.version, 1)
      const client = new pg.Client({ connectionString: url })
      yield* Effect.acquireRelease(
        Effect.promise(() => client.connect()),
        () => Effect.promise(() => client.end())
      )
      const { rows } = yield* Effect.promise(() =>
        client.query<{ text: string }>("SELECT payload->>'text' AS text FROM events WHERE aggregate_id = $1", [
          s.aggregateId
        ])
      )
      assert.deepStrictEqual(
        rows.map((row) => row.text),
        ["y"]
      )
    })
  )

  it.scopedLive("a transaction's body keeps the caller's scope: what it acquires outlives the transaction", () =>
    Effect.gen(function* () {
      const { context } = yield* pool({ poolSize: 2 })
      const released: Array<string> = []
      const inner = yield* Effect.scoped(
        Effect.gen(function* () {
          yield* PgTransaction.withTransaction(
            Effect.acquireRelease(Effect.void, () => Effect.sync(() => released.push("resource")))
          ).pipe(Effect.provide(context))
          // The transaction committed; the resource is the caller's until its scope closes.
          return [...released]
        })
      )
      assert.deepStrictEqual(inner, [])
      assert.deepStrictEqual(released, ["resource"])
    })
  )

  it.scopedLive(
    "a connection dropped mid-append is retried on a fresh connection and lands once; without retries it is a typed EventStoreError",
    () =>
      Effect.gen(function* () {
        const { context, url } = yield* pool({ poolSize: 2, maxOverflow: 2, prePing: true, prePingAfterIdle: 0 })
        const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
        const admin = yield* Layer.build(PgPool.layer({ url: Redacted.make(url), poolSize: 1, maxOverflow: 0 }))
        const adminSql = yield* SqlClient.SqlClient.pipe(Effect.provide(admin))
        const versions = (aggregateId: string) =>
          sql<{
            version: number
          }>`SELECT version FROM events WHERE aggregate_id = ${aggregateId} ORDER BY version`.pipe(
            Effect.map((rows) => rows.map((row) => row.version))
          )
        // The sessions of this test's database that wait for another transaction's lock.
        const waiting = sql<{ pid: number }>`SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                  WHERE l.locktype = 'transactionid' AND NOT l.granted AND a.datname = current_database()`
        const waitForWaiter = waiting.pipe(
          Effect.filterOrFail((rows) => rows.length > 0),
          Effect.retry(Schedule.spaced("10 millis")),
          Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error("no append waited on the rival") })
        )
        for (const retry of [PgEventStore.defaultRetry, Schedule.stop]) {
          const store = yield* PgEventStore.makePrepared({ registry, retry }).pipe(Effect.provide(context))
          const s = stream()
          // The append waits on a stream head another session holds in an open transaction;
          // that session commits once the append's connection has been killed.
          const [held, release] = [yield* Deferred.make<void>(), yield* Deferred.make<void>()]
          const rival = yield* Effect.forkScoped(
            adminSql.withTransaction(
              Effect.gen(function* () {
                yield* adminSql`INSERT INTO event_streams (aggregate_id, aggregate_type, version)
                                VALUES (${s.aggregateId}::uuid, ${s.aggregateType}, 1)`
                yield* adminSql`INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
                                VALUES (gen_random_uuid(), ${s.aggregateId}::uuid, ${s.aggregateType}, 'Noted', 1, now(), '{}')`
                yield* Deferred.succeed(held, undefined)
                yield* Deferred.await(release)
              })
            )
          )
          yield* Deferred.await(held)
          const appending = yield* Effect.forkScoped(
            Effect.either(store.append(s, note, { expectedVersion: ExpectedVersion.any }))
          )
          const [victim] = yield* waitForWaiter
          yield* sql`SELECT pg_terminate_backend(${victim!.pid})`
          // With retries, the append waits again on a fresh connection: let the rival commit.
          yield* Deferred.succeed(release, undefined)
          yield* Fiber.join(rival)
          const outcome = yield* Fiber.join(appending)
          if (retry === Schedule.stop) {
            assert.isTrue(Either.isLeft(outcome))
            assert.strictEqual(Either.isLeft(outcome) && outcome.left._tag, "EventStoreError")
            assert.deepStrictEqual(yield* versions(s.aggregateId), [1])
          } else {
            assert.strictEqual(Either.isRight(outcome) && outcome.right.version, 2)
            assert.deepStrictEqual(yield* versions(s.aggregateId), [1, 2])
          }
        }
        // Every pooled connection killed while idle: pre-ping replaces them unseen.
        const store = yield* PgEventStore.makePrepared({ registry, retry: Schedule.stop }).pipe(Effect.provide(context))
        yield* adminSql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = 'eventfold' AND pid <> pg_backend_pid() AND datname = current_database()`
        // The pool hears of each termination; wait until it has dropped them all.
        yield* PgPool.PgPool.pipe(
          Effect.provide(context),
          Effect.flatMap((p) => p.stats),
          Effect.filterOrFail((stats) => stats.open === 0),
          Effect.retry(Schedule.spaced("10 millis")),
          Effect.timeoutFail({
            duration: "10 seconds",
            onTimeout: () => new Error("the pool kept a killed connection")
          })
        )
        assert.strictEqual(
          (yield* store.append(stream(), note, { expectedVersion: ExpectedVersion.noStream })).version,
          1
        )
      })
  )

  it.scopedLive(
    "every connection carries its timeouts: a lock held too long fails the append with EventStoreError, a forgotten transaction is ended",
    () =>
      Effect.gen(function* () {
        const { context, store, url } = yield* pool({
          poolSize: 2,
          maxOverflow: 0,
          statementTimeout: "5 seconds",
          lockTimeout: "200 millis",
          idleInTransactionTimeout: "300 millis"
        })
        const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
        const settings = yield* sql<{
          statement_timeout: string
          lock_timeout: string
          idle_in_transaction_session_timeout: string
        }>`SELECT current_setting('statement_timeout') AS statement_timeout,
                  current_setting('lock_timeout') AS lock_timeout,
                  current_setting('idle_in_transaction_session_timeout') AS idle_in_transaction_session_timeout`
        assert.deepStrictEqual(settings, [
          { statement_timeout: "5s", lock_timeout: "200ms", idle_in_transaction_session_timeout: "300ms" }
        ])
        // A session outside the pool holds the stream's head: the append waits no longer than lockTimeout.
        const s = stream()
        yield* store.append(s, note, { expectedVersion: ExpectedVersion.noStream })
        const holder = yield* Effect.acquireRelease(
          Effect.promise(async () => {
            const client = new pg.Client({ connectionString: url })
            await client.connect()
            await client.query("BEGIN")
            await client.query("SELECT 1 FROM event_streams WHERE aggregate_id = $1 FOR UPDATE", [s.aggregateId])
            return client
          }),
          (client) => Effect.promise(() => client.end())
        )
        const error = yield* Effect.flip(store.append(s, note, { expectedVersion: ExpectedVersion.exact(1) }))
        assert.strictEqual(error._tag, "EventStoreError")
        assert.include(error.message, "lock timeout")
        yield* Effect.promise(() => holder.query("ROLLBACK"))
        // A transaction of the pool left open is ended by the server: its connection is
        // dropped (and replaced), and the next append goes through.
        const forgotten = yield* sql.reserve.pipe(Effect.provide(context))
        yield* forgotten.executeUnprepared("BEGIN", [], undefined)
        const [session] = yield* forgotten.executeValues("SELECT pg_backend_pid()", [])
        // Watched from another session: touching the forgotten one would keep its transaction busy.
        yield* eventually(
          sql<{ n: number }>`SELECT count(*)::int AS n FROM pg_stat_activity WHERE pid = ${Number(session![0])}`,
          (rows) => rows[0]!.n === 0,
          { what: "the server to end the idle transaction's session" }
        )
        assert.isTrue(Either.isLeft(yield* Effect.either(forgotten.executeUnprepared("SELECT 1", [], undefined))))
        assert.strictEqual((yield* store.append(s, note, { expectedVersion: ExpectedVersion.exact(1) })).version, 2)
      })
  )
})
