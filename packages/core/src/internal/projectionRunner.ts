import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import { CheckpointConflictError, type CheckpointError, CheckpointStore } from "../CheckpointStore.js"
import {
  type DeadLetter,
  type DeadLetterError,
  DeadLetterNotFoundError,
  DeadLetterQueue,
  type Failure
} from "../DeadLetterQueue.js"
import { describeCause, type EventStoreError, type InvalidEventError, type ReadError } from "../Errors.js"
import * as EventMetadata from "../EventMetadata.js"
import { EventStore, type Service as EventStoreService, type RecordedEvent, type StoredEvent } from "../EventStore.js"
import {
  defaultRetry,
  type Projection,
  ProjectionError,
  ProjectionRuntime,
  ProjectionStoppedError,
  type RebuildProgress,
  type Requirements,
  type Runner,
  type RunOptions,
  type RuntimeService,
  type Status
} from "../Projection.js"
import type * as Subscription from "../Subscription.js"
import { Attributes, measureProjectionBatch, metricsEnabled, projectionMetrics, Spans } from "../Telemetry.js"

export type RunError =
  | ProjectionStoppedError
  | ProjectionError
  | CheckpointError
  | CheckpointConflictError
  | DeadLetterError
  | InvalidEventError
  | EventStoreError

export type RetryDeadLetterError = ProjectionError | DeadLetterError | DeadLetterNotFoundError | ReadError

/** Failures after which a runner starts over from its checkpoint; anything else ends it. */
const restartable = (error: RunError): boolean =>
  error._tag !== "ProjectionStoppedError" && error._tag !== "InvalidEventError"

const defaultRestart: Schedule.Schedule<unknown, unknown> = Schedule.exponential("200 millis").pipe(
  Schedule.either(Schedule.spaced("10 seconds"))
)

type Message = Subscription.Message | { readonly _tag: "Flush" }

/** A handler failure, with what the dead-letter queue records of it. */
const describeFailure = (error: unknown, attempts: number): Failure => {
  const failure = error instanceof HandlerDefect ? error.defect : error
  return {
    // "Failed to execute statement" says little: the causes say why (a driver error, its detail).
    message: describeCause(failure),
    stacktrace: stackOf(failure),
    attempts
  }
}

/** The stack of an Error; reading it may throw like its message (see `describeCause`). */
const stackOf = (failure: unknown): string | null => {
  try {
    return failure instanceof Error ? (failure.stack ?? null) : null
  } catch {
    return null
  }
}

/** A handler that died (threw) is a failure like any other: retried, then dead-lettered. */
class HandlerDefect {
  constructor(readonly defect: unknown) {}
}

class HandlerFailed {
  constructor(readonly failure: Failure) {}
}

/** The stored form of a decoded event, for the dead-letter queue. */
const toStored = (store: EventStoreService, recorded: RecordedEvent): StoredEvent => {
  const { event, ...envelope } = recorded
  const encoded = store.registry.encode(event)
  return { ...envelope, payload: Either.isRight(encoded) ? encoded.right : event }
}

/** Updates a status; a change of state is dated by the fiber's clock. */
const setStatus = (ref: Ref.Ref<Status>, patch: Partial<Status>) =>
  Effect.clockWith((clock) =>
    Ref.update(ref, (status) => ({
      ...status,
      ...patch,
      ...(patch.state !== undefined && patch.state !== status.state
        ? { since: new Date(clock.unsafeCurrentTimeMillis()) }
        : {})
    }))
  )

/**
 * One attempt budget of one handler on one event: each attempt in its own nested
 * transaction (a savepoint), so that a failed attempt leaves nothing behind.
 */
const attempt = <R>(
  runtime: RuntimeService,
  handle: (event: RecordedEvent) => Effect.Effect<void, unknown, R>,
  event: RecordedEvent,
  retry: Schedule.Schedule<unknown, unknown>
): Effect.Effect<Either.Either<void, Failure>, never, R> =>
  Effect.gen(function* () {
    let attempts = 0
    // What the handler appends is caused by the event, in its correlation.
    const once = runtime.transaction(
      Effect.suspend(() => {
        attempts++
        return handle(event)
      }).pipe(
        Effect.catchAllDefect((defect) => Effect.fail(new HandlerDefect(defect))),
        EventMetadata.causedBy(event)
      )
    )
    const result = yield* Effect.either(Effect.retry(once, retry))
    return Either.mapLeft(result, (error) => describeFailure(error, attempts))
  })

function* recordedOf(messages: ReadonlyArray<Message>): Generator<RecordedEvent> {
  for (const message of messages) if (message._tag === "Event") yield message.event
}

const runWith = <R>(
  projection: Projection<R>,
  options: RunOptions,
  status: Ref.Ref<Status>
): Effect.Effect<never, RunError, R | Requirements> =>
  Effect.gen(function* () {
    const store = yield* EventStore
    const checkpoints = yield* CheckpointStore
    const deadLetters = yield* DeadLetterQueue
    const runtime = yield* ProjectionRuntime
    const retry = options.retry ?? defaultRetry
    const stopOnDeadLetter = options.onDeadLetter === "stop"
    const progressMillis = Duration.toMillis(options.progressInterval ?? "1 second")
    const name = projection.name

    const session = Effect.gen(function* () {
      yield* setStatus(status, { state: "standby", stall: null })
      const lease = yield* runtime.lock(name, { retry: options.takeover ?? Schedule.spaced("1 second") })
      const start = Option.match(yield* checkpoints.get(name), { onNone: () => 0n, onSome: (c) => c.position })
      yield* setStatus(status, { state: "active", position: start, lastError: null })
      yield* Effect.logInfo(`projection ${name}: active from position ${start}`)

      // Dead letters ahead of the checkpoint: when the runner handles one of these events
      // successfully (after a stop, or a rebuild), its dead letter is resolved.
      const open = new Set(
        (yield* deadLetters.list({ projection: name, status: ["failed", "retrying"], limit: 10_000 }))
          .filter((letter) => letter.globalPosition === null || letter.globalPosition > start)
          .map((letter) => letter.eventId)
      )

      // `saved` is the stored position (the fence of every save); `position` may run ahead
      // of it when only progress was seen and its save was deferred.
      let saved = start
      let position = start
      let savedAt = yield* Clock.currentTimeMillis

      // While metrics are on, the lag is sampled beside the batches (a stuck handler shows as a
      // growing lag). The store counts the events behind (on PostgreSQL, in time growing
      // with them), so a sample waits at least ten times as long as the last one took.
      if (yield* FiberRef.get(metricsEnabled)) {
        const lagGauge = Metric.tagged(projectionMetrics.lag, Attributes.projection, name)
        const lagOptions = {
          eventTypes: projection.eventTypes,
          ...(projection.tenantId === undefined ? {} : { tenantId: projection.tenantId }),
          ...(projection.aggregateTypes === undefined ? {} : { aggregateTypes: projection.aggregateTypes })
        }
        const sampleLag = checkpoints.lag(name, lagOptions).pipe(
          Effect.timed,
          Effect.flatMap(([took, lag]) =>
            Effect.as(Metric.set(lagGauge, lag.eventsBehind), Math.max(progressMillis, 10 * Duration.toMillis(took)))
          ),
          Effect.catchAll((error) =>
            Effect.as(Effect.logDebug(`projection ${name}: its lag could not be measured`, error), progressMillis)
          )
        )
        yield* Effect.forkScoped(
          Effect.repeat(sampleLag, Schedule.identity<number>().pipe(Schedule.addDelay(Duration.millis)))
        )
      }

      const save = (input: {
        readonly position: bigint
        readonly last: RecordedEvent | undefined
        readonly processed: number
      }) =>
        checkpoints.save(name, {
          position: input.position,
          processed: input.processed,
          expected: saved,
          ...(input.last === undefined ? {} : { eventId: input.last.eventId, eventType: input.last.eventType })
        })

      const handleBatch = (messages: ReadonlyArray<Message>) =>
        Effect.gen(function* () {
          let next = position
          let last: RecordedEvent | undefined
          let handled = 0
          let dead = 0
          let stop: ProjectionStoppedError | undefined
          for (const message of messages) {
            if (message._tag === "Event") {
              const event = message.event
              const handle = projection.handlers.get(event.eventType)
              if (handle !== undefined) {
                const result = yield* attempt(runtime, handle, event, retry)
                if (Either.isLeft(result)) {
                  yield* deadLetters.add(name, toStored(store, event), result.left)
                  dead++
                  yield* Effect.logWarning(
                    `projection ${name}: event ${event.eventId} (${event.eventType}, position ${event.globalPosition}) dead-lettered after ${result.left.attempts} attempts: ${result.left.message}`
                  )
                  if (stopOnDeadLetter) {
                    stop = new ProjectionStoppedError({
                      projection: name,
                      eventId: event.eventId,
                      eventType: event.eventType,
                      globalPosition: event.globalPosition,
                      reason: result.left.message
                    })
                    break
                  }
                } else {
                  handled++
                  if (open.delete(event.eventId)) {
                    yield* deadLetters.resolveEvent(name, event.eventId, { by: "runner" })
                  }
                }
              }
              next = event.globalPosition
              last = event
            } else if (message._tag === "Undecodable") {
              const stored = message.stored
              // Decoding is deterministic: no retry can help, the event goes to the queue.
              yield* deadLetters.add(name, stored, { message: message.error.message, attempts: 1 })
              dead++
              yield* Effect.logWarning(
                `projection ${name}: event ${stored.eventId} at position ${stored.globalPosition} does not decode: ${message.error.message}`
              )
              if (stopOnDeadLetter) {
                stop = new ProjectionStoppedError({
                  projection: name,
                  eventId: stored.eventId,
                  eventType: stored.eventType,
                  globalPosition: stored.globalPosition,
                  reason: message.error.message
                })
                break
              }
              next = stored.globalPosition
            } else if (message._tag === "Progress" && message.position > next) {
              next = message.position
            }
          }
          if (next > saved) {
            // A runner that lost its lock commits nothing more (the conditional save is the last fence).
            yield* lease.held
            yield* save({ position: next, last, processed: handled })
          }
          return { next, handled, dead, stop }
        }).pipe(
          runtime.transaction,
          Effect.withSpan(Spans.projectionBatch, {
            attributes: { [Attributes.projection]: name, [Attributes.eventCount]: messages.length },
            // The batch continues the traces of the appends that stored its events.
            links: EventMetadata.spanLinks(recordedOf(messages))
          })
        )

      const process = (messages: ReadonlyArray<Message>) =>
        Effect.gen(function* () {
          let stall: Subscription.Stall | undefined
          for (const m of messages) if (m._tag === "Stalled") stall = m.stall
          const moving = messages.some((m) => m._tag === "Event" || m._tag === "Undecodable" || m._tag === "Progress")
          if (stall !== undefined && !moving) {
            yield* setStatus(status, { stall })
          } else if (moving) {
            yield* setStatus(status, { stall: null })
          }
          const now = yield* Clock.currentTimeMillis
          if (messages.some((m) => m._tag === "Flush")) {
            // An idle runner still notices a reset (a rebuild) or another runner's progress.
            const stored = Option.match(yield* checkpoints.get(name), { onNone: () => 0n, onSome: (c) => c.position })
            if (stored !== saved) {
              return yield* new CheckpointConflictError({ name, expected: saved, actual: stored })
            }
          }
          const work = messages.some((m) => m._tag === "Event" || m._tag === "Undecodable")
          if (!work) {
            // Only progress: record it, at most every progressInterval (a flush tick saves the rest).
            for (const m of messages) if (m._tag === "Progress" && m.position > position) position = m.position
            if (position > saved && now - savedAt >= progressMillis) {
              yield* save({ position, last: undefined, processed: 0 })
              saved = position
              savedAt = now
              yield* setStatus(status, { position })
            }
            return
          }
          const result = yield* handleBatch(messages)
          yield* measureProjectionBatch(name, result.handled, result.dead)
          if (result.next > saved) {
            saved = result.next
            savedAt = now
          }
          position = result.next
          yield* Ref.update(status, (s) => ({
            ...s,
            position: saved,
            handled: s.handled + result.handled,
            deadLettered: s.deadLettered + result.dead
          }))
          if (result.stop !== undefined) return yield* result.stop
        })

      const messages: Stream.Stream<Message, InvalidEventError | EventStoreError> = store
        .subscribeMessages({
          after: start,
          name,
          eventTypes: projection.eventTypes,
          ...(projection.tenantId === undefined ? {} : { tenantId: projection.tenantId }),
          ...(projection.aggregateTypes === undefined ? {} : { aggregateTypes: projection.aggregateTypes }),
          batchSize: options.batchSize ?? 500
        })
        .pipe(
          Stream.merge(Stream.as(Stream.tick(Duration.millis(progressMillis)), { _tag: "Flush" } as const), {
            haltStrategy: "left"
          })
        )
      const follow = Stream.runForEachChunk(messages, (chunk) => process([...chunk]))
      return yield* Effect.raceFirst(
        Effect.zipRight(follow, Effect.never),
        Effect.mapError(lease.lost, (error): RunError => error)
      )
    }).pipe(Effect.scoped)

    const supervised: Effect.Effect<never, RunError, R> = session.pipe(
      // A commit that fails is a defect of @effect/sql: for a runner it is a failure to restart from.
      Effect.catchAllDefect((defect) =>
        Effect.fail(
          new ProjectionError({
            projection: name,
            method: "run",
            message: `unexpected failure: ${Cause.pretty(Cause.die(defect))}`,
            cause: defect
          })
        )
      ),
      Effect.tapError((error) =>
        Effect.zipRight(
          setStatus(status, { state: restartable(error) ? "restarting" : "stopped", lastError: error.message }),
          Effect.logWarning(`projection ${name}: ${error.message}`)
        )
      ),
      Effect.retry({ schedule: options.restart ?? defaultRestart, while: restartable })
    )
    return yield* supervised.pipe(Effect.annotateLogs("projection", name))
  })

const initialStatus = (name: string): Effect.Effect<Ref.Ref<Status>> =>
  Effect.flatMap(Clock.currentTimeMillis, (now) =>
    Ref.make<Status>({
      projection: name,
      state: "starting",
      position: 0n,
      handled: 0,
      deadLettered: 0,
      lastError: null,
      stall: null,
      since: new Date(now)
    })
  )

export const run = <R>(projection: Projection<R>, options: RunOptions = {}) =>
  Effect.flatMap(initialStatus(projection.name), (status) => runWith(projection, options, status))

export const start = <R>(projection: Projection<R>, options: RunOptions = {}) =>
  Effect.gen(function* () {
    const status = yield* initialStatus(projection.name)
    const fiber = yield* Effect.forkScoped(
      runWith(projection, options, status).pipe(
        Effect.onInterrupt(() => setStatus(status, { state: "stopped", stall: null }))
      )
    )
    return { status: Ref.get(status), join: Fiber.join(fiber) } satisfies Runner
  })

const resetWith = <R>(projection: Projection<R>, method: string) =>
  Effect.gen(function* () {
    const checkpoints = yield* CheckpointStore
    const runtime = yield* ProjectionRuntime
    const name = projection.name
    // The checkpoint first: its row lock orders this reset after any batch in flight,
    // whose conditional save then fails and rolls back its writes. A batch that wrote its
    // read-model rows before the reset took the checkpoint waits for the checkpoint while
    // the reset waits for those rows (TRUNCATE, DELETE): PostgreSQL ends that deadlock by
    // failing one of them. The batch is retried by its runner; the reset, rolled back as a
    // whole, is retried here.
    yield* checkpoints
      .reset(name)
      .pipe(
        Effect.zipRight(
          Effect.mapError(
            projection.reset,
            (cause) => new ProjectionError({ projection: name, method, message: `reset failed: ${cause}`, cause })
          )
        ),
        runtime.transaction,
        Effect.retry(resetRetry)
      )
  })

/** Retries of a reset whose transaction failed (a deadlock with a batch in flight): ~0.75 s in all. */
const resetRetry = Schedule.exponential("50 millis").pipe(Schedule.intersect(Schedule.recurs(4)))

export const reset = <R>(projection: Projection<R>) =>
  resetWith(projection, "reset").pipe(
    Effect.withSpan(Spans.projectionReset, { attributes: { [Attributes.projection]: projection.name } })
  )

export const rebuild = <R>(
  projection: Projection<R>,
  options: RunOptions & {
    readonly onProgress?: (progress: RebuildProgress) => Effect.Effect<void>
    readonly reportInterval?: Duration.DurationInput
  } = {}
) =>
  Effect.gen(function* () {
    const checkpoints = yield* CheckpointStore
    const name = projection.name
    const started = yield* Clock.currentTimeMillis

    yield* resetWith(projection, "rebuild")
    const target = (yield* checkpoints.lag(name)).headPosition
    yield* Effect.logInfo(`projection ${name}: rebuilding up to position ${target}`)

    const report = Effect.gen(function* () {
      const checkpoint = yield* checkpoints.get(name)
      const position = Option.match(checkpoint, { onNone: () => 0n, onSome: (c) => c.position })
      const progress: RebuildProgress = {
        projection: name,
        position,
        target,
        eventsProcessed: Option.match(checkpoint, { onNone: () => 0n, onSome: (c) => c.eventsProcessed }),
        elapsedMillis: (yield* Clock.currentTimeMillis) - started,
        done: position >= target
      }
      if (options.onProgress !== undefined) yield* options.onProgress(progress)
      yield* Effect.logInfo(
        `projection ${name}: rebuild at ${position} of ${target} (${progress.eventsProcessed} events)`
      )
      return progress
    })
    const monitor = report.pipe(
      Effect.repeat({
        schedule: Schedule.identity<RebuildProgress>().pipe(
          Schedule.zipLeft(Schedule.spaced(options.reportInterval ?? "1 second"))
        ),
        until: (progress) => progress.done
      })
    )
    // Whoever holds the lock replays: this runner, or one already running elsewhere.
    return yield* Effect.raceFirst(
      monitor,
      Effect.flatMap(initialStatus(name), (status) => runWith(projection, options, status))
    )
  }).pipe(Effect.withSpan(Spans.projectionRebuild, { attributes: { [Attributes.projection]: projection.name } }))

export const retryDeadLetter = <R>(
  projection: Projection<R>,
  id: bigint,
  options: Pick<RunOptions, "retry"> = {}
): Effect.Effect<DeadLetter, RetryDeadLetterError, R | Requirements> =>
  Effect.gen(function* () {
    const store = yield* EventStore
    const deadLetters = yield* DeadLetterQueue
    const runtime = yield* ProjectionRuntime
    const name = projection.name
    const existing = yield* deadLetters.get(id)
    if (Option.isNone(existing)) return yield* new DeadLetterNotFoundError({ id })
    if (existing.value.projection !== name) {
      return yield* new ProjectionError({
        projection: name,
        method: "retryDeadLetter",
        message: `dead letter ${id} belongs to projection ${existing.value.projection}`
      })
    }
    const letter = yield* deadLetters.markRetrying(id)
    const fail = (failure: Failure) => deadLetters.recordFailure(id, failure)
    // The log is the source of truth: the event is read again, decoded by today's schemas.
    const found =
      letter.globalPosition === null
        ? Option.none<RecordedEvent>()
        : yield* Stream.runHead(store.readAll({ after: letter.globalPosition - 1n, limit: 1 })).pipe(
            Effect.catchTags({
              EventDecodeError: () => Effect.succeed(Option.none<RecordedEvent>()),
              UnknownEventTypeError: () => Effect.succeed(Option.none<RecordedEvent>())
            })
          )
    if (Option.isNone(found) || found.value.eventId !== letter.eventId) {
      return yield* fail({ message: `event ${letter.eventId} cannot be read or decoded from the log`, attempts: 1 })
    }
    const event = found.value
    const handle = projection.handlers.get(event.eventType)
    if (handle === undefined) {
      return yield* fail({ message: `projection ${name} has no handler for ${event.eventType}`, attempts: 1 })
    }
    const outcome = yield* Effect.gen(function* () {
      const result = yield* attempt(runtime, handle, event, options.retry ?? defaultRetry)
      // Failing the transaction rolls the attempt back; the failure is recorded after it.
      if (Either.isLeft(result)) return yield* Effect.fail(new HandlerFailed(result.left))
      return yield* deadLetters.resolve(id, { by: "retry" })
    }).pipe(runtime.transaction, Effect.either)
    if (Either.isRight(outcome)) return outcome.right
    const error = outcome.left
    if (error instanceof HandlerFailed) return yield* fail(error.failure)
    return yield* error
  }).pipe(
    Effect.withSpan(Spans.deadLetterRetry, {
      attributes: { [Attributes.projection]: projection.name, [Attributes.deadLetterId]: String(id) }
    })
  )
