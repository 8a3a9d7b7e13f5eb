import { assert, describe, it } from "@effect/vitest"
import {
  Event,
  EventMetadata,
  EventRegistry,
  EventStore,
  ExpectedVersion,
  Outbox,
  OutboxRelay,
  Publisher,
  Telemetry
} from "@eventfold/core"
import * as Arr from "effect/Array"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Scope from "effect/Scope"
import * as TestClock from "effect/TestClock"
import { recordingSpans } from "../../../test/support/spans.js"

const OrderPlaced = Event.make("OrderPlaced", { total: Schema.Number })
const registry = EventRegistry.make(OrderPlaced)

const order = () => ({ aggregateId: crypto.randomUUID(), aggregateType: "Order" })
const placed = (n: number) => Arr.makeBy(n, (i) => ({ event: OrderPlaced.make({ total: i }) }))

/** Appends `perStream` events to each of `streams` new streams, one event per append, interleaved. */
const appendInterleaved = (streams: number, perStream: number) =>
  Effect.gen(function* () {
    const store = yield* EventStore.EventStore
    const ids = Arr.makeBy(streams, order)
    for (let v = 0; v < perStream; v++) {
      for (const s of ids) yield* store.append(s, placed(1), { expectedVersion: ExpectedVersion.exact(v) })
    }
    return ids
  })

const perAggregate = (messages: ReadonlyArray<Publisher.Message>, aggregateId: string) =>
  messages.filter((m) => m.aggregateId === aggregateId).map((m) => m.version)

/** Polls `check` on the live clock until it holds. */
const eventually = <E, R>(check: Effect.Effect<boolean, E, R>, what: string) =>
  check.pipe(
    Effect.repeat({ until: (ok) => ok, schedule: Schedule.spaced("10 millis") }),
    Effect.timeoutFail({ duration: "10 seconds", onTimeout: () => new Error(`timed out waiting until ${what}`) })
  )

const unavailable = (message: Publisher.Message) =>
  new Publisher.PublishError({ reason: "Unavailable", message: "broker down", eventId: message.eventId })

describe("OutboxRelay (memory)", () => {
  it.live("publishes every appended event once, in version order per aggregate", () =>
    Effect.gen(function* () {
      const ids = yield* appendInterleaved(5, 8)
      const memory = yield* Publisher.Memory
      const relay = yield* OutboxRelay.OutboxRelay
      yield* eventually(
        Effect.map(memory.messages, (m) => m.length === 40),
        "all 40 events are published"
      )
      const messages = yield* memory.messages
      for (const s of ids) assert.deepStrictEqual(perAggregate(messages, s.aggregateId), [1, 2, 3, 4, 5, 6, 7, 8])
      assert.deepInclude(yield* relay.stats, { pending: 0, published: 40, failed: 0 })
    }).pipe(
      Effect.provide(
        OutboxRelay.layer({ batchSize: 7 }).pipe(
          Layer.provideMerge(Publisher.layerMemory()),
          Layer.provideMerge(Outbox.layerMemory({ registry }))
        )
      )
    )
  )

  it.live("keeps entries pending while the broker is unreachable, without spending their budget", () =>
    Effect.gen(function* () {
      let down = true
      const { memory, publisher } = yield* Publisher.makeMemory({ fail: (m) => (down ? unavailable(m) : undefined) })
      const { outbox, withOutbox } = yield* Outbox.makeMemory
      const store = EventStore.make(withOutbox(EventStore.makeMemoryBackend()), registry)
      const scope = yield* Scope.make()
      yield* OutboxRelay.make({
        retryBudget: 2,
        backoff: Schedule.spaced("20 millis"),
        pollInterval: "50 millis"
      }).pipe(
        Effect.provideService(Outbox.Outbox, outbox),
        Effect.provideService(Publisher.Publisher, publisher),
        Scope.extend(scope)
      )
      const s = order()
      yield* store.append(s, placed(3), { expectedVersion: ExpectedVersion.noStream })
      yield* eventually(
        Effect.map(memory.attempts, (n) => n >= 5),
        "the relay tried several times"
      )
      const rows = yield* outbox.list()
      assert.deepStrictEqual(
        rows.map((r) => [r.status, r.retryCount, r.lastError === null ? null : "noted"]),
        [
          ["pending", 0, "noted"],
          ["pending", 0, null],
          ["pending", 0, null]
        ]
      )
      assert.strictEqual((yield* memory.messages).length, 0)
      down = false
      yield* eventually(
        Effect.map(memory.messages, (m) => m.length === 3),
        "everything is published"
      )
      assert.deepStrictEqual(perAggregate(yield* memory.messages, s.aggregateId), [1, 2, 3])
      yield* Scope.close(scope, Exit.void)
    }).pipe(Effect.provide(Logger.minimumLogLevel(LogLevel.Error)))
  )

  it.effect(
    "a rejected message is retried on the schedule and ends failed; its aggregate is held, others are not",
    () =>
      Effect.gen(function* () {
        const poison = crypto.randomUUID()
        const { memory, publisher } = yield* Publisher.makeMemory({
          fail: (m) =>
            m.aggregateId === poison && m.version === 2
              ? new Publisher.PublishError({ reason: "Rejected", message: "message too large", eventId: m.eventId })
              : undefined
        })
        const { outbox, withOutbox } = yield* Outbox.makeMemory
        const store = EventStore.make(withOutbox(EventStore.makeMemoryBackend()), registry)
        const relay = yield* OutboxRelay.make({
          retryBudget: 3,
          retrySchedule: Schedule.exponential("1 second"),
          pollInterval: "1 hour"
        }).pipe(Effect.provideService(Outbox.Outbox, outbox), Effect.provideService(Publisher.Publisher, publisher))

        const healthy = order()
        yield* store.append({ aggregateId: poison, aggregateType: "Order" }, placed(3), {
          expectedVersion: ExpectedVersion.noStream
        })
        yield* store.append(healthy, placed(2), { expectedVersion: ExpectedVersion.noStream })
        yield* TestClock.adjust("10 millis")
        assert.deepStrictEqual(perAggregate(yield* memory.messages, healthy.aggregateId), [1, 2])
        assert.deepStrictEqual(perAggregate(yield* memory.messages, poison), [1])
        assert.strictEqual(yield* memory.attempts, 4)

        // Attempt 2 after 1 s, attempt 3 after 2 s more; then the budget of 3 is spent.
        // (The first attempt ran within the first 10 ms.)
        yield* TestClock.adjust("980 millis")
        assert.strictEqual(yield* memory.attempts, 4)
        yield* TestClock.adjust("20 millis")
        assert.strictEqual(yield* memory.attempts, 5)
        yield* TestClock.adjust("1980 millis")
        assert.strictEqual(yield* memory.attempts, 5)
        yield* TestClock.adjust("40 millis")
        assert.strictEqual(yield* memory.attempts, 6)
        yield* TestClock.adjust("1 hour")
        assert.strictEqual(yield* memory.attempts, 6, "no attempt after the budget is spent")

        const stats = yield* relay.stats
        assert.deepInclude(stats, { failed: 1, held: 1, pending: 1, published: 3 })
        const [failed] = yield* outbox.list({ status: "failed" })
        assert.deepInclude(failed!, { retryCount: 3, lastError: "message too large" })
        assert.strictEqual(failed!.message.version, 2)
        // Version 3 was never published ahead of version 2.
        assert.deepStrictEqual(perAggregate(yield* memory.messages, poison), [1])

        // New events of other aggregates still flow.
        const later = order()
        yield* store.append(later, placed(1), { expectedVersion: ExpectedVersion.noStream })
        yield* TestClock.adjust("10 millis")
        assert.deepStrictEqual(perAggregate(yield* memory.messages, later.aggregateId), [1])
      }).pipe(Effect.scoped)
  )

  it.live("a relay stopped mid-batch hands its entries back; the next one publishes them, duplicates dropped", () =>
    Effect.gen(function* () {
      const gate = yield* Deferred.make<void>()
      const started = yield* Deferred.make<void>()
      let published = 0
      const inner = yield* Publisher.makeMemory()
      // Takes 3 messages, then hangs (as a broker that stops answering) until the gate opens.
      const slow: Publisher.Service = Publisher.make({
        system: "memory",
        concurrency: 1,
        publishOne: (message) =>
          Effect.gen(function* () {
            if (published >= 3) {
              yield* Deferred.succeed(started, undefined)
              yield* Deferred.await(gate)
            }
            published++
            const [outcome] = yield* inner.publisher.publish([message])
            return outcome?._tag === "Published" ? { duplicate: outcome.duplicate } : { duplicate: false }
          })
      })
      const { outbox, withOutbox } = yield* Outbox.makeMemory
      const store = EventStore.make(withOutbox(EventStore.makeMemoryBackend()), registry)
      const s = order()
      yield* store.append(s, placed(10), { expectedVersion: ExpectedVersion.noStream })

      const first = yield* Scope.make()
      yield* OutboxRelay.make({ owner: "first" }).pipe(
        Effect.provideService(Outbox.Outbox, outbox),
        Effect.provideService(Publisher.Publisher, slow),
        Scope.extend(first)
      )
      yield* Deferred.await(started)
      assert.strictEqual((yield* outbox.stats).inFlight, 10)
      yield* Scope.close(first, Exit.void)
      assert.strictEqual((yield* outbox.stats).inFlight, 0, "the stopped relay handed its entries back")
      assert.strictEqual((yield* inner.memory.messages).length, 3)

      // The next relay starts where the broker's acks and the outbox disagree: 3 acked, none marked.
      yield* Deferred.succeed(gate, undefined)
      const report = yield* OutboxRelay.make({ owner: "second", start: false }).pipe(
        Effect.provideService(Outbox.Outbox, outbox),
        Effect.provideService(Publisher.Publisher, inner.publisher),
        Effect.flatMap((relay) => relay.drain),
        Effect.scoped
      )
      assert.deepInclude(report, { claimed: 10, published: 10, duplicates: 3, failed: 0 })
      assert.deepStrictEqual(perAggregate(yield* inner.memory.messages, s.aggregateId), Arr.range(1, 10))
      assert.deepInclude(yield* outbox.stats, { pending: 0, published: 10 })
    })
  )

  it.effect("runOnce and drain work without the background fiber", () =>
    Effect.gen(function* () {
      const ids = yield* appendInterleaved(3, 4)
      const relay = yield* OutboxRelay.make({ start: false, batchSize: 5 })
      const once = yield* relay.runOnce
      assert.deepStrictEqual(once, { claimed: 5, published: 5, duplicates: 0, failed: 0, exhausted: 0, released: 0 })
      const rest = yield* relay.drain
      assert.strictEqual(rest.published, 7)
      const messages = yield* Effect.flatMap(Publisher.Memory, (m) => m.messages)
      for (const s of ids) assert.deepStrictEqual(perAggregate(messages, s.aggregateId), [1, 2, 3, 4])
      const stats = yield* relay.stats
      assert.deepInclude(stats, { pending: 0, published: 12 })
      assert.isTrue(Option.isNone(stats.oldestPendingAge))
      yield* TestClock.adjust(Duration.days(8))
      assert.strictEqual(yield* relay.deletePublished("7 days"), 12)
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(Publisher.layerMemory(), Outbox.layerMemory({ registry }))))
  )

  it.effect("messages carry their append's metadata; the publish span links to the appends", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const relay = yield* OutboxRelay.make({ start: false, batchSize: 10 })
      const [a, b] = [order(), order()]
      const [, spans] = yield* recordingSpans(
        Effect.gen(function* () {
          yield* store
            .append(a, placed(2), { expectedVersion: ExpectedVersion.noStream })
            .pipe(EventMetadata.withCommand({ commandId: "cmd-a" }))
          yield* store.append(b, placed(1), { expectedVersion: ExpectedVersion.noStream })
          yield* relay.runOnce
        })
      )
      const appends = spans.filter((span) => span.name === "EventStore.append")
      const messages = yield* Effect.flatMap(Publisher.Memory, (m) => m.messages)
      const forA = messages.filter((m) => m.aggregateId === a.aggregateId)
      assert.deepStrictEqual(
        forA.map((m) => m.metadata),
        [0, 1].map(() => ({
          correlationId: "cmd-a",
          causationId: "cmd-a",
          traceparent: `00-${appends[0]!.traceId}-${appends[0]!.spanId}-01`
        }))
      )
      const publish = spans.find((span) => span.name === "Publisher.publish")!
      // One link per append (the two events of a share theirs), in the order of the messages.
      assert.sameMembers(
        publish.links.map((link) => link.span.spanId),
        appends.map((span) => span.spanId)
      )
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(Publisher.layerMemory(), Outbox.layerMemory({ registry }))))
  )

  it.effect("with metrics on, the backlog is sampled from the outbox's stats at most once per poll interval", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const relay = yield* OutboxRelay.make({ start: false, batchSize: 2, pollInterval: "10 seconds" })
      const backlog = Effect.all([
        Metric.value(Telemetry.outboxMetrics.pending),
        Metric.value(Telemetry.outboxMetrics.oldestPendingAge)
      ]).pipe(Effect.map(([pending, age]) => [pending.value, age.value]))

      yield* store.append(order(), placed(3), { expectedVersion: ExpectedVersion.noStream })
      yield* TestClock.adjust("4 seconds")
      // Sampled before the claim: three pending, the oldest 4 seconds old.
      assert.strictEqual((yield* relay.runOnce).published, 2)
      assert.deepStrictEqual(yield* backlog, [3, 4])
      yield* TestClock.adjust("5 seconds")
      assert.strictEqual((yield* relay.runOnce).published, 1)
      assert.deepStrictEqual(yield* backlog, [3, 4], "sampled again within the poll interval")
      yield* TestClock.adjust("5 seconds")
      yield* store.append(order(), placed(1), { expectedVersion: ExpectedVersion.noStream })
      yield* TestClock.adjust("2500 millis")
      yield* relay.runOnce
      assert.deepStrictEqual(yield* backlog, [1, 2.5])
      yield* TestClock.adjust("10 seconds")
      yield* relay.runOnce
      assert.deepStrictEqual(yield* backlog, [0, 0], "nothing pending: no age")
    }).pipe(
      Effect.scoped,
      Effect.provide(Layer.mergeAll(Publisher.layerMemory(), Outbox.layerMemory({ registry }), Telemetry.layerMetrics))
    )
  )

  it.live("several workers in one relay keep the order of each aggregate", () =>
    Effect.gen(function* () {
      const ids = yield* appendInterleaved(12, 6)
      const relay = yield* OutboxRelay.make({ start: false, batchSize: 4, workers: 3 })
      const report = yield* relay.drain
      assert.strictEqual(report.published, 72)
      const messages = yield* Effect.flatMap(Publisher.Memory, (m) => m.messages)
      for (const s of ids) assert.deepStrictEqual(perAggregate(messages, s.aggregateId), [1, 2, 3, 4, 5, 6])
      assert.deepInclude(yield* relay.stats, { pending: 0, published: 72 })
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(Publisher.layerMemory(), Outbox.layerMemory({ registry }))))
  )

  it.effect("settings come from the environment, over the given defaults", () =>
    Effect.gen(function* () {
      const options = yield* OutboxRelay.config({ batchSize: 10, pollInterval: "1 second" }).pipe(
        Effect.withConfigProvider(
          ConfigProvider.fromMap(
            new Map([
              ["OUTBOX_BATCH_SIZE", "250"],
              ["OUTBOX_RETRY_BUDGET", "8"],
              ["OUTBOX_LEASE", "1 minute"],
              ["OUTBOX_RETRY_DELAY", "2 seconds"]
            ])
          )
        )
      )
      assert.deepInclude(options, { batchSize: 250, retryBudget: 8, pollInterval: "1 second" })
      assert.isTrue(Duration.equals(Duration.decode(options.lease!), Duration.minutes(1)))
      assert.isDefined(options.retrySchedule)
    })
  )
})
