/**
 * `npm run bench:poison`: does one poison outbox entry slow the other aggregates down?
 *
 * The relay runs as an application runs it (its background fiber over PgOutbox and
 * NatsPublisher, default options but the retry schedule), while 16 writers append one
 * event at a time to aggregates of their own for the phase's length. Each event's
 * latency is the time from its append's commit to its arrival at a plain NATS
 * subscriber on the stream's subjects. Two phases, each on a fresh database and
 * JetStream stream:
 * - clean: nothing but the writers;
 * - poison: first an aggregate whose version 2 is larger than the server's
 *   `max_payload` (and version 3 behind it), then the same writers. The poison entry
 *   must end `failed` after its budget, with version 3 held, and every other event
 *   must arrive.
 * Printed: p50, p95, p99 and max of the writers' latencies per phase, and when the
 * poison entry failed. Needs NATS with JetStream on NATS_URL; uses DATABASE_URL when set,
 * otherwise an embedded PostgreSQL.
 */
import * as Os from "node:os"
import * as Path from "node:path"
import { Event, EventRegistry, EventStore, ExpectedVersion, Outbox, OutboxRelay, Publisher } from "@eventfold/core"
import { NatsPublisher } from "@eventfold/nats"
import { PgEventStore, PgMigrations, PgOutbox, PgPool } from "@eventfold/pg"
import { EmbeddedPostgres } from "@eventfold/pg-embedded"
import * as Nats from "@nats-io/transport-node"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import pg from "pg"

const natsUrl = process.env.NATS_URL ?? "nats://127.0.0.1:4222"
const seconds = Number(process.env.POISON_SECONDS ?? 20)
const writers = 16
const retryBudget = 5
// The default schedule's shape (exponential from 1 second) without its 5-minute cap's jitter: the
// budget of 5 is spent after about 15 seconds, within the phase.
const retrySchedule = Schedule.exponential("1 second", 2)

const OrderPlaced = Event.make("OrderPlaced", { total: Schema.Number, note: Schema.String })
const registry = EventRegistry.make(OrderPlaced)

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

const serverUrl = Effect.gen(function* () {
  const fromEnv = process.env.DATABASE_URL
  if (fromEnv !== undefined && fromEnv !== "") return fromEnv
  const server = yield* EmbeddedPostgres.start({
    dataDir: Path.join(Os.tmpdir(), `eventfold-bench-poison-${process.pid}`),
    persistent: false
  })
  return Redacted.value(server.url)
})

const freshDatabase = (admin: string, name: string) =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const client = new pg.Client({ connectionString: admin })
      await client.connect()
      await client.query(`CREATE DATABASE ${name}`)
      await client.end()
      const url = new URL(admin)
      url.pathname = `/${name}`
      return url.toString()
    }),
    () =>
      Effect.promise(async () => {
        const client = new pg.Client({ connectionString: admin })
        await client.connect()
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
        await client.end()
      })
  )

interface PhaseResult {
  readonly name: string
  readonly latencies: ReadonlyArray<number>
  readonly missing: number
  readonly poisonFailedAfter: number | undefined
  readonly poisonRetries: number | undefined
}

const phase = (admin: string, name: string, poison: boolean) =>
  Effect.gen(function* () {
    const id = crypto.randomUUID().replaceAll("-", "").slice(0, 10)
    const url = yield* freshDatabase(admin, `bench_poison_${id}`)
    const names = { stream: `BENCH_POISON_${id}`, subjectPrefix: `benchpoison.${id}` }
    const nc = yield* Effect.acquireRelease(
      Effect.promise(() => Nats.connect({ servers: natsUrl })),
      (nc) => Effect.promise(() => nc.close())
    )
    const arrived = new Map<string, number>()
    const sub = nc.subscribe(`${names.subjectPrefix}.>`)
    void (async () => {
      for await (const m of sub) arrived.set(m.headers?.get(NatsPublisher.Headers.eventId) ?? "", performance.now())
    })()
    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        const { jetstreamManager } = await import("@nats-io/jetstream")
        const jsm = await jetstreamManager(nc)
        await jsm.streams.delete(names.stream).catch(() => false)
      })
    )

    const pool = PgPool.layer({ url: Redacted.make(url), poolSize: writers, maxOverflow: 4 })
    const publisher = NatsPublisher.layer({ servers: natsUrl, ...names })
    const app = Layer.mergeAll(
      PgEventStore.layerPrepared({ registry, outbox: true }),
      OutboxRelay.layer({ retryBudget, retrySchedule }).pipe(
        Layer.provideMerge(Layer.merge(PgOutbox.layer(), publisher))
      )
    ).pipe(Layer.provideMerge(Layer.merge(pool, PgMigrations.layer.pipe(Layer.provide(pool)))))

    return yield* Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const outbox = yield* Outbox.Outbox
      yield* Publisher.awaitReady(yield* Publisher.Publisher)
      const start = performance.now()
      let poisonEvent: string | undefined
      if (poison) {
        const poisoned = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
        const big = "x".repeat(nc.info!.max_payload + 1024)
        yield* store.append(poisoned, [{ event: OrderPlaced.make({ total: 1, note: "" }) }], {
          expectedVersion: ExpectedVersion.noStream
        })
        poisonEvent = crypto.randomUUID()
        yield* store.append(poisoned, [{ eventId: poisonEvent, event: OrderPlaced.make({ total: 2, note: big }) }], {
          expectedVersion: ExpectedVersion.exact(1)
        })
        yield* store.append(poisoned, [{ event: OrderPlaced.make({ total: 3, note: "" }) }], {
          expectedVersion: ExpectedVersion.exact(2)
        })
      }
      const committed = new Map<string, number>()
      const deadline = start + seconds * 1000
      yield* Effect.forEach(
        Array.from({ length: writers }),
        () =>
          Effect.gen(function* () {
            const order = { aggregateId: crypto.randomUUID(), aggregateType: "Order" }
            let version = 0
            while (performance.now() < deadline) {
              const eventId = crypto.randomUUID()
              yield* store.append(order, [{ eventId, event: OrderPlaced.make({ total: version, note: "" }) }], {
                expectedVersion: ExpectedVersion.exact(version)
              })
              committed.set(eventId, performance.now())
              version++
              yield* Effect.sleep("20 millis")
            }
          }),
        { concurrency: "unbounded", discard: true }
      )
      // Everything the writers wrote arrives, and the poison entry ends failed.
      const done = Effect.sync(() => [...committed.keys()].every((eventId) => arrived.has(eventId)))
      yield* done.pipe(Effect.repeat({ until: (ok) => ok, schedule: Schedule.spaced("50 millis") }))
      let poisonFailedAfter: number | undefined
      let poisonRetries: number | undefined
      if (poisonEvent !== undefined) {
        const failed = outbox
          .list({ status: "failed" })
          .pipe(Effect.map((rows) => rows.find((row) => row.message.eventId === poisonEvent)))
        const row = yield* failed.pipe(
          Effect.flatMap((row) => (row === undefined ? Effect.fail("not yet" as const) : Effect.succeed(row))),
          Effect.retry(Schedule.spaced("100 millis"))
        )
        poisonFailedAfter = (performance.now() - start) / 1000
        poisonRetries = row.retryCount
        const stats = yield* outbox.stats
        if (stats.held !== 1)
          yield* Effect.dieMessage(`expected version 3 held behind the poison entry, held ${stats.held}`)
      }
      const latencies = [...committed].map(([eventId, at]) => arrived.get(eventId)! - at).sort((a, b) => a - b)
      return {
        name,
        latencies,
        missing: [...committed.keys()].filter((eventId) => !arrived.has(eventId)).length,
        poisonFailedAfter,
        poisonRetries
      } satisfies PhaseResult
    }).pipe(Effect.provide(app))
  }).pipe(Effect.scoped)

const main = Effect.gen(function* () {
  const admin = yield* serverUrl
  console.error(
    `bench:poison: ${writers} writers for ${seconds} s per phase, NATS at ${natsUrl}; ${Os.cpus().length} CPUs, node ${process.version}`
  )
  const results = [yield* phase(admin, "clean", false), yield* phase(admin, "with a poison entry", true)]
  console.log("| phase | events | p50 ms | p95 ms | p99 ms | max ms | poison entry |")
  console.log("|---|---:|---:|---:|---:|---:|---|")
  for (const r of results) {
    const f = (p: number) => percentile(r.latencies, p).toFixed(1)
    console.log(
      `| ${r.name} | ${r.latencies.length} | ${f(50)} | ${f(95)} | ${f(99)} | ${(r.latencies.at(-1) ?? Number.NaN).toFixed(1)} | ${
        r.poisonFailedAfter === undefined
          ? "-"
          : `failed after ${r.poisonFailedAfter.toFixed(1)} s, ${r.poisonRetries} attempts; version 3 held`
      } |`
    )
  }
}).pipe(Effect.scoped, Logger.withMinimumLogLevel(LogLevel.Error))

Effect.runPromise(main).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
