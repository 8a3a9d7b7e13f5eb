/**
 * Projections: read models kept up to date from the global log.
 *
 * A projection is a name, handlers for the decoded event types it cares about, and
 * optionally how to clear its read model (for `rebuild`). A runner subscribes from the
 * projection's checkpoint (only the handled event types, selected in SQL), handles
 * events in batches and saves the checkpoint after each batch:
 *
 * - **Retries and dead letters.** A failing handler is retried on a `Schedule`; after
 *   the budget the event goes to the `DeadLetterQueue` and the runner goes on past it
 *   (`onDeadLetter: "continue"`, the default) or stops before it (`"stop"`). Dead
 *   letters can be listed, retried through the handler ({@link retryDeadLetter}) and
 *   resolved.
 * - **Exactly once with PostgreSQL.** With `@eventfold/pg`'s runtime, a batch's handler
 *   writes, its dead letters and its checkpoint commit in one transaction (each handler
 *   attempt in a savepoint), and the checkpoint save is conditional on the position the
 *   batch started from: a crash or an interruption at any point neither loses nor
 *   double-applies an event, and a runner that lost its lock cannot commit. With the
 *   memory runtime, delivery is at-least-once: handlers must be idempotent.
 * - **One active runner.** Runners of the same projection (in several processes) take a
 *   lock first; the others wait as standbys and take over when the active one dies.
 * - **Never silent.** A runner's {@link Status} says whether it is active or standby,
 *   where it is, and which session holds the log back when it is stalled.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type { CheckpointError, CheckpointStore } from "./CheckpointStore.js"
import type { DeadLetter, DeadLetterQueue } from "./DeadLetterQueue.js"
import type * as Event from "./Event.js"
import type { EventStore, RecordedEvent } from "./EventStore.js"
import * as internal from "./internal/projectionRunner.js"
import type * as Subscription from "./Subscription.js"

/**
 * The handler of one event type.
 *
 * @since 0.1.0
 * @category models
 */
export interface Handler<R> {
  readonly eventType: string
  readonly handle: (event: RecordedEvent) => Effect.Effect<void, unknown, R>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Projection<R = never> {
  /** Also the checkpoint's and the lock's name. */
  readonly name: string
  readonly handlers: ReadonlyMap<string, Handler<R>["handle"]>
  /** The handled event types: the subscription selects only these, in SQL. */
  readonly eventTypes: ReadonlyArray<string>
  readonly tenantId?: string
  readonly aggregateTypes?: ReadonlyArray<string>
  /** Clears the read model; run with the checkpoint reset, in one transaction, by {@link rebuild}. */
  readonly reset: Effect.Effect<void, unknown, R>
}

/**
 * Handles one event type with its decoded event.
 *
 * @since 0.1.0
 * @category constructors
 */
export const on = <T extends Event.AnyEventType, E, R>(
  type: T,
  handle: (event: RecordedEvent<Event.Type<T>>) => Effect.Effect<void, E, R>
): Handler<R> => ({
  eventType: type.type,
  // The runner only calls it with events whose type is `type.type`, decoded by its schema.
  handle: handle as unknown as Handler<R>["handle"]
})

type HandlerContext<H> = H extends Handler<infer R> ? R : never

/**
 * Defines a projection.
 *
 * @example
 * ```ts
 * const summaries = Projection.make({
 *   name: "order-summary",
 *   handlers: [
 *     Projection.on(OrderCreated, (e) => sql`INSERT INTO order_summary ...`),
 *     Projection.on(OrderShipped, (e) => sql`UPDATE order_summary ...`)
 *   ],
 *   reset: sql`TRUNCATE order_summary`
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <const H extends ReadonlyArray<Handler<unknown>>, R = never>(options: {
  readonly name: string
  readonly handlers: H
  readonly tenantId?: string
  readonly aggregateTypes?: ReadonlyArray<string>
  readonly reset?: Effect.Effect<void, unknown, R>
}): Projection<HandlerContext<H[number]> | R> => {
  const handlers = new Map<string, Handler<HandlerContext<H[number]> | R>["handle"]>()
  for (const handler of options.handlers) {
    if (handlers.has(handler.eventType)) {
      throw new Error(`Projection ${options.name}: two handlers for event type "${handler.eventType}"`)
    }
    handlers.set(handler.eventType, handler.handle as Handler<HandlerContext<H[number]>>["handle"])
  }
  return {
    name: options.name,
    handlers,
    eventTypes: [...handlers.keys()],
    ...(options.tenantId === undefined ? {} : { tenantId: options.tenantId }),
    ...(options.aggregateTypes === undefined ? {} : { aggregateTypes: options.aggregateTypes }),
    reset: options.reset ?? Effect.void
  }
}

/**
 * What the runner needs from a storage backend: transactions (for exactly-once) and
 * a lock that keeps a projection to one active runner.
 *
 * @since 0.1.0
 * @category models
 */
export interface RuntimeService {
  readonly name: string
  /** Whether `transaction` makes handler writes and checkpoints atomic (exactly-once). */
  readonly exactlyOnce: boolean
  /** Runs `effect` in one transaction; a nested call is a savepoint. */
  readonly transaction: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E | ProjectionError, R>
  /**
   * Waits until this runner holds the lock of `name`; the lock is held until the scope
   * closes. `retry` paces the attempts where the lock must be polled (PostgreSQL); the
   * memory runtime waits on its lock directly.
   */
  readonly lock: (
    name: string,
    options: { readonly retry: Schedule.Schedule<unknown, unknown> }
  ) => Effect.Effect<Lease, ProjectionError, Scope.Scope>
}

/**
 * A held projection lock.
 *
 * @since 0.1.0
 * @category models
 */
export interface Lease {
  /** Fails as soon as the lock is found lost; the runner stops at once. */
  readonly lost: Effect.Effect<never, ProjectionError>
  /** Fails if the lock is no longer held; run in each batch's transaction, before its checkpoint. */
  readonly held: Effect.Effect<void, ProjectionError>
}

/**
 * @since 0.1.0
 * @category models
 */
export class ProjectionRuntime extends Context.Tag("@eventfold/core/ProjectionRuntime")<
  ProjectionRuntime,
  RuntimeService
>() {}

/**
 * Everything a runner needs besides the handlers' own services.
 *
 * @since 0.1.0
 * @category models
 */
export type Requirements = EventStore | CheckpointStore | DeadLetterQueue | ProjectionRuntime

/**
 * The runtime failed: a transaction could not commit, the lock's connection was lost.
 * Runners restart after it (see `RunOptions.restart`).
 *
 * @since 0.1.0
 * @category errors
 */
export class ProjectionError extends Schema.TaggedError<ProjectionError>()("ProjectionError", {
  projection: Schema.String,
  method: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The runner stopped before an event it could not handle (`onDeadLetter: "stop"`).
 * The event is in the dead-letter queue; the checkpoint is just before it.
 *
 * @since 0.1.0
 * @category errors
 */
export class ProjectionStoppedError extends Schema.TaggedError<ProjectionStoppedError>()("ProjectionStoppedError", {
  projection: Schema.String,
  eventId: Schema.String,
  eventType: Schema.String,
  globalPosition: Schema.BigIntFromSelf,
  reason: Schema.String
}) {
  override get message(): string {
    return `projection ${this.projection} stopped at event ${this.eventId} (${this.eventType}, position ${this.globalPosition}): ${this.reason}`
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface RunOptions {
  /** Retries of a failing handler before its event is dead-lettered. Default: 3 retries, exponential from 100 ms. */
  readonly retry?: Schedule.Schedule<unknown, unknown>
  /** After the retries: go on past the dead letter (default) or stop before it. */
  readonly onDeadLetter?: "continue" | "stop"
  /** Events per read and per transaction. Default 500. */
  readonly batchSize?: number
  /** How often a standby tries to take over. Default: every second. */
  readonly takeover?: Schedule.Schedule<unknown, unknown>
  /** Restarts after an infrastructure failure (connection lost, lock lost, conflict). Default: exponential from 200 ms to 10 s, forever. */
  readonly restart?: Schedule.Schedule<unknown, unknown>
  /** Checkpoint saves that only record progress (no event handled) are at most this frequent. Default 1 second. */
  readonly progressInterval?: Duration.DurationInput
}

/**
 * A runner's state.
 *
 * @since 0.1.0
 * @category models
 */
export interface Status {
  readonly projection: string
  /** starting → standby (waiting for the lock) → active; restarting after a failure; stopped. */
  readonly state: "starting" | "standby" | "active" | "restarting" | "stopped"
  /** The last position this runner has committed (or read when it took over). */
  readonly position: bigint
  /** Events handled by this runner since it started. */
  readonly handled: number
  /** Events this runner sent to the dead-letter queue. */
  readonly deadLettered: number
  readonly lastError: string | null
  /** Set while the runner is caught up and held back by an open transaction. */
  readonly stall: Subscription.Stall | null
  /** When `state` last changed. */
  readonly since: Date
}

/**
 * A running projection, started with {@link start}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Runner {
  readonly status: Effect.Effect<Status>
  /** Completes when the runner stops: with `ProjectionStoppedError`, or the last failure once `restart` gives up. */
  readonly join: Effect.Effect<never, RunError>
}

/**
 * What a runner can end with.
 *
 * @since 0.1.0
 * @category errors
 */
export type RunError = internal.RunError

/**
 * Runs a projection until interrupted (or stopped by its dead-letter policy): waits for
 * the lock, then catches up from the checkpoint and follows the log.
 *
 * @since 0.1.0
 * @category constructors
 */
export const run: <R>(
  projection: Projection<R>,
  options?: RunOptions
) => Effect.Effect<never, RunError, R | Requirements> = internal.run

/**
 * Runs a projection in the background of the current scope, with a queryable status.
 *
 * @since 0.1.0
 * @category constructors
 */
export const start: <R>(
  projection: Projection<R>,
  options?: RunOptions
) => Effect.Effect<Runner, never, R | Requirements | Scope.Scope> = internal.start

/**
 * @since 0.1.0
 * @category models
 */
export interface RebuildProgress {
  readonly projection: string
  /** The checkpoint now. */
  readonly position: bigint
  /** The end of the log when the rebuild started; the rebuild is done when the checkpoint gets there. */
  readonly target: bigint
  readonly eventsProcessed: bigint
  readonly elapsedMillis: number
  readonly done: boolean
}

/**
 * Rebuilds a projection: in one transaction resets its checkpoint and clears its read
 * model (`reset`), then replays the log from the start until the checkpoint reaches the
 * end of the log as it was, reporting progress. The replay is done by whichever runner
 * holds the lock: this one (it waits for the lock) or a running one, which notices the
 * reset at its next batch and starts over.
 *
 * @since 0.1.0
 * @category constructors
 */
export const rebuild: <R>(
  projection: Projection<R>,
  options?: RunOptions & {
    readonly onProgress?: (progress: RebuildProgress) => Effect.Effect<void>
    /** How often progress is reported. Default 1 second. */
    readonly reportInterval?: Duration.DurationInput
  }
) => Effect.Effect<RebuildProgress, RunError, R | Requirements> = internal.rebuild

/**
 * Clears a projection's read model (its `reset`) and moves its checkpoint back to the
 * start, in one transaction where the runtime has them. Runners, here or elsewhere,
 * notice at their next batch and replay the log; {@link rebuild} also waits for them.
 *
 * @since 0.1.0
 * @category constructors
 */
export const reset: <R>(
  projection: Projection<R>
) => Effect.Effect<void, ProjectionError | CheckpointError, R | CheckpointStore | ProjectionRuntime> = internal.reset

/**
 * Runs a dead letter's event through the projection's handler again (with the retry
 * schedule). On success the handler's writes and the resolution commit together; on
 * failure the dead letter is `failed` again with the new error. Returns the dead letter
 * as it ends up.
 *
 * @since 0.1.0
 * @category constructors
 */
export const retryDeadLetter: <R>(
  projection: Projection<R>,
  id: bigint,
  options?: Pick<RunOptions, "retry">
) => Effect.Effect<DeadLetter, internal.RetryDeadLetterError, R | Requirements> = internal.retryDeadLetter

/**
 * The runtime of the memory backends: no transactions (delivery is at-least-once),
 * locks that keep a projection to one runner within this process.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<ProjectionRuntime> = Layer.sync(ProjectionRuntime, () => makeMemoryRuntime())

/**
 * The memory runtime itself (see {@link layerMemory}); runners that share one share its locks.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemoryRuntime = (): RuntimeService => {
  const locks = new Map<string, Effect.Semaphore>()
  return ProjectionRuntime.of({
    name: "memory",
    exactlyOnce: false,
    transaction: (effect) => effect,
    lock: (name) =>
      Effect.gen(function* () {
        let semaphore = locks.get(name)
        if (semaphore === undefined) {
          semaphore = Effect.unsafeMakeSemaphore(1)
          locks.set(name, semaphore)
        }
        const held = semaphore
        yield* Effect.acquireRelease(held.take(1), () => held.release(1))
        return { lost: Effect.never, held: Effect.void }
      })
  })
}

/**
 * The default retry schedule of handlers: 3 retries, exponential from 100 ms.
 *
 * @since 0.1.0
 * @category utils
 */
export const defaultRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("100 millis").pipe(
  Schedule.intersect(Schedule.recurs(3))
)
