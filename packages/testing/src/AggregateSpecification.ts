/**
 * Given/when/then for aggregates, in the manner of Emmett's `DeciderSpecification`:
 * given the events already in an aggregate's stream, when a command runs, then it
 * appends these events, or fails with this error.
 *
 * The command is either an `Aggregate.command` (the root is loaded from the given
 * events, the command decides, the repository saves) or any Effect that uses the
 * `EventStore`, such as an application service working through an
 * `AggregateRepository`. Both run on a memory store of their own holding the given
 * events, with the registry's validation, encoding and decoding: the events compared
 * are the ones stored and read back. A failed expectation dies with an `AssertionError`
 * carrying `actual` and `expected`, which test runners show as a diff.
 *
 * @example
 * ```ts
 * const given = AggregateSpecification.make(Order)
 *
 * it.effect("ships a created order", () =>
 *   given([OrderCreated.make({ customer_id: "c-1", total: 10 })])
 *     .when(shipOrder({ trackingNumber: "T-1" }))
 *     .thenEvents([OrderShipped.make({ tracking_number: "T-1" })])
 * )
 * ```
 *
 * @since 0.1.0
 */
import { AssertionError } from "node:assert"
import { isDeepStrictEqual } from "node:util"
import { Aggregate, AggregateRepository, type Event, EventRegistry, EventStore, ExpectedVersion } from "@eventfold/core"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"

/**
 * An aggregate's specification: call it with the events already stored to state what
 * is given.
 *
 * @since 0.1.0
 * @category models
 */
export interface Specification<State, E extends Event.Any> {
  (events: ReadonlyArray<E>): Given<State, E>
  readonly aggregate: Aggregate.Aggregate<State, E>
  /** The aggregate id of the stream under test: the given events are in it, commands run on it. */
  readonly id: string
}

/**
 * The events given: what runs next.
 *
 * @since 0.1.0
 * @category models
 */
export interface Given<State, E extends Event.Any> {
  readonly when: {
    /** An `Aggregate.command(...)(input)`: run on the root the given events make, then saved. */
    <Err, R>(
      command: (self: Effect.Effect<Aggregate.Root<State, E>>) => Effect.Effect<Aggregate.Root<State, E>, Err, R>
    ): When<State, E, Err, R>
    /** A program that works through the `EventStore` (an `AggregateRepository`, say), provided with the memory store. */
    <A, Err, R>(program: Effect.Effect<A, Err, R>): When<State, E, Err, Exclude<R, EventStore.EventStore>>
  }
}

/**
 * The command given: what is expected of it.
 *
 * @since 0.1.0
 * @category models
 */
export interface When<State, E extends Event.Any, Err, R> {
  /**
   * Expects the command to succeed and the stream to have gained exactly `events`, in
   * order (none: `thenEvents([])`). Returns what the aggregate became, for further checks.
   */
  readonly thenEvents: (events: ReadonlyArray<E>) => Effect.Effect<Outcome<State, E>, never, R>
  /**
   * Expects the command to fail, with an error equal to `expected` when given (compared
   * as `node:util`'s `isDeepStrictEqual` does). Returns the error, for further checks.
   */
  readonly thenFails: (expected?: Err) => Effect.Effect<Err, never, R>
}

/**
 * What a command that succeeded left in the stream.
 *
 * @since 0.1.0
 * @category models
 */
export interface Outcome<State, E extends Event.Any> {
  /** The events the command appended, as stored and read back. */
  readonly events: ReadonlyArray<E>
  /** The state the whole stream folds into. */
  readonly state: State
  /** The stream's version. */
  readonly version: number
}

/**
 * Starts a specification of `aggregate`. Each run has a memory store of its own, with
 * `registry` (default: the aggregate's own events) and the stream `id` (default: a
 * random UUID, fixed for this specification).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <State, E extends Event.Any>(
  aggregate: Aggregate.Aggregate<State, E>,
  options: { readonly id?: string | undefined; readonly registry?: EventRegistry.EventRegistry | undefined } = {}
): Specification<State, E> => {
  const id = options.id ?? crypto.randomUUID()
  const registry = options.registry ?? EventRegistry.make(...aggregate.events)
  const given = (events: ReadonlyArray<E>): Given<State, E> => ({
    // One implementation for both overloads: a program's EventStore is provided here, as the second says.
    when: (<A, Err, R>(
      command:
        | ((self: Effect.Effect<Aggregate.Root<State, E>>) => Effect.Effect<Aggregate.Root<State, E>, Err, R>)
        | Effect.Effect<A, Err, R>
    ) => {
      const run = Effect.gen(function* () {
        const store = EventStore.make(EventStore.makeMemoryBackend(), registry)
        const stream = { aggregateId: id, aggregateType: aggregate.type }
        if (events.length > 0) {
          yield* store
            .append(
              stream,
              events.map((event) => ({ event })),
              { expectedVersion: ExpectedVersion.noStream }
            )
            .pipe(Effect.orDieWith((error) => setupError("the given events could not be appended", error)))
        }
        const repository = yield* AggregateRepository.make(aggregate).pipe(
          Effect.provideService(EventStore.EventStore, store)
        )
        const outcome = yield* Effect.either<unknown, Err, R>(
          Effect.isEffect(command)
            ? Effect.provideService(command, EventStore.EventStore, store)
            : Effect.flatMap(
                command(
                  events.length === 0
                    ? repository.create(id)
                    : repository
                        .load(id)
                        .pipe(Effect.orDieWith((error) => setupError("the given events could not be loaded", error)))
                ),
                (root) =>
                  repository
                    .save(root)
                    .pipe(Effect.orDieWith((error) => setupError("the command's events could not be saved", error)))
              )
        )
        if (Either.isLeft(outcome)) return Either.left(outcome.left)
        const appended = yield* Stream.runCollect(
          store.readStreamEvents(stream, { fromVersion: events.length + 1 })
        ).pipe(Effect.orDieWith((error) => setupError("the stream could not be read back", error)))
        const own = Aggregate.isEventOf(aggregate)
        const decided: Array<E> = []
        for (const { event } of appended) {
          if (!own(event)) return yield* Effect.die(setupError(`the command appended a ${event._tag}`, event))
          decided.push(event)
        }
        const root = yield* (events.length + decided.length === 0 ? repository.create(id) : repository.load(id)).pipe(
          Effect.orDieWith((error) => setupError("the stream could not be loaded", error))
        )
        return Either.right<Outcome<State, E>>({ events: decided, state: root.state, version: root.version })
      })
      return {
        thenEvents: (expected) =>
          Effect.flatMap(run, (outcome) => {
            if (Either.isLeft(outcome)) {
              return Effect.die(
                new AssertionError({
                  message: `expected the command to append ${describe(expected)}, but it failed with ${describe(outcome.left)}`,
                  actual: outcome.left,
                  expected,
                  operator: "thenEvents"
                })
              )
            }
            if (!isDeepStrictEqual(outcome.right.events, expected)) {
              return Effect.die(
                new AssertionError({
                  message: "the events the command appended are not the expected ones",
                  actual: outcome.right.events,
                  expected,
                  operator: "thenEvents"
                })
              )
            }
            return Effect.succeed(outcome.right)
          }),
        thenFails: (expected) =>
          Effect.flatMap(run, (outcome) => {
            if (Either.isRight(outcome)) {
              return Effect.die(
                new AssertionError({
                  message: `expected the command to fail${expected === undefined ? "" : ` with ${describe(expected)}`}, but it appended ${describe(outcome.right.events)}`,
                  actual: outcome.right.events,
                  expected,
                  operator: "thenFails"
                })
              )
            }
            if (expected !== undefined && !isDeepStrictEqual(outcome.left, expected)) {
              return Effect.die(
                new AssertionError({
                  message: "the command failed with another error than the expected one",
                  actual: outcome.left,
                  expected,
                  operator: "thenFails"
                })
              )
            }
            return Effect.succeed(outcome.left)
          })
      } satisfies When<State, E, Err, R>
    }) as Given<State, E>["when"]
  })
  return Object.assign(given, { aggregate, id }) as Specification<State, E>
}

/** A specification that cannot run as written (its given events are not valid, say): not a failed expectation. */
const setupError = (what: string, cause: unknown): Error =>
  new Error(`AggregateSpecification: ${what}: ${describe(cause)}`, { cause })

/** A value in a failure message: JSON where it can be (bigints as text), else its string form. */
const describe = (value: unknown): string => {
  if (value instanceof Error && value.message !== "") return `${value.name}: ${value.message}`
  try {
    return JSON.stringify(value, (_, v: unknown) => (typeof v === "bigint" ? `${v}n` : v)) ?? String(value)
  } catch {
    return String(value)
  }
}
