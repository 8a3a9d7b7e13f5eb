/**
 * The contract of `EventStore.subscribe` (DESIGN §3 "Global order", §5), run against
 * every backend: catch up, then follow live, in `readAll`'s order, each committed
 * event once, none rolled back; filters in the store with progress when matches are
 * sparse; undecodable events named, never dropped.
 *
 * @since 0.1.0
 */

import { assert, describe, layer } from "@effect/vitest"
import { Event, EventRegistry, type EventStore, ExpectedVersion, type Subscription, Telemetry } from "@eventfold/core"
import * as Arr from "effect/Array"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { ConformanceBackend } from "./ConformanceBackend.js"
import { eventually } from "./internal/eventually.js"
import { clockAhead, recorded } from "./internal/metrics.js"
import { orSkip } from "./internal/skip.js"
import { recordingSpans } from "./internal/spans.js"

/**
 * An event of the subscription, checkpoint, dead-letter and projection suites.
 *
 * @since 0.1.0
 * @category models
 */
export const ItemAdded = Event.make("ItemAdded", { sku: Schema.String, quantity: Schema.Int })
/**
 * An event of the subscription, checkpoint, dead-letter and projection suites.
 *
 * @since 0.1.0
 * @category models
 */
export const NoteWritten = Event.make("NoteWritten", { text: Schema.String })
/**
 * An event only `writerRegistry` knows.
 *
 * @since 0.1.0
 * @category models
 */
export const Secret = Event.make("SecretWritten", { value: Schema.String })
/**
 * The registry the suites' stores decode with (`ConformanceBackend.store(registry)`).
 *
 * @since 0.1.0
 * @category models
 */
export const registry = EventRegistry.make(ItemAdded, NoteWritten)
/**
 * Knows one more type than `registry`: events appended with it are undecodable for `registry`.
 *
 * @since 0.1.0
 * @category models
 */
export const writerRegistry = EventRegistry.make(ItemAdded, NoteWritten, Secret)

const uuid = () => crypto.randomUUID()
const uniqueType = (prefix: string) => `${prefix}${uuid().slice(0, 8)}`
const note = (text: string): EventStore.EventToAppend => ({ event: NoteWritten.make({ text }) })
const notes = (n: number, prefix = "n") => Arr.makeBy(n, (i) => note(`${prefix}${i + 1}`))
const collect = <A, E>(s: Stream.Stream<A, E>) => Effect.map(Stream.runCollect(s), Chunk.toReadonlyArray)
/** Guards every live read: a subscription that stops delivering fails the test instead of hanging it. */
const within = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.timeout(effect, "30 seconds")

/**
 * Registers the subscription conformance tests (vitest, through `@effect/vitest`) against the
 * backend the layer provides (the first argument names the `describe` block).
 *
 * @since 0.1.0
 * @category constructors
 */
export const suite = (name: string, backend: Layer.Layer<ConformanceBackend>) =>
  layer(backend, { excludeTestServices: true, timeout: "120 seconds" })(`Subscription conformance: ${name}`, (it) => {
    const withStore = Effect.flatMap(ConformanceBackend, (b) => b.store(registry))

    describe("subscribe", () => {
      it.effect("catches up, then follows live appends, in readAll's order, each event once", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const aggregateType = uniqueType("Sub")
          const streams = Arr.makeBy(3, () => ({ aggregateId: uuid(), aggregateType }))
          for (const s of streams) yield* store.append(s, notes(10, "old-"), { expectedVersion: ExpectedVersion.any })

          const follower = yield* Effect.fork(
            within(collect(store.subscribe({ aggregateTypes: [aggregateType] }).pipe(Stream.take(60))))
          )
          yield* Effect.all(
            streams.map((s) =>
              Effect.forEach(Arr.range(1, 5), (i) =>
                store.append(s, notes(2, `new${i}-`), { expectedVersion: ExpectedVersion.any })
              )
            ),
            { concurrency: "unbounded" }
          )
          const delivered = yield* Fiber.join(follower)
          const log = yield* collect(store.readAll({ aggregateTypes: [aggregateType] }))
          assert.strictEqual(log.length, 60)
          assert.deepStrictEqual(
            delivered.map((e) => e.eventId),
            log.map((e) => e.eventId)
          )
          assert.deepStrictEqual(delivered[0]!.event as unknown, { _tag: "NoteWritten", text: "old-1" })
          // Per stream, versions arrive in order.
          for (const s of streams) {
            const versions = delivered.filter((e) => e.aggregateId === s.aggregateId).map((e) => e.version)
            assert.deepStrictEqual(
              versions,
              Arr.makeBy(20, (i) => i + 1)
            )
          }
        })
      )

      it.effect("each page is a root consumer span that links to the appends of its events", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const aggregateType = uniqueType("Traced")
          const s = { aggregateId: uuid(), aggregateType }
          const [delivered, spans] = yield* recordingSpans(
            Effect.gen(function* () {
              yield* store.append(s, notes(3), { expectedVersion: ExpectedVersion.noStream })
              yield* store.append(s, notes(2), { expectedVersion: ExpectedVersion.exact(3) })
              return yield* within(
                collect(
                  store
                    .subscribe({ aggregateTypes: [aggregateType], batchSize: 100, name: "traced" })
                    .pipe(Stream.take(5))
                )
              ).pipe(Effect.withSpan("the consumer's own span"))
            })
          )
          assert.strictEqual(delivered.length, 5)
          const appends = spans.filter((span) => span.name === "EventStore.append").map((span) => span.spanId)
          const pages = spans.filter((span) => span.name === "EventStore.subscribe")
          assert.isAtLeast(pages.length, 1)
          for (const page of pages) {
            assert.strictEqual(page.kind, "consumer")
            assert.isUndefined(page.parentSpanId, "a page span is a root")
            assert.strictEqual(page.attributes.get("eventfold.subscription.name"), "traced")
          }
          // Every append is linked from the page that delivered its events.
          const linked = pages.flatMap((page) => page.links.map((link) => link.span.spanId))
          assert.sameMembers([...new Set(linked)], appends)
          const counted = pages.reduce((n, page) => n + Number(page.attributes.get("eventfold.event.count") ?? 0), 0)
          assert.isAtLeast(counted, 5)
        })
      )

      it.effect("resumes after a position with the next event, reading in pages of batchSize", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const aggregateType = uniqueType("Resume")
          const s = { aggregateId: uuid(), aggregateType }
          yield* store.append(s, notes(40), { expectedVersion: ExpectedVersion.noStream })
          const log = yield* collect(store.readAll({ aggregateTypes: [aggregateType] }))
          const resumed = yield* within(
            collect(
              store
                .subscribe({ aggregateTypes: [aggregateType], after: log[9]!.globalPosition, batchSize: 7 })
                .pipe(Stream.take(30))
            )
          )
          assert.deepStrictEqual(
            resumed.map((e) => e.version),
            Arr.makeBy(30, (i) => i + 11)
          )
        })
      )

      it.effect("filters by tenant, aggregate type and event type in the store", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const typeA = uniqueType("FilterA")
          const typeB = uniqueType("FilterB")
          const tenant = uuid()
          const other = uuid()
          const a = { aggregateId: uuid(), aggregateType: typeA }
          const b = { aggregateId: uuid(), aggregateType: typeB }
          yield* store.append(a, [{ event: ItemAdded.make({ sku: "x", quantity: 1 }) }, note("a1")], {
            expectedVersion: ExpectedVersion.any,
            tenantId: tenant
          })
          yield* store.append(b, [note("b1")], { expectedVersion: ExpectedVersion.any, tenantId: tenant })
          yield* store.append({ aggregateId: uuid(), aggregateType: typeA }, [note("other")], {
            expectedVersion: ExpectedVersion.any,
            tenantId: other
          })
          yield* store.append(a, [{ event: ItemAdded.make({ sku: "y", quantity: 2 }) }], {
            expectedVersion: ExpectedVersion.any,
            tenantId: tenant
          })
          const byTenant = yield* within(
            collect(
              store.subscribe({ tenantId: tenant.toUpperCase(), aggregateTypes: [typeA, typeB] }).pipe(Stream.take(4))
            )
          )
          assert.deepStrictEqual(
            byTenant.map((e) => e.aggregateType),
            [typeA, typeA, typeB, typeA]
          )
          const items = yield* within(
            collect(store.subscribe({ aggregateTypes: [typeA], eventTypes: [ItemAdded] }).pipe(Stream.take(2)))
          )
          assert.deepStrictEqual(
            items.map((e) => e.event.sku),
            ["x", "y"]
          )
        })
      )

      it.effect("reports progress past positions that match nothing, so that a checkpoint can move", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          const aggregateType = uniqueType("Sparse")
          const s = { aggregateId: uuid(), aggregateType }
          yield* store.append(s, [{ event: ItemAdded.make({ sku: "only", quantity: 1 }) }], {
            expectedVersion: ExpectedVersion.noStream
          })
          const last = yield* store.append(s, notes(25), { expectedVersion: ExpectedVersion.exact(1) })
          const messages = yield* within(
            collect(
              store.subscribeMessages({ aggregateTypes: [aggregateType], eventTypes: ["ItemAdded"] }).pipe(
                Stream.filter((m) => m._tag !== "Stalled"),
                Stream.takeUntil((m) => m._tag === "Progress" && m.position >= last.lastPosition)
              )
            )
          )
          const events = messages.filter((m) => m._tag === "Event")
          assert.strictEqual(events.length, 1)
          const progress = messages.filter(
            (m): m is Extract<Subscription.Message, { _tag: "Progress" }> => m._tag === "Progress"
          )
          assert.isTrue(progress.at(-1)!.position >= last.lastPosition)
          // Live: more non-matching events move the progress further, with no event.
          const more = yield* store.append(s, notes(3, "later-"), { expectedVersion: ExpectedVersion.exact(26) })
          const live = yield* within(
            collect(
              store
                .subscribeMessages({
                  aggregateTypes: [aggregateType],
                  eventTypes: ["ItemAdded"],
                  after: last.lastPosition
                })
                .pipe(Stream.takeUntil((m) => m._tag === "Progress" && m.position >= more.lastPosition))
            )
          )
          assert.isFalse(live.some((m) => m._tag === "Event"))
        })
      )

      it.effect("an undecodable event fails subscribe naming it, and is a message for subscribeMessages", () =>
        Effect.gen(function* () {
          const b = yield* ConformanceBackend
          const writer = yield* b.store(writerRegistry)
          const reader = yield* withStore
          const aggregateType = uniqueType("Odd")
          const s = { aggregateId: uuid(), aggregateType }
          yield* writer.append(s, [note("before"), { event: Secret.make({ value: "s" }) }, note("after")], {
            expectedVersion: ExpectedVersion.noStream
          })
          const log = yield* collect(writer.readAll({ aggregateTypes: [aggregateType] }))
          const error = yield* Effect.flip(
            within(collect(reader.subscribe({ aggregateTypes: [aggregateType] }).pipe(Stream.take(3))))
          )
          assert.deepInclude(error, {
            _tag: "UnknownEventTypeError",
            eventType: "SecretWritten",
            eventId: log[1]!.eventId,
            globalPosition: log[1]!.globalPosition
          })
          const messages = yield* within(
            collect(
              reader.subscribeMessages({ aggregateTypes: [aggregateType] }).pipe(
                Stream.filter((m) => m._tag === "Event" || m._tag === "Undecodable"),
                Stream.take(3)
              )
            )
          )
          assert.deepStrictEqual(
            messages.map((m) => m._tag),
            ["Event", "Undecodable", "Event"]
          )
          const odd = messages[1] as Extract<Subscription.Message, { _tag: "Undecodable" }>
          assert.strictEqual(odd.stored.eventId, log[1]!.eventId)
          assert.deepStrictEqual(odd.stored.payload, { value: "s" })
        })
      )

      it.effect("invalid options are rejected with InvalidEventError", () =>
        Effect.gen(function* () {
          const store = yield* withStore
          for (const options of [{ after: -1n }, { batchSize: 0 }, { tenantId: "nope" }, { eventTypes: [""] }]) {
            const error = yield* Effect.flip(collect(store.subscribe(options).pipe(Stream.take(1))))
            assert.strictEqual(error._tag, "InvalidEventError")
          }
        })
      )
    })

    describe("metrics", () => {
      const measured = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        Effect.locally(effect, Telemetry.metricsEnabled, true)

      it.effect("the events each read method reads are counted by backend and method, only while metrics are on", () =>
        Effect.gen(function* () {
          const b = yield* ConformanceBackend
          const store = yield* withStore
          const aggregateType = uniqueType("Read")
          const s = { aggregateId: uuid(), aggregateType }
          yield* store.append(s, notes(5), { expectedVersion: ExpectedVersion.noStream })
          const count = (operation: string) =>
            Effect.map(
              Metric.value(
                Telemetry.readMetrics.events.pipe(
                  Metric.tagged(Telemetry.Attributes.backend, b.name),
                  Metric.tagged(Telemetry.Attributes.readOperation, operation)
                )
              ),
              (state) => state.count
            )
          const counts = Effect.all([
            count("readStream"),
            count("readStreamEvents"),
            count("readAll"),
            count("subscribe")
          ])
          const readEach = Effect.all([
            collect(store.readStream(s)),
            collect(store.readStreamEvents(s)),
            collect(store.readAll({ aggregateTypes: [aggregateType] })),
            within(collect(store.subscribe({ aggregateTypes: [aggregateType] }).pipe(Stream.take(5))))
          ])

          const before = yield* counts
          yield* readEach
          assert.deepStrictEqual(yield* counts, before, "counted with metrics off")
          yield* measured(readEach)
          assert.deepStrictEqual(
            yield* counts,
            before.map((n) => n + 5)
          )
        })
      )

      it.effect(
        "a named subscription's lag: positions short of the head and the age of its last event, at each page and as the head moves",
        () =>
          Effect.gen(function* () {
            const store = yield* withStore
            const aggregateType = uniqueType("Lag")
            const s = { aggregateId: uuid(), aggregateType }
            const appended = yield* store.append(s, notes(6), { expectedVersion: ExpectedVersion.noStream })
            const log = yield* collect(store.readAll({ aggregateTypes: [aggregateType] }))
            // A follower keeps the store's horizon at the end of the log (on PostgreSQL, its
            // watcher runs while someone follows), so that the head below is known.
            const atEnd = yield* Deferred.make<void>()
            yield* Effect.fork(
              Stream.runForEach(store.subscribe({ aggregateTypes: [aggregateType] }), (event) =>
                event.globalPosition === appended.lastPosition ? Deferred.succeed(atEnd, undefined) : Effect.void
              )
            )
            yield* within(Deferred.await(atEnd))

            // Off: nothing recorded, not even a zero.
            const unmeasured = `lag-off-${uuid()}`
            yield* within(
              collect(store.subscribe({ name: unmeasured, aggregateTypes: [aggregateType] }).pipe(Stream.take(6)))
            )
            for (const metric of [Telemetry.Metrics.subscriptionLag, Telemetry.Metrics.subscriptionLagTime]) {
              assert.isFalse(yield* recorded(metric, { [Telemetry.Attributes.subscription]: unmeasured }))
            }

            const name = `lag-${uuid()}`
            const gauge = (metric: Metric.Metric.Gauge<number>) =>
              Effect.map(
                Metric.value(Metric.tagged(metric, Telemetry.Attributes.subscription, name)),
                (state) => state.value
              )
            const lag = gauge(Telemetry.subscriptionMetrics.lag)
            const lagTime = gauge(Telemetry.subscriptionMetrics.lagTime)
            yield* Effect.gen(function* () {
              const pull = yield* Stream.toPull(
                store.subscribe({ name, aggregateTypes: [aggregateType], batchSize: 2 })
              )
              // The first page: two events delivered, the rest of the log ahead.
              const first = yield* within(pull)
              assert.deepStrictEqual(
                Chunk.toReadonlyArray(first).map((e) => e.version),
                [1, 2]
              )
              assert.strictEqual(yield* lag, Number(appended.lastPosition - log[1]!.globalPosition))
              // Measured against a clock an hour ahead: the event's age is that hour, and a little.
              const age = yield* lagTime
              assert.isAtLeast(age, 3600)
              assert.isBelow(age, 3600 + 300)

              let delivered = first.length
              while (delivered < 6) delivered += (yield* within(pull)).length
              assert.strictEqual(yield* lag, 0, "caught up")
              assert.strictEqual(yield* lagTime, 0, "caught up")

              // The head moves while nobody pulls: the lag grows with it.
              yield* store.append(s, notes(3, "more-"), { expectedVersion: ExpectedVersion.exact(6) })
              yield* eventually(lag, (n) => n === 3, { what: "a lag of the three events appended since" })
            }).pipe(Effect.scoped, measured, Effect.withClock(clockAhead(3_600_000)))
          })
      )
    })

    describe("subscribe with transactions", () => {
      it.effect(
        "delivers an append made in a caller's transaction after other work, once it commits, in position order",
        (ctx) =>
          Effect.gen(function* () {
            const b = yield* ConformanceBackend
            const { sideWrite, transaction } = yield* orSkip(
              ctx,
              Option.all({ transaction: b.transaction, sideWrite: b.sideWrite }),
              `${b.name} has no transactions`
            )
            const store = yield* withStore
            const aggregateType = uniqueType("Tx")
            const early = { aggregateId: uuid(), aggregateType }
            const late = { aggregateId: uuid(), aggregateType }

            const follower = yield* Effect.fork(
              within(collect(store.subscribe({ aggregateTypes: [aggregateType] }).pipe(Stream.take(5))))
            )
            // Takes its positions first but commits last, after other work before and after the append.
            const appended = yield* Deferred.make<void>()
            const commit = yield* Effect.makeLatch(false)
            const slow = yield* Effect.fork(
              transaction(
                Effect.gen(function* () {
                  yield* sideWrite(uuid())
                  yield* store.append(early, notes(2, "slow-"), { expectedVersion: ExpectedVersion.noStream })
                  yield* Deferred.succeed(appended, undefined)
                  yield* commit.await
                  yield* sideWrite(uuid())
                })
              )
            )
            // The slow transaction holds its positions: the fast append comes after them.
            yield* within(Deferred.await(appended))
            yield* store.append(late, notes(1, "fast-"), { expectedVersion: ExpectedVersion.noStream })
            // Rolled back: never delivered.
            yield* Effect.flip(
              transaction(
                Effect.gen(function* () {
                  yield* store.append({ aggregateId: uuid(), aggregateType }, notes(3, "ghost-"), {
                    expectedVersion: ExpectedVersion.noStream
                  })
                  return yield* Effect.fail("rollback" as const)
                })
              )
            )
            yield* commit.open
            yield* Fiber.join(slow)
            yield* store.append(late, notes(2, "after-"), { expectedVersion: ExpectedVersion.exact(1) })
            const delivered = yield* Fiber.join(follower)
            const texts = delivered.map((e) => (e.event as typeof NoteWritten.Type).text)
            assert.deepStrictEqual(texts, ["slow-1", "slow-2", "fast-1", "after-1", "after-2"])
            for (let i = 1; i < delivered.length; i++) {
              assert.isTrue(delivered[i]!.globalPosition > delivered[i - 1]!.globalPosition)
            }
          })
      )
    })
  })
