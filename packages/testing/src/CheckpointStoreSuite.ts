/**
 * The CheckpointStore contract (DESIGN §2), run against every backend: save with
 * event id and type, get, list, lag, reset; a checkpoint never moves backwards; a
 * conditional save is a compare-and-set.
 *
 * @since 0.1.0
 */

import { assert, describe, layer } from "@effect/vitest"
import { CheckpointStore, type EventStore, ExpectedVersion } from "@eventfold/core"
import * as Arr from "effect/Array"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import { ConformanceBackend } from "./ConformanceBackend.js"
import { eventually } from "./internal/eventually.js"
import { type RecordedSpan, recordingSpans } from "./internal/spans.js"
import { NoteWritten, registry } from "./SubscriptionSuite.js"

const uuid = () => crypto.randomUUID()
const name = (prefix = "cp") => `${prefix}-${uuid()}`
const note = (text: string): EventStore.EventToAppend => ({ event: NoteWritten.make({ text }) })

/**
 * Registers the CheckpointStore conformance tests (vitest, through `@effect/vitest`) against the
 * backend the layer provides (the first argument names the `describe` block).
 *
 * @since 0.1.0
 * @category constructors
 */
export const suite = (label: string, backend: Layer.Layer<ConformanceBackend>) =>
  layer(backend, { excludeTestServices: true, timeout: "120 seconds" })(
    `CheckpointStore conformance: ${label}`,
    (it) => {
      const withServices = <A, E>(
        f: (checkpoints: CheckpointStore.Service, store: EventStore.Service) => Effect.Effect<A, E>
      ) =>
        Effect.flatMap(ConformanceBackend, (b) =>
          Effect.gen(function* () {
            const checkpoints = yield* CheckpointStore.CheckpointStore
            const store = yield* b.store(registry)
            return yield* f(checkpoints, store)
          }).pipe(Effect.provide(b.services(registry)))
        )

      describe("save, get, list", () => {
        it.effect("saves a position with its event, counts processed events, and reads it back", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name()
              assert.isTrue(Option.isNone(yield* checkpoints.get(n)))
              const eventId = uuid()
              const first = yield* checkpoints.save(n, {
                position: 10n,
                eventId,
                eventType: "OrderCreated",
                processed: 4
              })
              assert.strictEqual(first.position, 10n)
              assert.strictEqual(first.eventId, eventId)
              assert.strictEqual(first.eventType, "OrderCreated")
              assert.strictEqual(first.eventsProcessed, 4n)
              assert.instanceOf(first.lastProcessedAt, Date)
              const second = yield* checkpoints.save(n, { position: 12n, processed: 2 })
              // A save without an event keeps the last one named.
              assert.deepInclude(second, { position: 12n, eventId, eventType: "OrderCreated", eventsProcessed: 6n })
              const got = yield* checkpoints.get(n)
              assert.isTrue(Option.isSome(got))
              assert.deepInclude(Option.getOrThrow(got), { name: n, position: 12n, eventsProcessed: 6n })
              const listed = (yield* checkpoints.list).find((c) => c.name === n)
              assert.strictEqual(listed?.position, 12n)
            })
          )
        )

        it.effect("never moves backwards", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name()
              yield* checkpoints.save(n, { position: 100n, eventType: "A" })
              const back = yield* checkpoints.save(n, { position: 40n, eventType: "B", processed: 3 })
              assert.deepInclude(back, { position: 100n, eventType: "A", eventsProcessed: 0n })
              // Saving the position it is at changes nothing either: no count, no event, no time.
              const before = Option.getOrThrow(yield* checkpoints.get(n))
              const same = yield* checkpoints.save(n, { position: 100n, eventType: "C", processed: 1 })
              assert.deepStrictEqual(same, before)
              assert.deepStrictEqual(Option.getOrThrow(yield* checkpoints.get(n)), before)
            })
          )
        )

        it.effect.prop(
          "concurrent saves leave the greatest position, and every read on the way is monotonic",
          [FastCheck.array(FastCheck.bigInt({ min: 0n, max: 10_000n }), { minLength: 1, maxLength: 25 })],
          ([positions]) =>
            withServices((checkpoints) =>
              Effect.gen(function* () {
                const n = name()
                const seen: Array<readonly [saved: bigint, read: bigint]> = []
                yield* Effect.all(
                  positions.map((position) =>
                    Effect.zipRight(
                      checkpoints.save(n, { position }),
                      Effect.flatMap(checkpoints.get(n), (c) =>
                        Effect.sync(() => seen.push([position, Option.getOrThrow(c).position]))
                      )
                    )
                  ),
                  { concurrency: 8 }
                )
                // biome-ignore lint/complexity/useMathMinMax: bigints
                const max = positions.reduce((a, b) => (a > b ? a : b))
                assert.strictEqual(Option.getOrThrow(yield* checkpoints.get(n)).position, max)
                // Once a save returned, no later read sees less: the checkpoint never went back.
                for (const [saved, read] of seen) assert.isTrue(read >= saved && read <= max)
              })
            ),
          { fastCheck: { numRuns: 10 } }
        )
      })

      describe("conditional save", () => {
        it.effect("saves only from the expected position; a missing checkpoint is at 0", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name()
              const wrong = yield* Effect.flip(checkpoints.save(n, { position: 5n, expected: 3n }))
              assert.deepInclude(wrong, { _tag: "CheckpointConflictError", name: n, expected: 3n, actual: 0n })
              assert.isTrue(Option.isNone(yield* checkpoints.get(n)))
              yield* checkpoints.save(n, { position: 5n, expected: 0n })
              yield* checkpoints.save(n, { position: 9n, expected: 5n })
              const stale = yield* Effect.flip(checkpoints.save(n, { position: 12n, expected: 5n }))
              assert.deepInclude(stale, { _tag: "CheckpointConflictError", expected: 5n, actual: 9n })
              assert.include(stale.message, "9")
            })
          )
        )

        it.effect("a save from the expected position never moves the checkpoint backwards", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name()
              yield* checkpoints.save(n, { position: 9n, expected: 0n })
              const kept = yield* checkpoints.save(n, { position: 3n, expected: 9n, processed: 1 })
              assert.strictEqual(kept.position, 9n)
              const stored = Option.getOrThrow(yield* checkpoints.get(n))
              assert.strictEqual(stored.position, 9n)
              assert.strictEqual(stored.eventsProcessed, 0n)
            })
          )
        )

        it.effect("of racing saves from the same position, exactly one wins", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name()
              yield* checkpoints.save(n, { position: 50n })
              const results = yield* Effect.all(
                Arr.makeBy(10, (i) => Effect.either(checkpoints.save(n, { position: 60n + BigInt(i), expected: 50n }))),
                { concurrency: "unbounded" }
              )
              const wins = results.filter(Either.isRight)
              assert.strictEqual(wins.length, 1)
              for (const loss of results.filter(Either.isLeft))
                assert.strictEqual(loss.left._tag, "CheckpointConflictError")
              assert.strictEqual(Option.getOrThrow(yield* checkpoints.get(n)).position, wins[0]!.right.position)
            })
          )
        )
      })

      describe("awaitPosition (read-your-writes)", () => {
        it.effect("returns once the checkpoint is at or past the position, woken by the save that gets it there", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name("await")
              yield* checkpoints.save(n, { position: 3n })
              // Already there: at once.
              assert.strictEqual((yield* checkpoints.awaitPosition(n, 3n)).position, 3n)
              const waiting = yield* Effect.fork(checkpoints.awaitPosition(n, 10n, { timeout: "30 seconds" }))
              const other = name("other")
              // Saves of other checkpoints and saves short of the position do not end the wait.
              yield* checkpoints.save(other, { position: 50n })
              yield* checkpoints.save(n, { position: 7n })
              yield* checkpoints.save(n, { position: 12n })
              const reached = yield* Fiber.join(waiting)
              assert.strictEqual(reached.name, n)
              assert.strictEqual(reached.position, 12n)
            })
          )
        )

        it.effect("a checkpoint that does not get there in time is a CheckpointTimeoutError saying where it is", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name("late")
              yield* checkpoints.save(n, { position: 4n })
              const error = yield* Effect.flip(checkpoints.awaitPosition(n, 5n, { timeout: "200 millis" }))
              assert.strictEqual(error._tag, "CheckpointTimeoutError")
              assert.deepInclude(error, { name: n, position: 5n, reached: 4n, timeoutMillis: 200 })
              const missing = yield* Effect.flip(checkpoints.awaitPosition(name("none"), 1n, { timeout: "10 millis" }))
              assert.deepInclude(missing, { _tag: "CheckpointTimeoutError", reached: 0n })
              const invalid = yield* Effect.flip(checkpoints.awaitPosition("", 1n))
              assert.strictEqual(invalid._tag, "CheckpointError")
            })
          )
        )

        it.effect("a waiter is woken by a save at once, not by reading again later", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name("woken")
              yield* checkpoints.save(n, { position: 1n })
              let spans: ReadonlyArray<RecordedSpan> = []
              const [reached] = yield* recordingSpans(
                Effect.gen(function* () {
                  const waiting = yield* Effect.fork(checkpoints.awaitPosition(n, 2n, { timeout: "900 millis" }))
                  // Once the waiter has seen position 1 it waits; only then is the position saved.
                  // Backends that read again do so every second or more: a reply within the
                  // 900 ms timeout comes from the save's notification.
                  yield* eventually(
                    Effect.sync(() => spans),
                    (all) =>
                      all.some(
                        (span) =>
                          span.name === "CheckpointStore.awaitPosition" &&
                          span.attributes.get("eventfold.checkpoint.position") === "1"
                      )
                  )
                  yield* checkpoints.save(n, { position: 2n })
                  return yield* Fiber.join(waiting)
                }),
                (recorded) => {
                  spans = recorded
                }
              )
              assert.strictEqual(reached.position, 2n)
            })
          )
        )
      })

      describe("reset and lag", () => {
        it.effect("reset moves a checkpoint back (to 0 or a position) and restarts its count", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              const n = name()
              const saved = yield* checkpoints.save(n, { position: 70n, eventId: uuid(), eventType: "X", processed: 7 })
              // The clock moves on before the reset, so that a reset that took "now" as its birth would show.
              yield* eventually(
                Effect.sync(() => Date.now()),
                (now) => now > saved.createdAt.getTime(),
                { every: "1 millis", what: "the clock to pass the checkpoint's birth" }
              )
              yield* checkpoints.reset(n)
              assert.deepInclude(Option.getOrThrow(yield* checkpoints.get(n)), {
                position: 0n,
                eventId: null,
                eventType: null,
                eventsProcessed: 0n
              })
              assert.strictEqual(
                Option.getOrThrow(yield* checkpoints.get(n)).createdAt.getTime(),
                saved.createdAt.getTime()
              )
              yield* checkpoints.reset(n, { to: 30n })
              assert.strictEqual(Option.getOrThrow(yield* checkpoints.get(n)).position, 30n)
              // Reset is the one way back; saves go forward from there, and the checkpoint keeps its birth.
              const created = Option.getOrThrow(yield* checkpoints.get(n)).createdAt
              const forward = yield* checkpoints.save(n, { position: 31n, expected: 30n })
              assert.strictEqual(forward.position, 31n)
              assert.strictEqual(forward.createdAt.getTime(), created.getTime())
              // A checkpoint that does not exist yet is recorded by a reset, at its position.
              const fresh = name()
              yield* checkpoints.reset(fresh)
              assert.deepInclude(Option.getOrThrow(yield* checkpoints.get(fresh)), {
                position: 0n,
                eventsProcessed: 0n
              })
              // Listed by name.
              const names = (yield* checkpoints.list).map((c) => c.name)
              assert.deepStrictEqual(names, [...names].sort())
            })
          )
        )

        it.effect("lag counts the events behind (with filters) and the age of the oldest one", () =>
          withServices((checkpoints, store) =>
            Effect.gen(function* () {
              const n = name()
              const aggregateType = `Lag${uuid().slice(0, 8)}`
              const s = { aggregateId: uuid(), aggregateType }
              const first = yield* store.append(s, [note("1"), note("2"), note("3")], {
                expectedVersion: ExpectedVersion.noStream
              })
              const filter = { aggregateTypes: [aggregateType] }
              // Real time: ages are measured by the store's clock (PostgreSQL's now()), so the gap
              // between the two appends is waited for on that clock.
              yield* eventually(checkpoints.lag(n, filter), (lag) => lag.timeBehindMillis >= 100, {
                every: "10 millis",
                what: "the first events to be 100 ms old"
              })
              const beforeLast = Date.now()
              const last = yield* store.append(s, [note("4"), note("5")], { expectedVersion: ExpectedVersion.exact(3) })

              const fresh = yield* checkpoints.lag(n, filter)
              assert.deepInclude(fresh, { name: n, position: 0n, eventsBehind: 5 })
              assert.isTrue(fresh.headPosition >= last.lastPosition)
              assert.isAtLeast(fresh.timeBehindMillis, 100)

              yield* checkpoints.save(n, { position: first.lastPosition })
              const partway = yield* checkpoints.lag(n, filter)
              assert.strictEqual(partway.eventsBehind, 2)
              // Event 4's age: at most the time since just before its append (2 ms for the clocks'
              // rounding); event 1's is over 100 ms, so the two differ whenever this takes less.
              assert.isAtMost(partway.timeBehindMillis, Date.now() - beforeLast + 2)

              yield* checkpoints.save(n, { position: last.lastPosition })
              const caughtUp = yield* checkpoints.lag(n, filter)
              assert.deepInclude(caughtUp, { eventsBehind: 0, timeBehindMillis: 0, position: last.lastPosition })
            })
          )
        )

        it.effect("rejects an empty or overlong name and a negative position", () =>
          withServices((checkpoints) =>
            Effect.gen(function* () {
              for (const bad of ["", "x".repeat(256)]) {
                assert.strictEqual((yield* Effect.flip(checkpoints.get(bad)))._tag, "CheckpointError")
              }
              const negative = yield* Effect.flip(checkpoints.save(name(), { position: -1n }))
              assert.strictEqual(negative._tag, "CheckpointError")
              assert.strictEqual(negative._tag === "CheckpointError" && negative.method, "save")
              // The longest name fits.
              const longest = `${name()}-`.padEnd(255, "x")
              yield* checkpoints.save(longest, { position: 3n })
              assert.strictEqual(Option.getOrThrow(yield* checkpoints.get(longest)).position, 3n)
            })
          )
        )

        it.effect(
          "rejects what untyped callers may pass: a name that is not a string, a position that is not a bigint",
          () =>
            withServices((checkpoints) =>
              Effect.gen(function* () {
                const notString = yield* Effect.flip(checkpoints.get(42 as unknown as string))
                assert.strictEqual(notString._tag, "CheckpointError")
                const notBigint = yield* Effect.flip(checkpoints.save(name(), { position: 5 as unknown as bigint }))
                assert.strictEqual(notBigint._tag, "CheckpointError")
                assert.include(notBigint.message, "bigint")
              })
            )
        )
      })
    }
  )
