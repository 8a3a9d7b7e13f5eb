/**
 * Checkpoints: how far each subscription (a projection, a process manager) has
 * processed the global log. A checkpoint never moves backwards, except through an
 * explicit `reset`; a save can also be made conditional on the stored position, so
 * that two runners racing on the same projection cannot both commit.
 *
 * One contract, a memory layer here and a PostgreSQL layer (on the spec's
 * `projection_checkpoints` table) in `@eventfold/pg`.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import * as Queue from "effect/Queue"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import type { ReadError } from "./Errors.js"
import { EventStore } from "./EventStore.js"
import { Attributes, Spans } from "./Telemetry.js"

/**
 * A subscription's stored progress.
 *
 * @since 0.1.0
 * @category models
 */
export interface Checkpoint {
  /** The subscription's name (spec: `projection_name`, `subscription_id`). */
  readonly name: string
  /** Every event up to this global position has been processed. */
  readonly position: bigint
  /** The last event processed, when the last save named one. */
  readonly eventId: string | null
  readonly eventType: string | null
  /** Events processed since the checkpoint was created (or last reset). */
  readonly eventsProcessed: bigint
  readonly lastProcessedAt: Date | null
  readonly createdAt: Date
  readonly updatedAt: Date
}

/**
 * @since 0.1.0
 * @category models
 */
export interface SaveInput {
  readonly position: bigint
  readonly eventId?: string | null
  readonly eventType?: string | null
  /** Events handled since the last save; added to `eventsProcessed`. Default 0. */
  readonly processed?: number
  /**
   * Save only if the stored position is exactly this one (a missing checkpoint is at
   * 0); otherwise fail with {@link CheckpointConflictError}. Runners use it as a fence.
   */
  readonly expected?: bigint
}

/**
 * How far a subscription is behind the log.
 *
 * @since 0.1.0
 * @category models
 */
export interface Lag {
  readonly name: string
  readonly position: bigint
  /** The highest global position in the log. */
  readonly headPosition: bigint
  /** Events after the checkpoint (that match the filters, when given). */
  readonly eventsBehind: number
  /** Age of the oldest event not yet processed; 0 when caught up. */
  readonly timeBehindMillis: number
}

/**
 * Count only the events the subscription selects.
 *
 * @since 0.1.0
 * @category models
 */
export interface LagOptions {
  readonly tenantId?: string
  readonly aggregateTypes?: ReadonlyArray<string>
  readonly eventTypes?: ReadonlyArray<string>
}

/**
 * The store failed (a SQL error, an unreachable server). The cause is kept.
 *
 * @since 0.1.0
 * @category errors
 */
export class CheckpointError extends Schema.TaggedError<CheckpointError>()("CheckpointError", {
  method: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A conditional save found another position: someone else moved (or reset) the
 * checkpoint since it was read.
 *
 * @since 0.1.0
 * @category errors
 */
export class CheckpointConflictError extends Schema.TaggedError<CheckpointConflictError>()("CheckpointConflictError", {
  name: Schema.String,
  expected: Schema.BigIntFromSelf,
  actual: Schema.BigIntFromSelf
}) {
  override get message(): string {
    return `checkpoint ${this.name}: expected position ${this.expected}, found ${this.actual}`
  }
}

/**
 * A checkpoint did not reach the awaited position in time.
 *
 * @since 0.1.0
 * @category errors
 */
export class CheckpointTimeoutError extends Schema.TaggedError<CheckpointTimeoutError>()("CheckpointTimeoutError", {
  name: Schema.String,
  /** The position awaited. */
  position: Schema.BigIntFromSelf,
  /** Where the checkpoint was when the time ran out. */
  reached: Schema.BigIntFromSelf,
  timeoutMillis: Schema.Number
}) {
  override get message(): string {
    return `checkpoint ${this.name} did not reach position ${this.position} within ${this.timeoutMillis} ms (it is at ${this.reached})`
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AwaitOptions {
  /** How long to wait at most. Default 5 seconds. */
  readonly timeout?: Duration.DurationInput
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Saves a position (upsert). A position below the stored one changes nothing and
   * returns the stored checkpoint: checkpoints never move backwards.
   */
  readonly save: (
    name: string,
    input: SaveInput
  ) => Effect.Effect<Checkpoint, CheckpointError | CheckpointConflictError>
  readonly get: (name: string) => Effect.Effect<Option.Option<Checkpoint>, CheckpointError>
  readonly lag: (name: string, options?: LagOptions) => Effect.Effect<Lag, CheckpointError>
  /** Moves the checkpoint back to `to` (default 0), e.g. to rebuild a projection; counts restart. */
  readonly reset: (name: string, options?: { readonly to?: bigint }) => Effect.Effect<void, CheckpointError>
  readonly list: Effect.Effect<ReadonlyArray<Checkpoint>, CheckpointError>
  /**
   * Read-your-writes: waits until the checkpoint of `name` is at or past `position`
   * (the `lastPosition` of an append), so that a request handler can answer from a read
   * model that holds its own writes. Woken by each save of the checkpoint (PostgreSQL:
   * LISTEN/NOTIFY, delivered when the projection's transaction commits), never by
   * polling; fails with {@link CheckpointTimeoutError} after `timeout`.
   */
  readonly awaitPosition: (
    name: string,
    position: bigint,
    options?: AwaitOptions
  ) => Effect.Effect<Checkpoint, CheckpointError | CheckpointTimeoutError>
}

/**
 * What a backend implements besides the reads and writes: a subscription to the names
 * of the checkpoints saved from now on (each save of a checkpoint offers its name),
 * and whether it may miss some (then checkpoints are also read again every
 * `recheck`, e.g. while a lost LISTEN connection is opened again).
 *
 * @since 0.1.0
 * @category models
 */
export interface Watch {
  readonly saved: Effect.Effect<Queue.Dequeue<string>, never, Scope.Scope>
  readonly recheck: Duration.DurationInput
}

/**
 * @since 0.1.0
 * @category models
 */
export class CheckpointStore extends Context.Tag("@eventfold/core/CheckpointStore")<CheckpointStore, Service>() {}

/**
 * Wraps an implementation with input checks and spans, once for every backend.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  backend: { readonly name: string; readonly watch: Watch } & Omit<Service, "awaitPosition">
): Service => {
  const check = (method: string, name: string, position?: bigint) =>
    typeof name !== "string" || name.length === 0 || name.length > 255
      ? Effect.fail(
          new CheckpointError({ method, message: `checkpoint name must have 1 to 255 characters, got ${String(name)}` })
        )
      : position !== undefined && (typeof position !== "bigint" || position < 0n)
        ? Effect.fail(
            new CheckpointError({ method, message: `position must be a non-negative bigint, got ${String(position)}` })
          )
        : Effect.void
  const span = (method: keyof typeof CheckpointSpans, name: string) =>
    Effect.withSpan(CheckpointSpans[method], {
      attributes: { [Attributes.backend]: backend.name, [Attributes.subscription]: name }
    })
  return CheckpointStore.of({
    save: (name, input) =>
      check("save", name, input.position).pipe(
        Effect.zipRight(check("save", name, input.expected)),
        Effect.zipRight(backend.save(name, input)),
        span("save", name)
      ),
    get: (name) => check("get", name).pipe(Effect.zipRight(backend.get(name)), span("get", name)),
    lag: (name, options) => check("lag", name).pipe(Effect.zipRight(backend.lag(name, options)), span("lag", name)),
    reset: (name, options) =>
      check("reset", name, options?.to).pipe(Effect.zipRight(backend.reset(name, options)), span("reset", name)),
    list: backend.list.pipe(
      Effect.withSpan(Spans.checkpointList, { attributes: { [Attributes.backend]: backend.name } })
    ),
    awaitPosition: (name, position, options) =>
      check("awaitPosition", name, position).pipe(
        Effect.zipRight(waitForPosition(backend, name, position, options)),
        Effect.withSpan(Spans.checkpointAwait, {
          attributes: {
            [Attributes.backend]: backend.name,
            [Attributes.subscription]: name,
            [Attributes.position]: String(position)
          }
        })
      )
  })
}

/**
 * Read-your-writes: waits, through the `CheckpointStore` in context, until the
 * checkpoint of `name` (a projection's name) is at or past `position`, e.g. the
 * `lastPosition` of the append a request made (see {@link Service.awaitPosition}).
 *
 * @example
 * ```ts
 * const root = yield* repository.save(order)
 * yield* CheckpointStore.awaitPosition("order-summaries", root.lastPosition ?? 0n, { timeout: "2 seconds" })
 * return yield* readSummary(order.id) // holds this request's writes
 * ```
 *
 * @since 0.1.0
 * @category accessors
 */
export const awaitPosition = (
  name: string,
  position: bigint,
  options?: AwaitOptions
): Effect.Effect<Checkpoint, CheckpointError | CheckpointTimeoutError, CheckpointStore> =>
  Effect.flatMap(CheckpointStore, (store) => store.awaitPosition(name, position, options))

/**
 * Subscribes to saves first, then reads: a save between the two is never missed. Each
 * save of the checkpoint reads it again; a backend that may miss saves also reads it
 * every `recheck`.
 */
const waitForPosition = (
  backend: Pick<Service, "get"> & { readonly watch: Watch },
  name: string,
  position: bigint,
  options: AwaitOptions | undefined
): Effect.Effect<Checkpoint, CheckpointError | CheckpointTimeoutError> => {
  const timeout = Duration.decode(options?.timeout ?? "5 seconds")
  return Effect.gen(function* () {
    const saved = yield* backend.watch.saved
    const recheck = Effect.sleep(backend.watch.recheck)
    const ours = Effect.repeat(Queue.take(saved), { until: (saved) => saved === name })
    let reached = 0n
    const reachedYet = Effect.flatMap(backend.get(name), (checkpoint) => {
      reached = Option.match(checkpoint, { onNone: () => 0n, onSome: (c) => c.position })
      // Where the checkpoint was at each look, on the span: a slow wait shows what it saw.
      return Effect.as(
        Effect.annotateCurrentSpan(Attributes.checkpointPosition, String(reached)),
        Option.filter(checkpoint, (c) => c.position >= position)
      )
    })
    const wait: Effect.Effect<Checkpoint, CheckpointError> = Effect.flatMap(reachedYet, (found) =>
      Option.isSome(found) ? Effect.succeed(found.value) : Effect.zipRight(Effect.race(ours, recheck), wait)
    )
    return yield* Effect.timeoutFail(wait, {
      duration: timeout,
      onTimeout: () =>
        new CheckpointTimeoutError({ name, position, reached, timeoutMillis: Duration.toMillis(timeout) })
    })
  }).pipe(Effect.scoped)
}

const CheckpointSpans = {
  save: Spans.checkpointSave,
  get: Spans.checkpointGet,
  lag: Spans.checkpointLag,
  reset: Spans.checkpointReset
} as const

/**
 * Checkpoints kept in memory, for tests. `lag` reads (and decodes) the log through the
 * `EventStore` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service, never, EventStore> = Effect.gen(function* () {
  const store = yield* EventStore
  const ref = yield* Ref.make(new Map<string, Checkpoint>())
  // The names of the checkpoints saved, to whoever awaits one.
  const saves = yield* PubSub.unbounded<string>()

  // Times come from the fiber's clock, as the event store's do: a TestClock moves them all.
  const save: Service["save"] = (name, input) =>
    Effect.clockWith((clock) =>
      Ref.modify(ref, (map): readonly [Effect.Effect<Checkpoint, CheckpointConflictError>, Map<string, Checkpoint>] => {
        const now = new Date(clock.unsafeCurrentTimeMillis())
        const current = map.get(name)
        const actual = current?.position ?? 0n
        if (input.expected !== undefined && input.expected !== actual) {
          return [Effect.fail(new CheckpointConflictError({ name, expected: input.expected, actual })), map]
        }
        // Forward only: a save at or below the stored position changes nothing (as in PostgreSQL).
        if (current !== undefined && input.position <= current.position) return [Effect.succeed(current), map]
        const next: Checkpoint = {
          name,
          position: input.position,
          eventId: input.eventId === undefined ? (current?.eventId ?? null) : input.eventId,
          eventType: input.eventType === undefined ? (current?.eventType ?? null) : input.eventType,
          eventsProcessed: (current?.eventsProcessed ?? 0n) + BigInt(input.processed ?? 0),
          lastProcessedAt: now,
          createdAt: current?.createdAt ?? now,
          updatedAt: now
        }
        return [Effect.as(PubSub.publish(saves, name), next), new Map(map).set(name, next)]
      }).pipe(Effect.flatten)
    )

  const get: Service["get"] = (name) => Effect.map(Ref.get(ref), (map) => Option.fromNullable(map.get(name)))

  /**
   * The events of the log (position and creation time), an event that does not decode
   * included: as in PostgreSQL, which counts rows, one bad event never hides the rest.
   * The creation time of one that does not decode is not known.
   */
  const events = (
    options: LagOptions & { readonly after?: bigint; readonly direction?: "backward"; readonly limit?: number }
  ): Stream.Stream<{ readonly position: bigint; readonly createdAt: Date | undefined }, ReadError> =>
    store.readAll(options).pipe(
      Stream.map((event) => ({ position: event.globalPosition, createdAt: event.createdAt as Date | undefined })),
      Stream.catchAll((error) => {
        const position =
          error._tag === "EventDecodeError" || error._tag === "UnknownEventTypeError" ? error.globalPosition : undefined
        if (position === undefined) return Stream.fail(error)
        const rest = options.direction === "backward" ? Stream.empty : events({ ...options, after: position })
        return Stream.concat(Stream.make({ position, createdAt: undefined }), rest)
      })
    )

  const lag: Service["lag"] = (name, options) =>
    Effect.gen(function* () {
      const position = (yield* Ref.get(ref)).get(name)?.position ?? 0n
      const now = yield* Clock.currentTimeMillis
      const head = yield* Stream.runHead(events({ direction: "backward", limit: 1 }))
      const behind = yield* Stream.runFold(
        events({ ...options, after: position }),
        { count: 0, oldest: undefined as Date | undefined },
        (acc, event) => ({ count: acc.count + 1, oldest: acc.oldest ?? event.createdAt })
      )
      return {
        name,
        position,
        headPosition: Option.match(head, { onNone: () => 0n, onSome: (e) => e.position }),
        eventsBehind: behind.count,
        timeBehindMillis: behind.oldest === undefined ? 0 : Math.max(0, now - behind.oldest.getTime())
      }
    }).pipe(Effect.mapError((cause) => new CheckpointError({ method: "lag", message: cause.message, cause })))

  const reset: Service["reset"] = (name, options) =>
    Effect.clockWith((clock) =>
      Ref.update(ref, (map) => {
        const current = map.get(name)
        const now = new Date(clock.unsafeCurrentTimeMillis())
        return new Map(map).set(name, {
          name,
          position: options?.to ?? 0n,
          eventId: null,
          eventType: null,
          eventsProcessed: 0n,
          lastProcessedAt: null,
          createdAt: current?.createdAt ?? now,
          updatedAt: now
        })
      })
    )

  const list: Service["list"] = Effect.map(Ref.get(ref), (map) =>
    [...map.values()].sort((a, b) => a.name.localeCompare(b.name))
  )

  // A memory store misses no save: it reads again only when woken.
  const watch: Watch = { saved: PubSub.subscribe(saves), recheck: Duration.infinity }
  return make({ name: "memory", save, get, lag, reset, list, watch })
})

/**
 * Checkpoints in memory, for tests and prototypes.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<CheckpointStore, never, EventStore> = Layer.effect(CheckpointStore, makeMemory)
