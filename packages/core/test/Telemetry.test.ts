import { assert, describe, it } from "@effect/vitest"
import {
  Aggregate,
  AggregateRepository,
  CheckpointStore,
  DeadLetterQueue,
  Event,
  EventRegistry,
  EventStore,
  ExpectedVersion,
  Outbox,
  OutboxRelay,
  Projection,
  Publisher,
  Telemetry
} from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import { recordingSpans } from "../../../test/support/spans.js"

const Secret = Event.make("SecretSet", { value: Schema.String })
const Vault = Aggregate.make({
  type: "Vault",
  events: [Secret],
  initialState: () => ({ value: "" }),
  evolve: (_, event) => ({ value: event.value })
})
const registry = EventRegistry.make(Secret)

/**
 * Spans only the PostgreSQL implementations make: the migrations, and the outbox's
 * claim and settle (the memory outbox has no spans of its own). They are checked in
 * packages/pg/test/PgTelemetry.test.ts.
 */
const postgresOnly: ReadonlyArray<string> = [
  Telemetry.Spans.migrate,
  Telemetry.Spans.outboxClaim,
  Telemetry.Spans.outboxSettle
]

/** The memory backends of every service that has spans, the store writing outbox entries. */
const MemoryLayers = Layer.mergeAll(
  CheckpointStore.layerMemory,
  DeadLetterQueue.layerMemory,
  Projection.layerMemory,
  Publisher.layerMemory()
).pipe(Layer.provideMerge(Outbox.layerMemory({ registry })))

/** Every public operation, once: through the repository, the store, a projection (with dead letters), the relay. */
const everyOperation = Effect.gen(function* () {
  const store = yield* EventStore.EventStore
  const repo = yield* AggregateRepository.make(Vault)
  const id = crypto.randomUUID()
  yield* repo.save(Aggregate.apply(Vault, Aggregate.empty(Vault, id), [Secret.make({ value: "hunter2" })]))
  yield* repo.load(id)
  yield* store.append({ aggregateId: id, aggregateType: "Vault" }, [{ event: Secret.make({ value: "hunter3" }) }], {
    expectedVersion: ExpectedVersion.exact(1)
  })
  yield* store.append(
    { aggregateId: crypto.randomUUID(), aggregateType: "Vault" },
    [{ event: Secret.make({ value: "poison-hunter4" }) }, { event: Secret.make({ value: "poison-hunter5" }) }],
    { expectedVersion: ExpectedVersion.noStream }
  )
  yield* Stream.runDrain(store.readAll())

  // A projection that fails on the poison: a rebuild replays the log and dead-letters both.
  const failing = yield* Ref.make(true)
  const projection = Projection.make({
    name: "vault-telemetry",
    aggregateTypes: ["Vault"],
    handlers: [
      Projection.on(Secret, (event) =>
        Effect.flatMap(Ref.get(failing), (fail) =>
          fail && event.event.value.startsWith("poison") ? Effect.fail(new Error("cannot project")) : Effect.void
        )
      )
    ]
  })
  const options = { retry: Schedule.recurs(1), reportInterval: "10 millis" } as const
  yield* Projection.rebuild(projection, options)
  const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
  const [first, second] = yield* deadLetters.list({ projection: projection.name })
  assert.isDefined(second, "two dead letters")
  yield* deadLetters.get(first!.id)
  yield* Ref.set(failing, false)
  yield* Projection.retryDeadLetter(projection, first!.id, options)
  yield* deadLetters.resolve(second!.id, { by: "operator" })

  const checkpoints = yield* CheckpointStore.CheckpointStore
  assert.isTrue(Option.isSome(yield* checkpoints.get(projection.name)))
  yield* checkpoints.lag(projection.name)
  yield* checkpoints.list
  yield* checkpoints.save("vault-telemetry-manual", { position: 1n })
  yield* checkpoints.awaitPosition("vault-telemetry-manual", 1n)
  yield* checkpoints.reset("vault-telemetry-manual")
  yield* Projection.reset(projection)

  // The relay publishes the outbox entries of the appends.
  const relay = yield* OutboxRelay.make({ start: false })
  const report = yield* relay.drain
  assert.isAbove(report.published, 0)
})

describe("Telemetry", () => {
  it.scopedLive(
    "every operation with a span name in Telemetry.Spans makes that span, with Telemetry's attributes and no payloads",
    () =>
      Effect.gen(function* () {
        const [, spans] = yield* recordingSpans(everyOperation.pipe(Effect.provide(MemoryLayers)))
        const names = new Set(spans.map((s) => s.name))
        for (const name of Object.values(Telemetry.Spans)) {
          if (postgresOnly.includes(name)) {
            // Keeps the list honest: a span memory makes is checked here, not only on PostgreSQL.
            assert.isFalse(names.has(name), `${name} is made on memory: remove it from postgresOnly`)
          } else {
            assert.isTrue(names.has(name), `missing span ${name}`)
          }
        }

        const append = spans.find((s) => s.name === Telemetry.Spans.append)!
        assert.strictEqual(append.attributes.get(Telemetry.Attributes.aggregateType), "Vault")
        assert.strictEqual(append.attributes.get(Telemetry.Attributes.eventCount), 1)
        assert.strictEqual(append.attributes.get(Telemetry.Attributes.backend), "memory")
        // The relay's publish, as OpenTelemetry's messaging conventions have a send.
        const publish = spans.find((s) => s.name === Telemetry.Spans.publish)!
        assert.strictEqual(publish.kind, "producer")
        assert.strictEqual(publish.attributes.get(Telemetry.Attributes.messagingSystem), "memory")
        assert.strictEqual(publish.attributes.get(Telemetry.Attributes.messagingOperationType), "send")
        assert.strictEqual(publish.attributes.get(Telemetry.Attributes.messagingOperationName), "publish")
        assert.isAbove(publish.attributes.get(Telemetry.Attributes.messageCount) as number, 0)
        const known = new Set<string>(Object.values(Telemetry.Attributes))
        for (const span of spans.filter((s) => s.name.includes("."))) {
          for (const [key, value] of span.attributes) {
            if (key.startsWith("code.")) continue
            assert.isTrue(known.has(key), `attribute ${key} of ${span.name} is not a Telemetry key`)
            assert.notInclude(String(value), "hunter", `a payload in attribute ${key} of ${span.name}`)
          }
        }
      })
  )

  it.effect("append metrics: events, duration and conflicts by backend, recorded only once turned on", () =>
    Effect.gen(function* () {
      const registry = EventRegistry.make(Secret)
      const store = EventStore.make(EventStore.makeMemoryBackend(), registry)
      const memory = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) =>
        Metric.value(metric.pipe(Metric.tagged(Telemetry.Attributes.backend, "memory")))
      const events = memory(Telemetry.appendMetrics.events)
      const conflicts = memory(Telemetry.appendMetrics.conflicts)
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Vault" }
      const two = [{ event: Secret.make({ value: "a" }) }, { event: Secret.make({ value: "b" }) }]

      // Off by default: a program nobody measures records nothing.
      const before = (yield* events).count
      yield* store.append(stream, two, { expectedVersion: ExpectedVersion.noStream })
      assert.strictEqual((yield* events).count, before)

      // On: the events of each landed append, and each conflict.
      const conflictsBefore = (yield* conflicts).count
      yield* Effect.gen(function* () {
        yield* store.append(stream, two, { expectedVersion: ExpectedVersion.exact(2) })
        yield* Effect.flip(store.append(stream, two, { expectedVersion: ExpectedVersion.exact(2) }))
      }).pipe(Effect.provide(Telemetry.layerMetrics))
      assert.strictEqual((yield* events).count, before + 2)
      assert.strictEqual((yield* conflicts).count, conflictsBefore + 1)
      const durations = yield* memory(Telemetry.appendMetrics.duration)
      assert.isAtLeast(durations.count, 2)
    })
  )

  it.scopedLive("projection metrics: events handled and dead letters by projection, once turned on", () =>
    Effect.gen(function* () {
      const byProjection = <Type, In, Out>(metric: Metric.Metric<Type, In, Out>) =>
        Metric.value(metric.pipe(Metric.tagged(Telemetry.Attributes.projection, "vault-telemetry")))
      const handled = byProjection(Telemetry.projectionMetrics.events)
      const dead = byProjection(Telemetry.projectionMetrics.deadLetters)
      const before = { handled: (yield* handled).count, dead: (yield* dead).count }
      yield* everyOperation.pipe(Effect.provide(Layer.merge(MemoryLayers, Telemetry.layerMetrics)))
      // The rebuild handles the two good events and dead-letters the two poisoned ones.
      assert.strictEqual((yield* handled).count - before.handled, 2)
      assert.strictEqual((yield* dead).count - before.dead, 2)
    })
  )
})
