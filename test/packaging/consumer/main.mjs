// A program of a project that installed the packed Eventfold packages, run by the
// packaging test (packInstall.test.ts) with plain `node`: no tsx, no custom export
// condition, no monorepo around it. It prints one "<check>: ok" line per check that
// passed and sets a non-zero exit code on the first that did not.
//
//   DATABASE_URL             also append and read on that PostgreSQL through @eventfold/pg
//   EVENTFOLD_EMBEDDED_DIR   also append and read on an embedded PostgreSQL (@eventfold/pg-embedded)
//                            whose data directory is there (deleted afterwards)
import * as assert from "node:assert/strict"
import { randomUUID } from "node:crypto"
import * as Fs from "node:fs"
import { Event, EventRegistry, EventStore, ExpectedVersion } from "@eventfold/core"
import * as ExpectedVersionModule from "@eventfold/core/ExpectedVersion"
import { NatsPublisher } from "@eventfold/nats"
import { OtelTelemetry } from "@eventfold/opentelemetry"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import { EmbeddedPostgres } from "@eventfold/pg-embedded"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"

const OrderPlaced = Event.make("OrderPlaced", { customer_id: Schema.String, total: Schema.Number })
const registry = EventRegistry.make(OrderPlaced)

/** Appends one event to a new stream and reads it back, by stream and from the global log. */
const appendAndRead = Effect.gen(function* () {
  const store = yield* EventStore.EventStore
  const stream = { aggregateId: randomUUID(), aggregateType: "Order" }
  const appended = yield* store.append(stream, [{ event: OrderPlaced.make({ customer_id: "c-1", total: 10 }) }], {
    expectedVersion: ExpectedVersion.noStream
  })
  assert.equal(appended.version, 1)
  const read = Chunk.toReadonlyArray(yield* Stream.runCollect(store.readStream(stream)))
  assert.equal(read.length, 1)
  assert.equal(read[0].event._tag, "OrderPlaced")
  assert.equal(read[0].event.total, 10)
  assert.equal(read[0].globalPosition, appended.lastPosition)
  const all = Chunk.toReadonlyArray(yield* Stream.runCollect(store.readAll()))
  assert.ok(all.some((event) => event.eventId === read[0].eventId))
})

/** The same program against PostgreSQL: migrate, append, read, and the pool's statistics. */
const onPostgres = Effect.gen(function* () {
  yield* PgMigrations.run
  yield* appendAndRead
  const stats = yield* Effect.flatMap(PgPool.PgPool, (pool) => pool.stats)
  assert.equal(typeof stats.open, "number")
})

const checks = [
  [
    "exports",
    Effect.promise(async () => {
      // Internal modules are not part of the public surface.
      for (const internal of [
        "@eventfold/core/internal/validate",
        "@eventfold/pg/internal/pgDriver",
        "@eventfold/pg-embedded/internal/embeddedPostgres"
      ]) {
        await assert.rejects(import(internal), (error) => error.code === "ERR_PACKAGE_PATH_NOT_EXPORTED", internal)
      }
      // Each public module is an entry point of its own, the same module as the index's.
      assert.equal(ExpectedVersionModule.noStream, ExpectedVersion.noStream)
      const schema = Fs.readFileSync(new URL(import.meta.resolve("@eventfold/pg/schema.sql")), "utf8")
      assert.match(schema, /CREATE TABLE/i)
      assert.equal(
        NatsPublisher.subject("app", { aggregateType: "Order", eventType: "OrderPlaced" }),
        "app.Order.OrderPlaced"
      )
    })
  ],
  [
    "memory",
    appendAndRead.pipe(
      Effect.provide(EventStore.layerMemory({ registry })),
      Effect.provide(OtelTelemetry.layerConfig({ serviceName: "consumer" }))
    )
  ]
]
if (process.env.DATABASE_URL) {
  checks.push([
    "postgres",
    onPostgres.pipe(
      Effect.provide(PgEventStore.layerPrepared({ registry }).pipe(Layer.provideMerge(PgPool.layerFromEnv())))
    )
  ])
}
if (process.env.EVENTFOLD_EMBEDDED_DIR) {
  // A configuration that names no server: the pool falls back to the embedded one.
  const PoolLive = EmbeddedPostgres.layerPoolConfig(
    { dataDir: process.env.EVENTFOLD_EMBEDDED_DIR, persistent: false, durability: "relaxed" },
    Config.succeed({})
  )
  checks.push([
    "embedded",
    onPostgres.pipe(Effect.provide(PgEventStore.layerPrepared({ registry }).pipe(Layer.provideMerge(PoolLive))))
  ])
}

for (const [name, check] of checks) {
  const exit = await Effect.runPromiseExit(check)
  if (Exit.isFailure(exit)) {
    console.error(`${name}: failed\n${Cause.pretty(exit.cause)}`)
    process.exitCode = 1
    break
  }
  console.log(`${name}: ok`)
}
