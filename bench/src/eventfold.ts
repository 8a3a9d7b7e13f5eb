/**
 * The Eventfold side: the public API through Effect layers, as an application
 * wires it (PgPool.layer + PgEventStore.layerPrepared; AggregateRepository for W4).
 * Same workloads, warm-up and counters as `raw.ts`.
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as Aggregate from "@eventfold/core/Aggregate"
import * as AggregateRepository from "@eventfold/core/AggregateRepository"
import type * as Errors from "@eventfold/core/Errors"
import * as Event from "@eventfold/core/Event"
import * as EventRegistry from "@eventfold/core/EventRegistry"
import * as EventStore from "@eventfold/core/EventStore"
import * as ExpectedVersion from "@eventfold/core/ExpectedVersion"
import * as OtelTelemetry from "@eventfold/opentelemetry/OtelTelemetry"
import * as PgEventStore from "@eventfold/pg/PgEventStore"
import * as PgPool from "@eventfold/pg/PgPool"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { AGGREGATE_TYPE, EVENT_TYPE, emptyTotals, fold, payload } from "./payload.js"
import { type Measurement, type RunContext, type Runner, share } from "./protocol.js"
import { Latencies } from "./stats.js"

export const OrderItemAdded = Event.make(EVENT_TYPE, {
  order_id: Schema.String,
  customer_id: Schema.String,
  sku: Schema.String,
  quantity: Schema.Number,
  unit_price: Schema.Number,
  currency: Schema.String,
  note: Schema.String
})

export const registry = EventRegistry.make(OrderItemAdded)

const Order = Aggregate.make({
  type: AGGREGATE_TYPE,
  events: [OrderItemAdded],
  initialState: () => emptyTotals,
  evolve: fold
})

const stream = (aggregateId: string): EventStore.StreamId => ({ aggregateId, aggregateType: AGGREGATE_TYPE })

type Counters = Readonly<Record<string, number>>
type Phase<E> = (operations: number, latencies: Latencies) => Effect.Effect<Counters, E, EventStore.EventStore>

/**
 * Builds the store over a pool of `connections` (all opened first), runs `phase`
 * with `params.warmup` operations untimed, then with `operations` timed.
 */
const warmThenTime = <E>(
  context: RunContext,
  connections: number,
  phase: Phase<E>,
  operations: number,
  events: (counters: Counters) => number
): Promise<Measurement> => {
  const live = PgEventStore.layerPrepared({ registry, pageSize: context.params.pageSize ?? 1000 }).pipe(
    Layer.provideMerge(PgPool.layer({ url: Redacted.make(context.url), poolSize: connections, maxOverflow: 0 }))
  )
  const program = Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    yield* Effect.all(
      Array.from({ length: connections }, () => sql`SELECT 1`),
      { concurrency: "unbounded", discard: true }
    )
    const warmup = yield* phase(context.params.warmup ?? 0, new Latencies())
    const latencies = new Latencies()
    const cpu = process.cpuUsage()
    const start = performance.now()
    const counters = yield* phase(operations, latencies)
    const elapsedMs = performance.now() - start
    const { user, system } = process.cpuUsage(cpu)
    return {
      events: events(counters),
      cpuMs: (user + system) / 1000,
      operations: latencies.samples.length,
      elapsedMs,
      latencies: latencies.summary(),
      counters: {
        ...counters,
        ...Object.fromEntries(Object.entries(warmup).map(([k, v]) => [`warmup${k[0]!.toUpperCase()}${k.slice(1)}`, v]))
      }
    } satisfies Measurement
  })
  // As an application provides it: exports when OTEL_EXPORTER_OTLP_ENDPOINT is set (see
  // `npm run bench:otlp-sink`), and is nothing otherwise.
  return Effect.runPromise(Effect.provide(program, Layer.merge(live, Layer.orDie(OtelTelemetry.layerConfig()))))
}

/** Runs `writers` concurrent loops. */
const concurrently = <E>(writers: number, body: (writer: number) => Effect.Effect<void, E, EventStore.EventStore>) =>
  Effect.forEach(
    Array.from({ length: writers }, (_, w) => w),
    body,
    { concurrency: writers, discard: true }
  )

/** Single-event appends; each writer starts a new stream every `streamLength` appends. */
const singleAppends =
  (writers: number, streamLength: number): Phase<Errors.AppendError> =>
  (appends, latencies) =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      let streams = 0
      yield* concurrently(writers, (w) =>
        Effect.gen(function* () {
          let aggregateId = ""
          for (let i = 0; i < share(appends, writers, w); i++) {
            const version = (i % streamLength) + 1
            if (version === 1) {
              aggregateId = crypto.randomUUID()
              streams++
            }
            const event = OrderItemAdded.make(payload(aggregateId, i))
            const t = performance.now()
            yield* store.append(stream(aggregateId), [{ event }], {
              expectedVersion: version === 1 ? ExpectedVersion.noStream : ExpectedVersion.exact(version - 1)
            })
            latencies.time(t)
          }
        })
      )
      return { events: appends, streams }
    })

const W1: Runner = (context) => warmThenTime(context, 1, singleAppends(1, 1), context.params.appends!, (c) => c.events!)

const W2: Runner = (context) =>
  warmThenTime(
    context,
    context.params.writers!,
    singleAppends(context.params.writers!, context.params.streamLength!),
    context.params.appends!,
    (c) => c.events!
  )

const W3: Runner = (context) => {
  const batch = context.params.batch!
  return warmThenTime(
    context,
    1,
    (appends, latencies) =>
      Effect.gen(function* () {
        const store = yield* EventStore.EventStore
        for (let i = 0; i < appends; i++) {
          const aggregateId = crypto.randomUUID()
          const events = Array.from({ length: batch }, (_, k) => ({
            event: OrderItemAdded.make(payload(aggregateId, i * batch + k))
          }))
          const t = performance.now()
          yield* store.append(stream(aggregateId), events, { expectedVersion: ExpectedVersion.noStream })
          latencies.time(t)
        }
        return { events: appends * batch, streams: appends }
      }),
    context.params.appends!,
    (c) => c.events!
  )
}

const W4: Runner = (context) => {
  const aggregateId = String(context.seed.aggregateId)
  return warmThenTime(
    context,
    1,
    (reads, latencies) =>
      Effect.gen(function* () {
        const repository = yield* AggregateRepository.make(Order)
        let events = 0
        let first: typeof emptyTotals | undefined
        let last = emptyTotals
        let mismatches = 0
        for (let r = 0; r < reads; r++) {
          const t = performance.now()
          const root = yield* repository.load(aggregateId)
          latencies.time(t)
          events += root.version
          first ??= root.state
          if (root.state.amount !== first.amount || root.state.items !== first.items) mismatches++
          last = root.state
        }
        return { events, items: last.items, amount: last.amount, mismatches }
      }),
    context.params.reads!,
    (c) => c.events!
  )
}

const W5: Runner = (context) =>
  warmThenTime(
    context,
    1,
    (limit, latencies) =>
      Effect.gen(function* () {
        // `limit` events from the start of the log (the warm-up reads a prefix).
        const store = yield* EventStore.EventStore
        let events = 0
        let quantity = 0
        let amount = 0
        let outOfOrder = 0
        let previous = 0n
        let mark = performance.now()
        yield* store.readAll(Number.isSafeInteger(limit) ? { limit } : {}).pipe(
          Stream.runForEachChunk((chunk) =>
            Effect.sync(() => {
              for (const recorded of chunk) {
                if (recorded.globalPosition <= previous) outOfOrder++
                previous = recorded.globalPosition
                if (recorded.event._tag !== EVENT_TYPE) throw new Error(`unexpected event type ${recorded.eventType}`)
                const event = recorded.event as typeof OrderItemAdded.Type
                quantity += event.quantity
                amount += event.quantity * event.unit_price
                if (++events % 1000 === 0) {
                  latencies.time(mark)
                  mark = performance.now()
                }
              }
            })
          )
        )
        return { events, quantity, amount, outOfOrder }
      }),
    Number.MAX_SAFE_INTEGER,
    (c) => c.events!
  )

const W6: Runner = (context) => {
  const writers = context.params.writers!
  return warmThenTime(
    context,
    writers,
    (attempts, latencies) =>
      Effect.gen(function* () {
        const store = yield* EventStore.EventStore
        const aggregateId = crypto.randomUUID()
        let issued = 0
        let successes = 0
        let conflicts = 0
        let claimedTwice = 0
        const claimed = new Set<number>()
        yield* concurrently(writers, () =>
          Effect.gen(function* () {
            let known = 0
            while (issued < attempts) {
              issued++
              const event = OrderItemAdded.make(payload(aggregateId, issued))
              const t = performance.now()
              known = yield* store
                .append(stream(aggregateId), [{ event }], {
                  expectedVersion: known === 0 ? ExpectedVersion.noStream : ExpectedVersion.exact(known)
                })
                .pipe(
                  Effect.map(({ version }) => {
                    successes++
                    if (claimed.has(version)) claimedTwice++
                    claimed.add(version)
                    return version
                  }),
                  Effect.catchTag("ConcurrencyError", (error) =>
                    Effect.sync(() => {
                      conflicts++
                      return error.actualVersion
                    })
                  )
                )
              latencies.time(t)
            }
          })
        )
        return { successes, conflicts, claimedTwice, streams: 1 }
      }),
    context.params.attempts!,
    (c) => c.successes!
  )
}

/** Appends with no expected version, racing on one stream: every one lands at the next version. */
const W9: Runner = (context) => {
  const writers = context.params.writers!
  return warmThenTime(
    context,
    writers,
    (appends, latencies) =>
      Effect.gen(function* () {
        const store = yield* EventStore.EventStore
        const aggregateId = crypto.randomUUID()
        let issued = 0
        let appended = 0
        let claimedTwice = 0
        const claimed = new Set<number>()
        yield* concurrently(writers, () =>
          Effect.gen(function* () {
            while (issued < appends) {
              issued++
              const event = OrderItemAdded.make(payload(aggregateId, issued))
              const t = performance.now()
              const { version } = yield* store.append(stream(aggregateId), [{ event }], {
                expectedVersion: ExpectedVersion.any
              })
              appended++
              if (claimed.has(version)) claimedTwice++
              claimed.add(version)
              latencies.time(t)
            }
          })
        )
        return { appended, retries: 0, claimedTwice, streams: 1 }
      }),
    context.params.appends!,
    (c) => c.appended!
  )
}

export const runners: Readonly<Record<string, Runner>> = {
  W1,
  W2,
  W3,
  W4,
  W5,
  W6,
  W9,
  // Loaded when they run, so that the other workloads' processes stay as they were.
  W7: (context) => import("./subscriberEventfold.js").then((m) => m.run(context)),
  W8: (context) => import("./outboxEventfold.js").then((m) => m.run(context))
}
