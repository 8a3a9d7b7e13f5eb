/**
 * The memory services of an application's tests in one layer, and projections run to
 * the end of the log, under `@effect/vitest`'s `it.effect` (whose clock is a
 * `TestClock`) as under the live clock.
 *
 * @example
 * ```ts
 * it.effect("keeps a balance per account", () =>
 *   Effect.gen(function* () {
 *     yield* deposit(accountId, 30)
 *     const status = yield* Testing.runProjection(balances)
 *     assert.strictEqual(status.handled, 1)
 *   }).pipe(Effect.provide(Testing.layer({ registry })))
 * )
 * ```
 *
 * @since 0.1.0
 */
import { CheckpointStore, DeadLetterQueue, type EventRegistry, EventStore, Projection } from "@eventfold/core"
import * as Chunk from "effect/Chunk"
import type * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Predicate from "effect/Predicate"
import * as TestClock from "effect/TestClock"

/**
 * Everything a projection runner needs, in memory, over one log: the `EventStore`
 * (decoding with `registry`), the `CheckpointStore`, the `DeadLetterQueue` and the
 * `ProjectionRuntime`. Each build of the layer starts empty: provide it per test for
 * tests that do not share their events.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: {
  readonly registry: EventRegistry.EventRegistry
}): Layer.Layer<Projection.Requirements> =>
  Layer.mergeAll(CheckpointStore.layerMemory, DeadLetterQueue.layerMemory, Projection.layerMemory).pipe(
    Layer.provideMerge(EventStore.layerMemory(options))
  )

/**
 * Options of {@link runProjection}: the runner's, with checkpoint saves that only
 * record progress every 10 milliseconds by default (1 second for `Projection.start`).
 *
 * @since 0.1.0
 * @category models
 */
export type RunProjectionOptions = Projection.RunOptions

/**
 * Runs a projection until it has caught up with the log as it is when called (every
 * event up to the head handled or dead-lettered, its checkpoint there), stops it, and
 * returns its status at that moment.
 *
 * Under a `TestClock` (`it.effect`) it moves the clock to each sleep the program waits
 * on, once its fibers have had their turn: a failing handler is retried on its schedule
 * and dead-lettered without real waiting, and the events the handlers append are
 * stamped with that clock. Under the live clock, retries take their real time.
 *
 * Fails with the runner's error when it stops first (`onDeadLetter: "stop"`, or a
 * failure it does not restart from). A runner of the same projection already holding
 * the lock keeps this one waiting as a standby.
 *
 * @since 0.1.0
 * @category constructors
 */
export const runProjection = <R>(
  projection: Projection.Projection<R>,
  options: RunProjectionOptions = {}
): Effect.Effect<Projection.Status, Projection.RunError, R | Projection.Requirements> =>
  Effect.gen(function* () {
    const checkpoints = yield* CheckpointStore.CheckpointStore
    // The head as the checkpoint store counts it: an event that does not decode counts too.
    const target = (yield* checkpoints.lag(projection.name)).headPosition
    const runner = yield* Projection.start(projection, { progressInterval: "10 millis", ...options })
    const caughtUp = Effect.map(runner.status, (status) =>
      status.state === "active" && status.position >= target ? status : undefined
    )
    const attempt = yield* Effect.clockWith((clock) =>
      Effect.succeed(
        isTestClock(clock) ? advanceTestClock(caughtUp) : Effect.zipRight(Effect.sleep("5 millis"), caughtUp)
      )
    )
    const done = Effect.repeat(attempt, { until: (status): status is Projection.Status => status !== undefined })
    return yield* Effect.raceFirst(done, runner.join)
  }).pipe(Effect.scoped)

/** Whether `clock` is `effect/TestClock`'s (`it.effect` provides one); its interface is not exported as a type. */
const isTestClock = (clock: Clock.Clock): boolean =>
  Predicate.hasProperty(clock, "adjust") && Predicate.hasProperty(clock, "sleeps")

/**
 * One step of waiting for `done` under a TestClock: every other fiber runs until it
 * waits (`TestClock.adjust(0)`); then, if not done, the clock moves to the earliest sleep.
 */
const advanceTestClock = <A>(done: Effect.Effect<A | undefined>): Effect.Effect<A | undefined> =>
  Effect.zipRight(TestClock.adjust(0), done).pipe(
    Effect.tap((value) =>
      value !== undefined
        ? Effect.void
        : Effect.flatMap(TestClock.sleeps(), (sleeps) =>
            Chunk.isNonEmpty(sleeps) ? TestClock.setTime(Math.min(...sleeps)) : Effect.void
          )
    )
  )
