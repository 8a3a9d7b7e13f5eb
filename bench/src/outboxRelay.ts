/**
 * Outbox relay throughput to NATS JetStream, with acks (issue 3): events are
 * appended with the outbox enabled, then one relay drains them to a fresh
 * JetStream stream; the figure is published events per second of the drain.
 *
 *   npm run bench:outbox                       # 1,000 aggregates x 10 events, batches of 500
 *   AGGREGATES=10 PER=1000 WORKERS=4 npm run bench:outbox
 *
 * PostgreSQL from DATABASE_URL (the role must be allowed to CREATE DATABASE),
 * NATS from NATS_URL (default nats://127.0.0.1:4222).
 */
import { Event, EventRegistry, ExpectedVersion, Outbox, OutboxRelay, Publisher } from "@eventfold/core"
import { NatsPublisher } from "@eventfold/nats"
import { PgEventStore, PgMigrations, PgOutbox, PgPool } from "@eventfold/pg"
import * as Jet from "@nats-io/jetstream"
import * as Nats from "@nats-io/transport-node"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import pg from "pg"

const OrderPlaced = Event.make("OrderPlaced", { total: Schema.Number, customer: Schema.String })
const registry = EventRegistry.make(OrderPlaced)
const aggregates = Number(process.env.AGGREGATES ?? 1000)
const perAggregate = Number(process.env.PER ?? 10)
const batchSize = Number(process.env.BATCH ?? 500)
const workers = Number(process.env.WORKERS ?? 1)
const server = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres"
const natsUrl = process.env.NATS_URL ?? "nats://127.0.0.1:4222"

const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`
const database = `eventfold_bench_outbox_${run}`
const stream = `EFBENCH_${run.toUpperCase()}`
const url = new URL(server)
url.pathname = `/${database}`

const admin = new pg.Client({ connectionString: server })
await admin.connect()
await admin.query(`CREATE DATABASE ${database}`)

const program = Effect.gen(function* () {
  const context = yield* Layer.build(PgPool.layer({ url: Redacted.make(url.toString()), poolSize: 8 }))
  yield* PgMigrations.run.pipe(Effect.provide(context))
  const store = yield* PgEventStore.make({ registry, outbox: true }).pipe(Effect.provide(context))
  const outbox = yield* PgOutbox.make().pipe(Effect.provide(context))
  const publisher = yield* NatsPublisher.make({ servers: natsUrl, subjectPrefix: `efbench.${run}`, stream })

  const appendStart = performance.now()
  yield* Effect.forEach(
    Array.from({ length: aggregates }, () => crypto.randomUUID()),
    (aggregateId) =>
      store.append(
        { aggregateId, aggregateType: "Order" },
        Array.from({ length: perAggregate }, (_, i) => ({ event: OrderPlaced.make({ total: i, customer: "c-1" }) })),
        { expectedVersion: ExpectedVersion.noStream }
      ),
    { concurrency: 8, discard: true }
  )
  const total = aggregates * perAggregate
  console.log(`appended ${total} events with the outbox in ${Math.round(performance.now() - appendStart)} ms`)

  const relay = yield* OutboxRelay.make({ start: false, batchSize, workers }).pipe(
    Effect.provideService(Outbox.Outbox, outbox),
    Effect.provideService(Publisher.Publisher, publisher)
  )
  const drainStart = performance.now()
  const report = yield* relay.drain
  const ms = performance.now() - drainStart
  const stats = yield* relay.stats
  if (report.published !== total || stats.pending !== 0) {
    return yield* Effect.dieMessage(
      `expected ${total} published and none pending, got ${report.published} / ${stats.pending}`
    )
  }
  console.log(
    `relayed ${report.published} events to JetStream with acks (${aggregates} aggregates x ${perAggregate}, ` +
      `batch ${batchSize}, workers ${workers}) in ${Math.round(ms)} ms: ${Math.round((report.published * 1000) / ms)} events/s`
  )
}).pipe(Effect.scoped)

try {
  await Effect.runPromise(program)
} finally {
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
  await admin.end()
  const nc = await Nats.connect({ servers: natsUrl })
  await Jet.jetstreamManager(nc)
    .then((jsm) => jsm.streams.delete(stream))
    .catch(() => false)
  await nc.close()
}
