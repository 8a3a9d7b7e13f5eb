/**
 * What a storage backend gives the conformance suites of subscriptions, checkpoints,
 * dead letters and projections (`SubscriptionSuite`, `CheckpointStoreSuite`,
 * `DeadLetterQueueSuite`, `ProjectionSuite`): stores over its one storage, the runner's
 * services over the same storage, and its transactions if it has any. A new backend
 * provides this service and runs the suites unchanged; {@link memory} is the memory
 * backend's, and the model.
 *
 * @since 0.1.0
 */
import {
  CheckpointStore,
  DeadLetterQueue,
  type Errors,
  type EventRegistry,
  EventStore,
  ExpectedVersion,
  Projection
} from "@eventfold/core"
import * as EventMetadata from "@eventfold/core/EventMetadata"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** The name the backend's `EventStore.Backend` reports: read metrics are tagged with it. */
  readonly name: string
  /** A store over the backend's one storage, decoding with `registry`. */
  readonly store: (registry: EventRegistry.EventRegistry) => Effect.Effect<EventStore.Service>
  /** Runner services over the same storage, with the store of `registry`. */
  readonly services: (registry: EventRegistry.EventRegistry) => Layer.Layer<Projection.Requirements>
  /**
   * Whether the runtime's lock is polled, paced by `RunOptions.takeover` (PostgreSQL's
   * advisory lock), rather than waited on (memory).
   */
  readonly lockPolls: boolean
  /** Runs an effect in one database transaction; none for backends without transactions. */
  readonly transaction: Option.Option<
    <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | Errors.EventStoreError, R>
  >
  /** A statement of the backend's own in the current transaction (other work before an append). */
  readonly sideWrite: Option.Option<(value: string) => Effect.Effect<void, Errors.EventStoreError>>
  /**
   * Writes an event as another program would, past the store's checks: its payload as
   * JSON text (memory: the backend's append; PostgreSQL: a plain INSERT). Returns its position.
   */
  readonly writeForeign: (event: {
    readonly aggregateId: string
    readonly aggregateType: string
    readonly version: number
    readonly eventType: string
    readonly payloadJson: string
  }) => Effect.Effect<bigint, Errors.EventStoreError>
}

/**
 * @since 0.1.0
 * @category models
 */
export class ConformanceBackend extends Context.Tag("@eventfold/testing/ConformanceBackend")<
  ConformanceBackend,
  Service
>() {}

const storeError = (cause: unknown) => EventStore.storeError("writeForeign")(cause)

/**
 * The memory backend: one storage shared by every store the suites make, as one
 * database would be, with one dead-letter queue, one runtime (its locks) and one
 * checkpoint store per registry.
 *
 * @since 0.1.0
 * @category layers
 */
export const memory: Layer.Layer<ConformanceBackend> = Layer.sync(ConformanceBackend, (): Service => {
  const backend = EventStore.makeMemoryBackend()
  const deadLetters = Layer.succeed(DeadLetterQueue.DeadLetterQueue, Effect.runSync(DeadLetterQueue.makeMemory))
  const runtime = Layer.succeed(Projection.ProjectionRuntime, Projection.makeMemoryRuntime())
  const checkpoints = new Map<EventRegistry.EventRegistry, CheckpointStore.Service>()
  return {
    name: "memory",
    store: (registry) => Effect.succeed(EventStore.make(backend, registry)),
    services: (registry) => {
      const store = EventStore.make(backend, registry)
      let checkpoint = checkpoints.get(registry)
      if (checkpoint === undefined) {
        checkpoint = Effect.runSync(Effect.provideService(CheckpointStore.makeMemory, EventStore.EventStore, store))
        checkpoints.set(registry, checkpoint)
      }
      return Layer.mergeAll(
        Layer.succeed(EventStore.EventStore, store),
        Layer.succeed(CheckpointStore.CheckpointStore, checkpoint),
        deadLetters,
        runtime
      )
    },
    lockPolls: false,
    transaction: Option.none(),
    sideWrite: Option.none(),
    writeForeign: (event) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) =>
        backend.append({
          stream: { aggregateId: event.aggregateId, aggregateType: event.aggregateType },
          expectedVersion: ExpectedVersion.exact(event.version - 1),
          tenantId: null,
          actorId: null,
          metadata: EventMetadata.empty,
          events: [
            {
              eventId: crypto.randomUUID(),
              eventType: event.eventType,
              timestamp: new Date(now),
              payloadJson: event.payloadJson
            }
          ]
        })
      ).pipe(
        Effect.map((result) => result.firstPosition),
        Effect.mapError(storeError)
      )
  }
})
