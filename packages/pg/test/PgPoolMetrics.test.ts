/**
 * The pool metrics (`eventfold.pool.connections`, `eventfold.pool.acquire.duration`)
 * on a real pool, read with `Metric.value`, and what a pool made with metrics off pays
 * for them: nothing, not even a wrapper around its checkout.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import { assert, describe, it } from "@effect/vitest"
import { Event, EventRegistry, ExpectedVersion, Telemetry } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import pg from "pg"
import { eventually } from "../../../test/support/eventually.js"
import * as TestDatabase from "../../../test/support/TestDatabase.js"
import * as Driver from "../src/internal/pgDriver.js"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)

/** A pool name no other test uses: the metrics are the process's, tagged by pool. */
const uniqueName = () => `metrics-${crypto.randomUUID().slice(0, 8)}`

const connections = (name: string, state: "idle" | "used" | "waiting") =>
  Metric.value(
    Metric.taggedWithLabels(Telemetry.poolMetrics.connections, [
      MetricLabel.make(Telemetry.Attributes.poolName, name),
      MetricLabel.make(Telemetry.Attributes.poolState, state)
    ])
  ).pipe(Effect.map((state) => state.value))

const acquisitions = (name: string) =>
  Metric.value(
    Metric.taggedWithLabels(Telemetry.poolMetrics.acquireDuration, [
      MetricLabel.make(Telemetry.Attributes.poolName, name)
    ])
  ).pipe(Effect.map((state) => state.count))

/** A pool on a fresh database, migrated, built with Eventfold's metrics `measured` or not. */
const pool = (name: string, measured: boolean, options: Omit<PgPool.Options, "url"> = {}) =>
  Effect.gen(function* () {
    const url = yield* TestDatabase.fresh
    const context = yield* Layer.build(
      PgPool.layer({ url: Redacted.make(url), applicationName: name, ...options })
    ).pipe(Effect.locally(Telemetry.metricsEnabled, measured))
    yield* PgMigrations.run.pipe(Effect.provide(context))
    return context
  })

/** Holds a connection of the pool in a transaction until the returned effect releases it. */
const holdConnection = (sql: SqlClient.SqlClient): Effect.Effect<Effect.Effect<void>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const holding = yield* Deferred.make<void>()
    const latch = yield* Effect.makeLatch(false)
    const holder = yield* Effect.forkScoped(
      sql.withTransaction(Effect.zipRight(Deferred.succeed(holding, undefined), latch.await)).pipe(Effect.orDie)
    )
    yield* Deferred.await(holding)
    return Effect.zipRight(latch.open, Fiber.join(holder))
  })

describe("PgPool metrics", () => {
  it.scopedLive("count connections by state, idle, used and waiting, as the pool's own counters do", () =>
    Effect.gen(function* () {
      const name = uniqueName()
      const context = yield* pool(name, true, { poolSize: 1, maxOverflow: 0, acquireTimeout: "10 seconds" })
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
      const { stats } = yield* PgPool.PgPool.pipe(Effect.provide(context))
      yield* eventually(connections(name, "idle"), (n) => n === 1, { what: "one idle connection sampled" })

      const release = yield* holdConnection(sql)
      yield* eventually(connections(name, "used"), (n) => n === 1, { what: "the held connection sampled as used" })
      assert.strictEqual(yield* connections(name, "idle"), 0)

      // A second caller has to wait for the only connection.
      const waiter = yield* Effect.forkScoped(sql`SELECT 1`)
      yield* eventually(stats, (s) => s.waiting === 1, { what: "a caller waiting" })
      yield* eventually(connections(name, "waiting"), (n) => n === 1, { what: "the waiting caller sampled" })

      yield* release
      yield* Fiber.join(waiter)
      yield* eventually(
        Effect.all([connections(name, "idle"), connections(name, "used"), connections(name, "waiting")]),
        ([idle, used, waiting]) => idle === 1 && used === 0 && waiting === 0,
        { what: "the pool idle again" }
      )
    })
  )

  it.scopedLive("time every checkout, on the prepared path and through @effect/sql alike", () =>
    Effect.gen(function* () {
      const name = uniqueName()
      const context = yield* pool(name, true, { prePing: true })
      const store = yield* PgEventStore.makePrepared({ registry }).pipe(Effect.provide(context))
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
      const before = yield* acquisitions(name)
      yield* store.append(
        { aggregateId: crypto.randomUUID(), aggregateType: "Note" },
        [{ event: Noted.make({ text: "x" }) }],
        { expectedVersion: ExpectedVersion.noStream }
      )
      const afterPrepared = yield* acquisitions(name)
      assert.strictEqual(afterPrepared, before + 1, "the prepared append's checkout")
      yield* sql`SELECT 1`
      yield* sql`SELECT 2`
      assert.strictEqual(yield* acquisitions(name), afterPrepared + 2, "two checkouts of @effect/sql")
    })
  )

  it.scopedLive("a pool made with metrics off records none and checks out through pg's own pool", () =>
    Effect.gen(function* () {
      const name = uniqueName()
      const context = yield* pool(name, false)
      const sql = yield* SqlClient.SqlClient.pipe(Effect.provide(context))
      const { connections: poolConnections } = yield* PgPool.PgPool.pipe(Effect.provide(context))
      yield* sql`SELECT 1`
      // Metric.value of a metric never updated reads as empty: nothing was recorded for this pool.
      assert.strictEqual(yield* acquisitions(name), 0)
      assert.strictEqual(Object.getPrototypeOf(Driver.pgPool(poolConnections)), pg.Pool.prototype)
    })
  )
})
