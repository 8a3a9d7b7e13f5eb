/**
 * Measures subscriptions on PostgreSQL, on a database of its own (created on the
 * server of DATABASE_URL, dropped at the end):
 *
 * 1. catch-up throughput over a log of MEASURE_EVENTS events (default 200,000);
 * 2. latency from append commit to subscriber delivery, idle (one append at a time);
 * 3. the same under MEASURE_WRITERS concurrent writers (default 8) for MEASURE_SECONDS;
 * 4. what the no-skip technique costs: horizon checks and their duration;
 * 5. what NOTIFY costs appends: throughput of the writers with the trigger, and without.
 *
 * Run with: DATABASE_URL=postgres://... npm run measure -w @eventfold/example-projections
 */

import { NodeRuntime } from "@effect/platform-node"
import * as SqlClient from "@effect/sql/SqlClient"
import { Event, EventRegistry, EventStore, ExpectedVersion } from "@eventfold/core"
import { PgEventStore, PgMigrations, PgPool } from "@eventfold/pg"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import pg from "pg"

const Placed = Event.make("Placed", { customer_id: Schema.String, total: Schema.Number })
const registry = EventRegistry.make(Placed)
const env = (name: string, fallback: number) => {
  const value = Number(process.env[name])
  return Number.isFinite(value) && value > 0 ? value : fallback
}
const EVENTS = env("MEASURE_EVENTS", 200_000)
const WRITERS = env("MEASURE_WRITERS", 8)
const SECONDS = env("MEASURE_SECONDS", 10)
const SAMPLES = env("MEASURE_SAMPLES", 300)
/** The watcher's first refresh delay while positions wait; the library's default (5 ms) unless set. */
const SETTLE = process.env.MEASURE_SETTLE_MILLIS

const percentile = (values: ReadonlyArray<number>, p: number) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? Number.NaN
}
const ms = (n: number) => `${n.toFixed(1)} ms`
const { horizonCheckDuration: horizonDuration, horizonChecks } = PgEventStore.subscriptionMetrics

const measure = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const store = yield* EventStore.EventStore
  yield* PgMigrations.run
  const server = yield* sql<{ version: string }>`SELECT version()`
  yield* Console.log(`server: ${server[0]?.version}`)

  // 1. Catch-up over a bulk-loaded log.
  yield* Console.log(`\n1. loading ${EVENTS} events...`)
  const chunk = 20_000
  for (let from = 0; from < EVENTS; from += chunk) {
    const to = Math.min(EVENTS, from + chunk)
    yield* sql`
      INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, version, timestamp, payload)
      SELECT gen_random_uuid(), md5('order-' || (i % 5000))::uuid, 'Order', 'Placed', i / 5000 + 1, now(),
             jsonb_build_object('customer_id', 'customer-' || (i % 97), 'total', (i % 1000) / 10.0)
        FROM generate_series(${from}::int, ${to - 1}::int) AS i`
  }
  yield* sql`ANALYZE events`
  for (const batchSize of [500, 1000, 5000]) {
    const started = performance.now()
    const count = yield* store.subscribe({ batchSize }).pipe(Stream.take(EVENTS), Stream.runCount)
    const seconds = (performance.now() - started) / 1000
    yield* Console.log(
      `   subscribe (batchSize ${batchSize}): ${count} events in ${seconds.toFixed(2)} s = ${Math.round(count / seconds)} events/s`
    )
  }
  {
    const started = performance.now()
    const count = yield* store.readAll().pipe(Stream.runCount)
    const seconds = (performance.now() - started) / 1000
    yield* Console.log(`   readAll (for comparison): ${Math.round(count / seconds)} events/s`)
  }

  // 2. Idle latency: one append at a time, a subscriber at the head.
  const latencies = (writers: number, duration: number, spacing: number) =>
    Effect.gen(function* () {
      const committed = new Map<string, number>()
      const samples: Array<number> = []
      const head = (yield* sql<{ p: string }>`SELECT coalesce(max(global_position), 0)::text AS p FROM events`)[0]!.p
      const follower = yield* Effect.fork(
        Stream.runForEach(store.subscribe({ after: BigInt(head) }), (event) =>
          Effect.sync(() => {
            const at = performance.now()
            const sent = committed.get(event.eventId)
            if (sent !== undefined) samples.push(Math.max(0, at - sent))
            else committed.set(event.eventId, -at) // delivered before the writer saw its commit
          })
        )
      )
      yield* Effect.sleep("300 millis")
      const checksBefore = (yield* Metric.value(horizonChecks)).count
      const started = performance.now()
      let appended = 0
      yield* Effect.all(
        Array.from({ length: writers }, () =>
          Effect.gen(function* () {
            while (performance.now() - started < duration * 1000) {
              const eventId = crypto.randomUUID()
              yield* store.append(
                { aggregateId: crypto.randomUUID(), aggregateType: "Order" },
                [{ event: Placed.make({ customer_id: "c", total: 1 }), eventId }],
                { expectedVersion: ExpectedVersion.noStream }
              )
              const at = performance.now()
              const delivered = committed.get(eventId)
              if (delivered !== undefined && delivered < 0) samples.push(0)
              else committed.set(eventId, at)
              appended++
              if (spacing > 0) yield* Effect.sleep(`${spacing} millis`)
            }
          })
        ),
        { concurrency: "unbounded", discard: true }
      )
      const elapsed = (performance.now() - started) / 1000
      yield* Effect.sleep("1 second")
      yield* Fiber.interrupt(follower)
      const checks = (yield* Metric.value(horizonChecks)).count - checksBefore
      return { samples, appended, elapsed, checks }
    })

  yield* Console.log(`\n2. latency, idle (${SAMPLES} single appends, 10 ms apart)`)
  const idle = yield* latencies(1, SAMPLES * 0.012, 10)
  yield* Console.log(
    `   ${idle.samples.length} samples: p50 ${ms(percentile(idle.samples, 50))}, p99 ${ms(percentile(idle.samples, 99))}, max ${ms(Math.max(...idle.samples))}`
  )

  yield* Console.log(`\n3. latency under ${WRITERS} writers (${SECONDS} s of single-event appends, no pause)`)
  const loaded = yield* latencies(WRITERS, SECONDS, 0)
  yield* Console.log(
    `   ${loaded.appended} appends (${Math.round(loaded.appended / loaded.elapsed)}/s), ${loaded.samples.length} samples: p50 ${ms(percentile(loaded.samples, 50))}, p99 ${ms(percentile(loaded.samples, 99))}, max ${ms(Math.max(...loaded.samples))}`
  )

  yield* Console.log("\n4. cost of the no-skip technique (horizon checks)")
  const duration = yield* Metric.value(horizonDuration)
  yield* Console.log(
    `   under load: ${Math.round(loaded.checks / loaded.elapsed)} checks/s; overall ${duration.count} checks, mean ${ms(duration.sum / Math.max(1, duration.count))}, max ${ms(duration.max)}`
  )
  {
    const started = performance.now()
    for (let i = 0; i < 500; i++) yield* sql`SELECT last_position, writers, writer_pids FROM eventfold_log_horizon()`
    yield* Console.log(`   idle: one check (a round trip) takes ${ms((performance.now() - started) / 500)}`)
  }

  yield* Console.log(`\n5. cost of NOTIFY for appends (${WRITERS} writers, 5 s each)`)
  const throughput = Effect.gen(function* () {
    const started = performance.now()
    let appended = 0
    yield* Effect.all(
      Array.from({ length: WRITERS }, () =>
        Effect.gen(function* () {
          while (performance.now() - started < 5000) {
            yield* store.append(
              { aggregateId: crypto.randomUUID(), aggregateType: "Order" },
              [{ event: Placed.make({ customer_id: "c", total: 1 }) }],
              { expectedVersion: ExpectedVersion.noStream }
            )
            appended++
          }
        })
      ),
      { concurrency: "unbounded", discard: true }
    )
    return Math.round(appended / ((performance.now() - started) / 1000))
  })
  const quiet = yield* throughput
  // A subscriber following: it asks for notifications only while it has nothing pending.
  const follower = yield* Effect.fork(Stream.runDrain(store.subscribe({ after: BigInt(EVENTS) })))
  yield* Effect.sleep("300 millis")
  const following = yield* throughput
  yield* Fiber.interrupt(follower)
  // What appends cost when every one notifies (a listener that always waits).
  const [me] = yield* sql<{ pid: number }>`SELECT pg_backend_pid() AS pid`
  yield* sql`INSERT INTO eventfold_listeners (listener_id, pid, waiting) VALUES (gen_random_uuid(), ${me!.pid}, true)`
  const always = yield* throughput
  yield* sql`DELETE FROM eventfold_listeners WHERE pid = ${me!.pid}`
  yield* Console.log(
    `   appends/s: no subscriber ${quiet}; a subscriber following ${following}; every append notifying ${always}`
  )
})

const main = Effect.gen(function* () {
  const server = process.env.DATABASE_URL
  if (server === undefined)
    return yield* Effect.dieMessage("set DATABASE_URL to a server where a database can be created")
  const name = `eventfold_measure_${Date.now().toString(36)}`
  const admin = async (query: string) => {
    const client = new pg.Client({ connectionString: server })
    await client.connect()
    try {
      await client.query(query)
    } finally {
      await client.end()
    }
  }
  yield* Effect.acquireRelease(
    Effect.promise(() => admin(`CREATE DATABASE ${name}`)),
    () => Effect.promise(() => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))
  )
  const url = new URL(server)
  url.pathname = `/${name}`
  const live = PgEventStore.layerPrepared({
    registry,
    subscriptions: SETTLE === undefined ? {} : { settleInterval: `${Number(SETTLE)} millis` }
  }).pipe(
    Layer.provideMerge(PgPool.layer({ url: Redacted.make(url.toString()), poolSize: WRITERS + 4, maxOverflow: 8 }))
  )
  yield* Effect.provide(measure, live)
})

NodeRuntime.runMain(Effect.scoped(main))
