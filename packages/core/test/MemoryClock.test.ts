/**
 * The memory services take their time from the fiber's clock, as the timestamps of
 * appended events do: under a TestClock everything a test reads is the clock's time.
 */
import { assert, describe, it } from "@effect/vitest"
import {
  CheckpointStore,
  DeadLetterQueue,
  Event,
  EventRegistry,
  EventStore,
  ExpectedVersion,
  Projection
} from "@eventfold/core"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"

const Noted = Event.make("Noted", { text: Schema.String })
const registry = EventRegistry.make(Noted)
const services = Layer.mergeAll(CheckpointStore.layerMemory, DeadLetterQueue.layerMemory, Projection.layerMemory).pipe(
  Layer.provideMerge(EventStore.layerMemory({ registry }))
)
const start = Date.parse("2031-05-06T07:08:09.010Z")

describe("memory services under a TestClock", () => {
  it.effect("an event's timestamp and createdAt are the clock's time", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(start)
      const store = yield* EventStore.EventStore
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Note" }
      yield* store.append(stream, [{ event: Noted.make({ text: "a" }) }], { expectedVersion: ExpectedVersion.noStream })
      yield* TestClock.adjust("1 minute")
      yield* store.append(stream, [{ event: Noted.make({ text: "b" }) }], { expectedVersion: ExpectedVersion.exact(1) })
      const events = Chunk.toReadonlyArray(yield* Stream.runCollect(store.readStream(stream)))
      assert.deepStrictEqual(
        events.map((e) => [e.timestamp.getTime(), e.createdAt.getTime()]),
        [
          [start, start],
          [start + 60_000, start + 60_000]
        ]
      )
    }).pipe(Effect.provide(services))
  )

  it.effect("checkpoints are saved, reset and measured by the clock", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(start)
      const store = yield* EventStore.EventStore
      const checkpoints = yield* CheckpointStore.CheckpointStore
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Note" }
      const appended = yield* store.append(stream, [{ event: Noted.make({ text: "a" }) }], {
        expectedVersion: ExpectedVersion.noStream
      })
      yield* TestClock.adjust("10 seconds")
      const saved = yield* checkpoints.save("notes", { position: 0n })
      assert.deepInclude(saved, { createdAt: new Date(start + 10_000), updatedAt: new Date(start + 10_000) })
      yield* TestClock.adjust("5 seconds")
      // Behind by the one event, appended 15 seconds ago by this clock.
      assert.deepInclude(yield* checkpoints.lag("notes"), { eventsBehind: 1, timeBehindMillis: 15_000 })
      yield* checkpoints.save("notes", { position: appended.lastPosition })
      yield* TestClock.adjust("5 seconds")
      yield* checkpoints.reset("notes")
      assert.deepInclude(Option.getOrThrow(yield* checkpoints.get("notes")), {
        createdAt: new Date(start + 10_000),
        updatedAt: new Date(start + 20_000)
      })
    }).pipe(Effect.provide(services))
  )

  it.effect("dead letters are dated by the clock", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(start)
      const store = yield* EventStore.EventStore
      const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
      const stream = { aggregateId: crypto.randomUUID(), aggregateType: "Note" }
      yield* store.append(stream, [{ event: Noted.make({ text: "a" }) }], { expectedVersion: ExpectedVersion.noStream })
      const [recorded] = yield* Stream.runCollect(store.readStream(stream))
      const { event: _, ...envelope } = recorded!
      const stored = { ...envelope, payload: { text: "a" } }
      const added = yield* deadLetters.add("notes", stored, { message: "no", attempts: 1 })
      assert.deepInclude(added, { firstFailedAt: new Date(start), lastFailedAt: new Date(start) })
      yield* TestClock.adjust("1 minute")
      const again = yield* deadLetters.recordFailure(added.id, { message: "still no", attempts: 2 })
      assert.deepInclude(again, { firstFailedAt: new Date(start), lastFailedAt: new Date(start + 60_000) })
      yield* TestClock.adjust("1 minute")
      const resolved = yield* deadLetters.resolve(added.id, { by: "test" })
      assert.deepStrictEqual(resolved.resolvedAt, new Date(start + 120_000))
      const other = yield* deadLetters.add("others", stored, { message: "no", attempts: 1 })
      yield* TestClock.adjust("1 minute")
      assert.isTrue(yield* deadLetters.resolveEvent("others", stored.eventId))
      assert.deepStrictEqual(Option.getOrThrow(yield* deadLetters.get(other.id)).resolvedAt, new Date(start + 180_000))
    }).pipe(Effect.provide(services))
  )

  it.effect("a runner's status is dated by the clock", () =>
    Effect.gen(function* () {
      yield* TestClock.setTime(start)
      const runner = yield* Projection.start(
        Projection.make({ name: "idle", handlers: [Projection.on(Noted, () => Effect.void)] })
      )
      assert.strictEqual((yield* runner.status).since.getTime(), start)
    }).pipe(Effect.scoped, Effect.provide(services))
  )
})
