/**
 * Projections: an order-summary read model kept in a PostgreSQL table while orders
 * are appended, exactly once, with lag, dead letters and a rebuild.
 *
 * With DATABASE_URL (or PGHOST...) set it uses that server; otherwise it starts an
 * embedded PostgreSQL whose data lives in .data/pg at the repository root. With
 * OTEL_EXPORTER_OTLP_ENDPOINT set it exports its telemetry there (README, "Exporting telemetry").
 *
 * Run with: npm start -w @eventfold/example-projections
 */

import * as Path from "node:path"
import { NodeRuntime } from "@effect/platform-node"
import * as SqlClient from "@effect/sql/SqlClient"
import { CheckpointStore, DeadLetterQueue, EventStore, ExpectedVersion, Projection } from "@eventfold/core"
import { OtelTelemetry } from "@eventfold/opentelemetry"
import { PgEventStore, PgMigrations, PgPool, PgProjection } from "@eventfold/pg"
import { EmbeddedPostgres } from "@eventfold/pg-embedded"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { createTable, OrderCancelled, OrderPlaced, OrderShipped, orderSummary, registry } from "./Orders.js"

const PoolLive = EmbeddedPostgres.layerPoolConfig(
  { dataDir: Path.resolve(import.meta.dirname, "../../../.data/pg"), persistent: true },
  PgPool.config({ poolSize: 5, maxOverflow: 10 })
)
// The event store and everything a projection runner needs, on one pool.
const AppLive = Layer.mergeAll(PgEventStore.layerPrepared({ registry }), PgProjection.layer()).pipe(
  Layer.provideMerge(PoolLive)
)

/** Places `count` orders from 4 concurrent writers; ships or cancels some; one has a negative total. */
const placeOrders = (count: number) =>
  Effect.gen(function* () {
    const store = yield* EventStore.EventStore
    const order = () => ({ aggregateId: crypto.randomUUID(), aggregateType: "Order" })
    // The position of the last event appended: once the projection is past it, it holds every order.
    let last = 0n
    const appended = (result: EventStore.AppendResult) => {
      if (result.lastPosition > last) last = result.lastPosition
    }
    yield* Effect.forEach(
      Array.from({ length: count }, (_, i) => i),
      (i) =>
        Effect.gen(function* () {
          const stream = order()
          const total = i === 7 ? -5 : Math.round(Math.random() * 50_000) / 100
          appended(
            yield* store.append(stream, [{ event: OrderPlaced.make({ customer_id: `customer-${i % 20}`, total }) }], {
              expectedVersion: ExpectedVersion.noStream
            })
          )
          if (i % 3 === 0) {
            appended(
              yield* store.append(stream, [{ event: OrderShipped.make({ tracking_number: `TRACK-${i}` }) }], {
                expectedVersion: ExpectedVersion.exact(1)
              })
            )
          } else if (i % 10 === 1) {
            appended(
              yield* store.append(stream, [{ event: OrderCancelled.make({ reason: "changed mind" }) }], {
                expectedVersion: ExpectedVersion.exact(1)
              })
            )
          }
        }),
      { concurrency: 4, discard: true }
    )
    return last
  })

const program = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const checkpoints = yield* CheckpointStore.CheckpointStore
  const deadLetters = yield* DeadLetterQueue.DeadLetterQueue

  yield* Console.log("1. Migrating, creating the order_summary table...")
  yield* PgMigrations.run
  yield* createTable
  const projection = yield* orderSummary

  yield* Console.log("2. Starting the order-summary projection (one active runner per projection)...")
  const runner = yield* Projection.start(projection, { retry: Schedule.recurs(2) })

  yield* Console.log("3. Placing 300 orders while the projection runs...")
  const last = yield* placeOrders(300)

  // Read-your-writes: woken when the projection's checkpoint passes the last order appended
  // (its save notifies at commit), rather than polling the read model.
  yield* Console.log("4. Waiting for the projection to pass the last order appended:")
  yield* CheckpointStore.awaitPosition(projection.name, last, { timeout: "30 seconds" })
  const lag = yield* checkpoints.lag(projection.name, { eventTypes: projection.eventTypes })
  yield* Console.log(`   ${lag.eventsBehind} events behind, checkpoint ${lag.position}`)

  const summary = yield* sql<{ status: string; orders: number; revenue: string }>`
    SELECT status, count(*)::int AS orders, sum(total)::text AS revenue
      FROM order_summary GROUP BY status ORDER BY status`
  yield* Console.log("5. The read model:")
  for (const row of summary)
    yield* Console.log(`   ${row.status.padEnd(10)} ${String(row.orders).padStart(4)} orders  $${row.revenue}`)
  const status = yield* runner.status
  yield* Console.log(
    `   runner: ${status.state}, ${status.handled} events handled, ${status.deadLettered} dead-lettered`
  )

  yield* Console.log("6. Dead letters (the order with a negative total):")
  const letters = yield* deadLetters.list({ projection: projection.name, status: "failed" })
  for (const letter of letters) {
    yield* Console.log(
      `   #${letter.id} ${letter.eventType} at position ${letter.globalPosition}: ${letter.errorMessage}`
    )
    yield* deadLetters.resolve(letter.id, { by: "example" })
  }
  yield* Console.log(`   resolved ${letters.length}`)

  yield* Console.log("7. Rebuilding the read model from the log:")
  const rebuilt = yield* Projection.rebuild(projection, {
    onProgress: (p) =>
      Console.log(`   at ${p.position} of ${p.target} (${p.eventsProcessed} events, ${p.elapsedMillis} ms)`)
  })
  const orders = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM order_summary`
  yield* Console.log(`   done: ${orders[0]?.n} orders in the read model, checkpoint ${rebuilt.position}`)
  const checkpoint = yield* checkpoints.get(projection.name)
  yield* Console.log(
    `   checkpoint: ${Option.match(checkpoint, { onNone: () => "none", onSome: (c) => `${c.position} (${c.eventsProcessed} events, last ${c.eventType})` })}`
  )
})

// The runner is scoped: it stops, and gives its lock back, when the program ends. Telemetry
// (nothing without OTEL_* variables) goes around the rest, so the pool records its metrics too.
NodeRuntime.runMain(
  program.pipe(
    Effect.scoped,
    Effect.provide(AppLive),
    Effect.provide(OtelTelemetry.layerConfig({ serviceName: "eventfold-projections" }))
  )
)
