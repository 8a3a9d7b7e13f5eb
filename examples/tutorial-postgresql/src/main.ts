/**
 * Tutorial 11: PostgreSQL event store, as an Effect program.
 *
 * With DATABASE_URL (or PGHOST...) set it uses that server; otherwise it starts an
 * embedded PostgreSQL whose data lives in .data/pg at the repository root. With
 * OTEL_EXPORTER_OTLP_ENDPOINT set it exports its traces, metrics and log to that
 * OpenTelemetry collector (README, "Exporting telemetry"); without, nothing changes.
 * DATABASE_ECHO=true LOG_LEVEL=Debug logs every SQL statement (the spec's echo).
 *
 * Run with: npm start
 */

import * as Path from "node:path"
import { NodeRuntime } from "@effect/platform-node"
import { AggregateRepository, EventStore } from "@eventfold/core"
import { OtelTelemetry } from "@eventfold/opentelemetry"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import { EmbeddedPostgres } from "@eventfold/pg-embedded"
import * as Config from "effect/Config"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Stream from "effect/Stream"
import { createOrder, Order, registry, shipOrder } from "./Order.js"

const rule = "=".repeat(70)

// The pool with the spec's settings (each can be overridden from the environment),
// and the event store over it. Provided once; the pool closes when the program ends.
// With no server configured, an embedded PostgreSQL (@eventfold/pg-embedded, a
// development dependency); a production program provides PgPool.layerConfig instead.
const PoolLive = EmbeddedPostgres.layerPoolConfig(
  { dataDir: Path.resolve(import.meta.dirname, "../../../.data/pg"), persistent: true },
  PgPool.config({ poolSize: 5, maxOverflow: 10, acquireTimeout: "30 seconds", recycle: "30 minutes", prePing: true })
)
const EventStoreLive = PgEventStore.layerPrepared({ registry }).pipe(Layer.provideMerge(PoolLive))
// Exports to the collector the OTEL_* variables name, and exports nothing without them.
// Provided around the whole program, so that the pool, made inside it, records its metrics
// too, and closed last: the program's final spans and metrics are flushed before it exits.
const TelemetryLive = OtelTelemetry.layerConfig({ serviceName: "eventfold-tutorial" })
// The log's minimum level (LOG_LEVEL: Debug shows the SQL echo), around everything too.
const LogLevelLive = Layer.unwrapEffect(
  Effect.map(Config.withDefault(Config.logLevel("LOG_LEVEL"), LogLevel.Info), Logger.minimumLogLevel)
)

const tutorial = Effect.gen(function* () {
  yield* Console.log("2. Setting up database schema...")
  yield* PgMigrations.run
  yield* Console.log("Database schema created successfully!")

  yield* Console.log("3. Creating aggregate repository...")
  const repo = yield* AggregateRepository.make(Order)

  yield* Console.log("\n4. Creating an order...")
  const orderId = crypto.randomUUID()
  const order = yield* repo
    .create(orderId)
    .pipe(createOrder({ customerId: "customer-456", total: 299.99 }), Effect.flatMap(repo.save))
  yield* Console.log(`   Order created: ${orderId}`)
  yield* Console.log(`   Version: ${order.version}`)
  yield* Console.log(`   Status: ${order.state.status}`)
  yield* Console.log(`   Customer: ${order.state.customerId}`)
  yield* Console.log(`   Total: $${order.state.total}`)

  yield* Console.log("\n5. Loading and shipping order...")
  const shipped = yield* repo
    .load(orderId)
    .pipe(shipOrder({ trackingNumber: "TRACK-123456" }), Effect.flatMap(repo.save))
  yield* Console.log("   Order shipped!")
  yield* Console.log(`   Version: ${shipped.version}`)
  yield* Console.log(`   Status: ${shipped.state.status}`)
  yield* Console.log(`   Tracking: ${shipped.state.trackingNumber}`)

  yield* Console.log("\n6. Verifying persistence...")
  const verified = yield* repo.load(orderId)
  yield* Console.log(`   Loaded order version: ${verified.version}`)
  yield* Console.log(`   Loaded status: ${verified.state.status}`)

  yield* Console.log("\n7. Querying events from PostgreSQL...")
  const store = yield* EventStore.EventStore
  const events = yield* Stream.runCollect(store.readStream({ aggregateId: orderId, aggregateType: "Order" }))
  yield* Console.log(`   Found ${events.length} events:`)
  for (const event of events) {
    yield* Console.log(`     - v${event.version}: ${event.eventType}`)
  }

  yield* Console.log("\n8. Connection pool statistics...")
  const pool = yield* PgPool.PgPool
  const stats = yield* pool.stats
  yield* Console.log(`   Pool size: ${stats.size}`)
  yield* Console.log(`   Checked out: ${stats.checkedOut}`)
  yield* Console.log(`   Overflow: ${stats.overflow}`)

  yield* Console.log(`\n${rule}`)
  yield* Console.log("SUCCESS: PostgreSQL event store is working!")
  yield* Console.log(rule)
})

const main = Effect.gen(function* () {
  yield* Console.log(rule)
  yield* Console.log("Tutorial 11: PostgreSQL Event Store")
  yield* Console.log(rule)
  yield* Console.log("\n1. Creating PostgreSQL event store...")
  // Effect.provide builds the layers for this effect alone and releases them (the
  // pool is disposed) as soon as it ends, whether it succeeded or failed.
  yield* Effect.provide(tutorial, EventStoreLive)
  yield* Console.log("\nConnection pool disposed.")
})

NodeRuntime.runMain(main.pipe(Effect.provide(TelemetryLive), Effect.provide(LogLevelLive)))
