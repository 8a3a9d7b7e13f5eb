/**
 * Loads aggregates from their streams and saves their pending events with
 * optimistic concurrency. Works with any `EventStore` layer.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as Aggregate from "./Aggregate.js"
import type { AppendError, ReadError } from "./Errors.js"
import { StreamNotFoundError, UnknownEventTypeError } from "./Errors.js"
import type * as Event from "./Event.js"
import { EventStore } from "./EventStore.js"
import * as ExpectedVersion from "./ExpectedVersion.js"
import { Attributes, Spans } from "./Telemetry.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface AggregateRepository<State, E extends Event.Any> {
  readonly aggregate: Aggregate.Aggregate<State, E>
  /** A new instance at version 0; nothing is stored until `save`. */
  readonly create: (id: string) => Effect.Effect<Aggregate.Root<State, E>>
  /** Folds the stream into the current state; fails if the stream has no events. */
  readonly load: (id: string) => Effect.Effect<Aggregate.Root<State, E>, StreamNotFoundError | ReadError>
  /**
   * Appends the pending events, expecting the stream still at the version it was
   * loaded at: a concurrent writer makes it fail with `ConcurrencyError`. Saving the
   * same root twice is idempotent (the pending events carry their ids).
   */
  readonly save: (root: Aggregate.Root<State, E>) => Effect.Effect<Aggregate.Root<State, E>, AppendError>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly tenantId?: string | null
  readonly actorId?: string | null
}

/**
 * A repository for one aggregate type, over the `EventStore` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <State, E extends Event.Any>(
  aggregate: Aggregate.Aggregate<State, E>,
  options: Options = {}
): Effect.Effect<AggregateRepository<State, E>, never, EventStore> =>
  Effect.gen(function* () {
    const store = yield* EventStore
    for (const definition of aggregate.events) {
      // A registry that decodes this aggregate's types with other schemas would hand
      // evolve() values of the wrong shape: a wiring mistake, reported at once.
      if (store.registry.types.get(definition.type) !== definition) {
        return yield* Effect.dieMessage(
          `AggregateRepository(${aggregate.type}): the EventStore's registry does not hold this aggregate's definition of ${definition.type}`
        )
      }
    }
    const isOwnEvent = Aggregate.isEventOf(aggregate)

    /** An event of another aggregate's type in this stream, named by id and position (read again: it is rare). */
    const foreignEvent = (stream: { readonly aggregateId: string; readonly aggregateType: string }, version: number) =>
      store.readStream(stream, { fromVersion: version, toVersion: version }).pipe(
        Stream.runHead,
        Effect.flatMap((recorded) =>
          Effect.fail(
            new UnknownEventTypeError(
              Option.match(recorded, {
                onNone: () => ({ eventType: "unknown" }),
                onSome: (r) => ({ eventType: r.eventType, eventId: r.eventId, globalPosition: r.globalPosition })
              })
            )
          )
        )
      )

    const load = Effect.fn(Spans.repositoryLoad)(function* (id: string) {
      yield* Effect.annotateCurrentSpan({ [Attributes.aggregateType]: aggregate.type, [Attributes.aggregateId]: id })
      // Folded a page at a time with plain loops: one Effect per page, not per event.
      // Only version, type and payload are read: the envelope is not needed to fold.
      const stream = { aggregateId: id, aggregateType: aggregate.type }
      let state = aggregate.initialState(id)
      let version = 0
      yield* store.readStreamEvents(stream).pipe(
        Stream.runForEachChunk((chunk) => {
          for (const stored of chunk) {
            if (!isOwnEvent(stored.event)) return foreignEvent(stream, stored.version)
            state = aggregate.evolve(state, stored.event)
            version = stored.version
          }
          return Effect.void
        })
      )
      const root: Aggregate.Root<State, E> = {
        id,
        type: aggregate.type,
        state,
        version,
        persistedVersion: version,
        pending: []
      }
      if (root.version === 0) {
        return yield* new StreamNotFoundError({ aggregateId: id, aggregateType: aggregate.type })
      }
      yield* Effect.annotateCurrentSpan(Attributes.streamVersion, root.version)
      return root
    })

    const save = Effect.fn(Spans.repositorySave)(function* (root: Aggregate.Root<State, E>) {
      yield* Effect.annotateCurrentSpan({
        [Attributes.aggregateType]: aggregate.type,
        [Attributes.aggregateId]: root.id,
        [Attributes.eventCount]: root.pending.length
      })
      if (root.pending.length === 0) return root
      const result = yield* store.append({ aggregateId: root.id, aggregateType: aggregate.type }, root.pending, {
        expectedVersion:
          root.persistedVersion === 0 ? ExpectedVersion.noStream : ExpectedVersion.exact(root.persistedVersion),
        ...(options.tenantId === undefined ? {} : { tenantId: options.tenantId }),
        ...(options.actorId === undefined ? {} : { actorId: options.actorId })
      })
      return {
        ...root,
        version: result.version,
        persistedVersion: result.version,
        pending: [],
        lastPosition: result.lastPosition
      }
    })

    return {
      aggregate,
      create: (id: string) => Effect.succeed(Aggregate.empty(aggregate, id)),
      load,
      save
    }
  })
