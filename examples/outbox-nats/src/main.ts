/**
 * The transactional outbox to NATS JetStream: orders are appended with the outbox
 * enabled (events and outbox entries commit together), the OutboxRelay publishes
 * the entries to JetStream, and a JetStream consumer prints what it receives, in
 * order per order.
 *
 * Needs NATS with JetStream (NATS_URL, default nats://127.0.0.1:4222). With
 * DATABASE_URL (or PGHOST...) set it uses that PostgreSQL; otherwise it starts an
 * embedded one whose data lives in .data/pg at the repository root. With
 * OTEL_EXPORTER_OTLP_ENDPOINT set it exports its telemetry there (README, "Exporting telemetry").
 *
 * Run with: npm start -w @eventfold/example-outbox-nats
 */

import * as Path from "node:path"
import { NodeRuntime } from "@effect/platform-node"
import { EventMetadata, EventStore, ExpectedVersion, OutboxRelay } from "@eventfold/core"
import { NatsPublisher } from "@eventfold/nats"
import { OtelTelemetry } from "@eventfold/opentelemetry"
import { PgEventStore, PgMigrations, PgOutbox, PgPool } from "@eventfold/pg"
import { EmbeddedPostgres } from "@eventfold/pg-embedded"
import * as Jet from "@nats-io/jetstream"
import * as Nats from "@nats-io/transport-node"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import { ItemAdded, OrderPlaced, OrderShipped, registry } from "./Orders.js"

const rule = "=".repeat(70)
const settings = { subjectPrefix: "eventfold.example", stream: "EVENTFOLD_EXAMPLE" } as const

const PoolLive = EmbeddedPostgres.layerPoolConfig(
  { dataDir: Path.resolve(import.meta.dirname, "../../../.data/pg"), persistent: true },
  PgPool.config({ poolSize: 5, maxOverflow: 10 })
)
// The relay starts once the schema is migrated and the stream exists; it stops with the program.
const RelayLive = OutboxRelay.layerConfig({ batchSize: 100 }).pipe(
  Layer.provide(Layer.mergeAll(PgOutbox.layer(), NatsPublisher.layerConfig(settings), PgMigrations.layer))
)
const AppLive = Layer.merge(PgEventStore.layerPrepared({ registry, outbox: true }), RelayLive).pipe(
  Layer.provideMerge(PoolLive)
)

class ConsumerError extends Data.TaggedError("ConsumerError")<{ readonly message: string; readonly cause: unknown }> {}

/** A JetStream consumer of the example's stream that prints the next `count` messages. */
const consume = (count: number) =>
  Effect.gen(function* () {
    const servers = process.env.NATS_URL ?? "nats://127.0.0.1:4222"
    const nc = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => Nats.connect({ servers, name: "eventfold-example-consumer" }),
        catch: (cause) => new ConsumerError({ message: `cannot connect to ${servers}`, cause })
      }),
      (nc) => Effect.promise(() => nc.close())
    )
    // An ordered consumer that starts with the next message stored.
    const consumer = yield* Effect.tryPromise({
      try: () => Jet.jetstream(nc).consumers.get(settings.stream, { deliver_policy: Jet.DeliverPolicy.New }),
      catch: (cause) => new ConsumerError({ message: "cannot create the consumer", cause })
    })
    const messages = yield* Effect.tryPromise({
      try: () => consumer.consume(),
      catch: (cause) => new ConsumerError({ message: "cannot consume", cause })
    })
    return Effect.tryPromise({
      try: async () => {
        let received = 0
        for await (const m of messages) {
          received++
          const h = (name: string) => m.headers?.get(name) ?? ""
          console.log(
            `   #${String(m.seq).padStart(4)} ${m.subject.padEnd(40)} order ${h(NatsPublisher.Headers.aggregateId).slice(0, 8)} v${h(NatsPublisher.Headers.version)}  ${h(NatsPublisher.Headers.correlationId).padEnd(8)} ${m.string()}`
          )
          if (received === count) break
        }
        return received
      },
      catch: (cause) => new ConsumerError({ message: "consuming failed", cause })
    })
  })

/**
 * Places an order, adds two items and ships it: four events in three appends, as one
 * request (their correlation id, sent as a message header, is the request's).
 */
const placeOrder = (i: number) =>
  Effect.gen(function* () {
    const store = yield* EventStore.EventStore
    const order = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
    yield* store.append(order, [{ event: OrderPlaced.make({ customer_id: `customer-${i}`, total: 100 + i }) }], {
      expectedVersion: ExpectedVersion.noStream
    })
    yield* store.append(
      order,
      [
        { event: ItemAdded.make({ sku: `SKU-${i}-A`, quantity: 1 }) },
        { event: ItemAdded.make({ sku: `SKU-${i}-B`, quantity: 2 }) }
      ],
      { expectedVersion: ExpectedVersion.exact(1) }
    )
    yield* store.append(order, [{ event: OrderShipped.make({ tracking_number: `TRACK-${i}` }) }], {
      expectedVersion: ExpectedVersion.exact(3)
    })
  }).pipe(EventMetadata.withCorrelationId(`req-${i}`))

const program = Effect.gen(function* () {
  const orders = 3
  yield* Console.log(`1. JetStream stream ${settings.stream} ready; the relay is running.`)
  const printing = yield* Effect.flatten(consume(orders * 4)).pipe(Effect.fork)

  yield* Console.log(`2. Appending ${orders} orders with the outbox enabled (4 events each), concurrently.`)
  yield* Console.log("   The consumer prints each message as it arrives (the relay is woken by LISTEN/NOTIFY):")
  yield* Effect.forEach(
    Array.from({ length: orders }, (_, i) => i + 1),
    placeOrder,
    {
      concurrency: "unbounded",
      discard: true
    }
  )

  const received = yield* Fiber.join(printing).pipe(Effect.timeout("30 seconds"))
  yield* Console.log(`   ${received} messages received, in version order per order.`)

  // The relay marks entries published right after the broker's acks.
  const relay = yield* OutboxRelay.OutboxRelay
  const stats = yield* relay.stats.pipe(
    Effect.filterOrFail(
      (s) => s.pending === 0,
      () => new ConsumerError({ message: "entries still pending", cause: null })
    ),
    Effect.retry({ schedule: Schedule.spaced("20 millis"), times: 500 })
  )
  yield* Console.log("3. Outbox:")
  yield* Console.log(`   pending: ${stats.pending}, published: ${stats.published}, failed: ${stats.failed}`)
  yield* Console.log(
    `   oldest pending: ${Option.match(stats.oldestPendingAge, { onNone: () => "none", onSome: (age) => `${age}` })}`
  )
  const deleted = yield* relay.deletePublished("7 days")
  yield* Console.log(`   deleted ${deleted} entries published more than 7 days ago.`)
}).pipe(Effect.scoped)

const main = Effect.gen(function* () {
  yield* Console.log(rule)
  yield* Console.log("Transactional outbox to NATS JetStream")
  yield* Console.log(rule)
  yield* Effect.provide(program, AppLive)
  yield* Console.log(rule)
  yield* Console.log("SUCCESS: every event went from PostgreSQL to JetStream through the outbox.")
  yield* Console.log(rule)
})

// Telemetry (nothing without OTEL_* variables) around everything, so the pool records its metrics too.
NodeRuntime.runMain(Effect.provide(main, OtelTelemetry.layerConfig({ serviceName: "eventfold-outbox-nats" })))
