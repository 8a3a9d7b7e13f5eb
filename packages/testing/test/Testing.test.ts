/**
 * The kit's layer and projection runner: one layer for a projection test, and runs
 * that finish under `it.effect`'s TestClock, retries and dead letters included.
 */
import { assert, describe, it } from "@effect/vitest"
import { CheckpointStore, DeadLetterQueue, EventStore, ExpectedVersion, Projection } from "@eventfold/core"
import { Testing } from "@eventfold/testing"
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import { AccountOpened, balances, MoneyDeposited, MoneyWithdrawn, registry } from "./Bank.js"

const account = () => ({ aggregateId: crypto.randomUUID(), aggregateType: "Account" })
const deposits = (...amounts: ReadonlyArray<number>) =>
  amounts.map((amount) => ({ event: MoneyDeposited.make({ amount }) }))
const hours = (n: number) => n * 3_600_000

describe("Testing.layer", () => {
  it.effect("one layer: the store, checkpoints, dead letters and runtime over one log", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const appended = yield* store.append(account(), deposits(5, 7), { expectedVersion: ExpectedVersion.noStream })
      const checkpoints = yield* CheckpointStore.CheckpointStore
      assert.deepInclude(yield* checkpoints.lag("balances"), { headPosition: appended.lastPosition, eventsBehind: 2 })
      const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
      yield* Testing.runProjection(balances(model))
      assert.deepInclude(yield* checkpoints.lag("balances"), { position: appended.lastPosition, eventsBehind: 0 })
      const deadLetters = yield* DeadLetterQueue.DeadLetterQueue
      assert.deepStrictEqual(yield* deadLetters.list(), [])
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )

  it.effect("each build starts empty", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      assert.strictEqual(Chunk.size(yield* Stream.runCollect(store.readAll())), 0)
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )
})

describe("Testing.runProjection under it.effect's TestClock", () => {
  it.effect(
    "a failing handler is retried on its schedule and dead-lettered, with no real waiting",
    () =>
      Effect.gen(function* () {
        const store = yield* EventStore.EventStore
        const a = account()
        yield* store.append(a, deposits(50, 1_000_000, 20), { expectedVersion: ExpectedVersion.noStream })
        const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
        const before = yield* Clock.currentTimeMillis
        // Three retries an hour, two and four hours apart: finished only because the clock is moved.
        const retry = Schedule.exponential("1 hour").pipe(Schedule.intersect(Schedule.recurs(3)))
        const status = yield* Testing.runProjection(balances(model, 10_000), { retry })
        assert.deepInclude(status, { state: "active", handled: 2, deadLettered: 1 })
        assert.strictEqual((yield* Ref.get(model)).get(a.aggregateId), 70)
        assert.isAtLeast((yield* Clock.currentTimeMillis) - before, hours(1 + 2 + 4))
        const [letter, ...more] = yield* Effect.flatMap(DeadLetterQueue.DeadLetterQueue, (q) => q.list())
        assert.strictEqual(more.length, 0)
        assert.deepInclude(letter, { projection: "balances", eventType: "MoneyDeposited", retryCount: 4 })
        assert.include(letter!.errorMessage, "flagged for review")
      }).pipe(Effect.provide(Testing.layer({ registry }))),
    // A run that waited for real would take seven hours: the test's own bound is 10 seconds.
    10_000
  )

  it.effect("the default retries (exponential from 100 ms) pass on the TestClock as well", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      yield* store.append(account(), deposits(1_000_000), { expectedVersion: ExpectedVersion.noStream })
      const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
      const status = yield* Testing.runProjection(balances(model, 10_000))
      assert.deepInclude(status, { handled: 0, deadLettered: 1 })
      const [letter] = yield* Effect.flatMap(DeadLetterQueue.DeadLetterQueue, (q) => q.list())
      assert.strictEqual(letter?.retryCount, 4)
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )

  it.effect("with onDeadLetter: stop, it fails with the runner's ProjectionStoppedError", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const appended = yield* store.append(account(), deposits(5, 1_000_000, 5), {
        expectedVersion: ExpectedVersion.noStream
      })
      const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
      const error = yield* Effect.flip(Testing.runProjection(balances(model, 10_000), { onDeadLetter: "stop" }))
      assert.deepInclude(error, {
        _tag: "ProjectionStoppedError",
        projection: "balances",
        globalPosition: appended.firstPosition + 1n
      })
      const checkpoint = yield* Effect.flatMap(CheckpointStore.CheckpointStore, (c) => c.get("balances"))
      assert.strictEqual(Option.getOrThrow(checkpoint).position, appended.firstPosition)
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )

  it.effect("runs again from its checkpoint: a second run handles only what came since", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const a = account()
      yield* store.append(a, deposits(10), { expectedVersion: ExpectedVersion.noStream })
      const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
      assert.strictEqual((yield* Testing.runProjection(balances(model))).handled, 1)
      assert.strictEqual((yield* Testing.runProjection(balances(model))).handled, 0)
      yield* store.append(a, [{ event: MoneyWithdrawn.make({ amount: 4 }) }], {
        expectedVersion: ExpectedVersion.exact(1)
      })
      assert.strictEqual((yield* Testing.runProjection(balances(model))).handled, 1)
      assert.strictEqual((yield* Ref.get(model)).get(a.aggregateId), 6)
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )

  it.effect("reaches a head of events it does not handle (its progress is saved on the clock's ticks)", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const a = account()
      yield* store.append(a, deposits(10), { expectedVersion: ExpectedVersion.noStream })
      const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
      yield* Testing.runProjection(balances(model))
      // Only events the projection does not select: the runner sees progress, no event.
      const other = yield* store.append(account(), [{ event: AccountOpened.make({ owner: "bob" }) }], {
        expectedVersion: ExpectedVersion.noStream
      })
      const status = yield* Testing.runProjection(balances(model))
      assert.deepInclude(status, { position: other.lastPosition, handled: 0 })
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )

  it.effect("what handlers append, and every time the services record, is the TestClock's", () =>
    Effect.gen(function* () {
      const start = Date.parse("2030-01-01T00:00:00.000Z")
      yield* TestClock.setTime(start)
      const store = yield* EventStore.EventStore
      const a = account()
      yield* store.append(a, deposits(1_000_000), { expectedVersion: ExpectedVersion.noStream })
      // Greets each account on its first deposit, in an audit stream of its own.
      const audit = { aggregateId: crypto.randomUUID(), aggregateType: "Audit" }
      const greeter = Projection.make({
        name: "greeter",
        handlers: [
          Projection.on(MoneyDeposited, () =>
            Effect.flatMap(EventStore.EventStore, (s) =>
              s.append(audit, [{ event: AccountOpened.make({ owner: "audit" }) }], {
                expectedVersion: ExpectedVersion.any
              })
            )
          )
        ]
      })
      yield* Testing.runProjection(greeter)
      yield* Testing.runProjection(balances(yield* Ref.make<ReadonlyMap<string, number>>(new Map()), 10))
      const [greeting] = yield* Stream.runCollect(store.readStream(audit))
      assert.isDefined(greeting)
      assert.strictEqual(greeting!.createdAt.getTime(), greeting!.timestamp.getTime())
      assert.isAtLeast(greeting!.timestamp.getTime(), start)
      const [letter] = yield* Effect.flatMap(DeadLetterQueue.DeadLetterQueue, (q) => q.list())
      // The letter was written after the retries (700 ms of the default schedule) on the same clock.
      assert.isAtLeast(letter!.firstFailedAt.getTime(), start + 700)
      assert.isAtMost(letter!.firstFailedAt.getTime(), yield* Clock.currentTimeMillis)
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )
})

describe("Testing.runProjection under the live clock", () => {
  it.live("finishes once caught up, retries taking their real time", () =>
    Effect.gen(function* () {
      const store = yield* EventStore.EventStore
      const a = account()
      yield* store.append(a, deposits(3, 1_000_000, 4), { expectedVersion: ExpectedVersion.noStream })
      const model = yield* Ref.make<ReadonlyMap<string, number>>(new Map())
      const options: Projection.RunOptions = { retry: Schedule.recurs(1) }
      const status = yield* Testing.runProjection(balances(model, 10_000), options)
      assert.deepInclude(status, { handled: 2, deadLettered: 1 })
      assert.strictEqual((yield* Ref.get(model)).get(a.aggregateId), 7)
    }).pipe(Effect.provide(Testing.layer({ registry })))
  )
})
