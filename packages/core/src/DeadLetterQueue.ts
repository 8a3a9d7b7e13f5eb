/**
 * Events a projection could not handle after its retries. A dead letter names the
 * event (id, type, global position), keeps its envelope and the last error, and is
 * `failed` until it is retried successfully or resolved by hand. There is one
 * dead letter per (event, projection): a new failure updates it.
 *
 * Retrying runs the projection's handler again: see `Projection.retryDeadLetter`,
 * which runs the handler and the resolution in one transaction.
 *
 * One contract, a memory layer here and a PostgreSQL layer (on the spec's
 * `dead_letter_queue` table) in `@eventfold/pg`.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Ref from "effect/Ref"
import * as Schema from "effect/Schema"
import type { StoredEvent } from "./EventStore.js"
import { Attributes, Spans } from "./Telemetry.js"

/**
 * @since 0.1.0
 * @category models
 */
export type Status = "failed" | "retrying" | "resolved"

/**
 * @since 0.1.0
 * @category models
 */
export interface DeadLetter {
  readonly id: bigint
  readonly projection: string
  readonly eventId: string
  readonly eventType: string
  /** Where the event is in the log; null for rows written by other tools. */
  readonly globalPosition: bigint | null
  /** The event's envelope and payload, as JSON (see {@link eventDataJson}: the payload may be cut short). */
  readonly eventData: unknown
  readonly errorMessage: string
  readonly errorStacktrace: string | null
  /** Handler attempts made, over all failures. */
  readonly retryCount: number
  readonly firstFailedAt: Date
  readonly lastFailedAt: Date
  readonly status: Status
  readonly resolvedAt: Date | null
  readonly resolvedBy: string | null
}

/**
 * What failed, and how often it was tried.
 *
 * @since 0.1.0
 * @category models
 */
export interface Failure {
  readonly message: string
  readonly stacktrace?: string | null
  /** Attempts made in this round. */
  readonly attempts: number
}

/**
 * @since 0.1.0
 * @category models
 */
export interface ListOptions {
  readonly projection?: string
  readonly status?: Status | ReadonlyArray<Status>
  /** At most this many, oldest first; default 100. */
  readonly limit?: number
  /** Only ids greater than this (paging). */
  readonly afterId?: bigint
}

/**
 * The queue itself failed (a SQL error). The cause is kept.
 *
 * @since 0.1.0
 * @category errors
 */
export class DeadLetterError extends Schema.TaggedError<DeadLetterError>()("DeadLetterError", {
  method: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * @since 0.1.0
 * @category errors
 */
export class DeadLetterNotFoundError extends Schema.TaggedError<DeadLetterNotFoundError>()("DeadLetterNotFoundError", {
  id: Schema.BigIntFromSelf
}) {
  override get message(): string {
    return `dead letter ${this.id} does not exist`
  }
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Records a failure of `projection` on `event` (upsert: a repeated failure updates the row and sets it `failed`). */
  readonly add: (projection: string, event: StoredEvent, failure: Failure) => Effect.Effect<DeadLetter, DeadLetterError>
  readonly list: (options?: ListOptions) => Effect.Effect<ReadonlyArray<DeadLetter>, DeadLetterError>
  readonly get: (id: bigint) => Effect.Effect<Option.Option<DeadLetter>, DeadLetterError>
  /** Marks a dead letter handled (by a retry or by hand). */
  readonly resolve: (
    id: bigint,
    options?: { readonly by?: string }
  ) => Effect.Effect<DeadLetter, DeadLetterError | DeadLetterNotFoundError>
  /** Resolves the open dead letter of `projection` on `eventId`, if any (a later run handled the event). */
  readonly resolveEvent: (
    projection: string,
    eventId: string,
    options?: { readonly by?: string }
  ) => Effect.Effect<boolean, DeadLetterError>
  /** Marks a dead letter as being retried. */
  readonly markRetrying: (id: bigint) => Effect.Effect<DeadLetter, DeadLetterError | DeadLetterNotFoundError>
  /** Records that a retry failed: back to `failed`, with the new error and attempts. */
  readonly recordFailure: (
    id: bigint,
    failure: Failure
  ) => Effect.Effect<DeadLetter, DeadLetterError | DeadLetterNotFoundError>
}

/**
 * @since 0.1.0
 * @category models
 */
export class DeadLetterQueue extends Context.Tag("@eventfold/core/DeadLetterQueue")<DeadLetterQueue, Service>() {}

/**
 * The `event_data` stored for an event: its envelope and payload, as JSON.
 *
 * @since 0.1.0
 * @category utils
 */
export const envelope = (event: StoredEvent) => ({
  event_id: event.eventId,
  event_type: event.eventType,
  aggregate_id: event.aggregateId,
  aggregate_type: event.aggregateType,
  version: event.version,
  tenant_id: event.tenantId,
  actor_id: event.actorId,
  timestamp: event.timestamp.toISOString(),
  global_position: String(event.globalPosition),
  created_at: event.createdAt.toISOString(),
  payload: event.payload
})

/**
 * How deep a dead letter keeps an event's payload: deeper values are replaced by
 * `"…"`. Far below what `JSON.stringify` (a few thousand levels) and PostgreSQL's
 * jsonb (about ten thousand, with the default `max_stack_depth`) can take.
 *
 * @since 0.1.0
 * @category models
 */
export const maxPayloadDepth = 100

/**
 * How much of an event's payload a dead letter keeps, in characters of JSON; a
 * larger payload is kept as the first {@link payloadPreviewLength} characters of its
 * JSON, in `payload_preview`.
 *
 * @since 0.1.0
 * @category models
 */
export const maxPayloadLength = 1_000_000

/**
 * @since 0.1.0
 * @category models
 */
export const payloadPreviewLength = 4_096

/**
 * The `event_data` of a dead letter, as JSON text that every backend stores: the
 * {@link envelope}, whatever the payload. A payload nested deeper than
 * {@link maxPayloadDepth} is kept cut at that depth, one longer than
 * {@link maxPayloadLength} as the start of its JSON (`payload_preview`), one that is
 * not JSON at all (a bigint, a cycle) not at all; each time `payload_truncated` says
 * what was left out. The event's id, type and position are always there: dead-lettering
 * never fails because of what an event holds, and the event itself is intact in the log.
 *
 * @since 0.1.0
 * @category utils
 */
export const eventDataJson = (event: StoredEvent): string => {
  const { payload, ...identity } = envelope(event)
  let json: string
  let cut: boolean
  try {
    ;({ json, cut } = boundedJson(payload, maxPayloadDepth))
  } catch (error) {
    return JSON.stringify({
      ...identity,
      payload: null,
      payload_truncated: `the payload is not representable as JSON: ${error instanceof Error ? error.message : String(error)}`
    })
  }
  if (json.length > maxPayloadLength) {
    return JSON.stringify({
      ...identity,
      payload: null,
      payload_truncated: `the payload's JSON is ${json.length} characters long${cut ? ` (cut at depth ${maxPayloadDepth})` : ""}; payload_preview holds its first ${payloadPreviewLength}`,
      payload_preview: wellFormedPrefix(json, payloadPreviewLength)
    })
  }
  const data = `{${JSON.stringify(identity).slice(1, -1)},"payload":${json}`
  return cut
    ? `${data},"payload_truncated":${JSON.stringify(`the payload is nested deeper than ${maxPayloadDepth} levels: deeper values are replaced by "…"`)}}`
    : `${data}}`
}

/**
 * `JSON.stringify` of `value` with the values below `maxDepth` replaced by `"…"`, so
 * that its recursion stays shallow whatever the input. A replacer sees its holder as
 * `this`: each object's depth is its holder's plus one.
 */
const boundedJson = (value: unknown, maxDepth: number): { readonly json: string; readonly cut: boolean } => {
  const depths = new WeakMap<object, number>()
  let cut = false
  const json = JSON.stringify(value, function (this: object, _key: string, inner: unknown) {
    if (typeof inner !== "object" || inner === null) return inner
    const depth = (depths.get(this) ?? 0) + 1
    if (depth > maxDepth) {
      cut = true
      return "…"
    }
    depths.set(inner, depth)
    return inner
  })
  // `undefined` (a payload that is a function, say) is no JSON: stored as null.
  return { json: json ?? "null", cut }
}

/** The first `length` characters of `text`, without a lone half of a surrogate pair at the end (jsonb rejects it). */
const wellFormedPrefix = (text: string, length: number): string => {
  const prefix = text.slice(0, length)
  const last = prefix.charCodeAt(prefix.length - 1)
  return last >= 0xd800 && last <= 0xdbff ? prefix.slice(0, -1) : prefix
}

/**
 * Wraps an implementation with spans, once for every backend.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (backend: { readonly name: string } & Service): Service => {
  const attributes = (extra: Record<string, unknown> = {}) => ({ [Attributes.backend]: backend.name, ...extra })
  return DeadLetterQueue.of({
    add: (projection, event, failure) =>
      backend.add(projection, event, failure).pipe(
        Effect.withSpan(Spans.deadLetterAdd, {
          attributes: attributes({
            [Attributes.projection]: projection,
            [Attributes.eventTypes]: event.eventType,
            [Attributes.position]: String(event.globalPosition)
          })
        })
      ),
    list: (options) =>
      backend.list(options).pipe(
        Effect.withSpan(Spans.deadLetterList, {
          attributes: attributes(
            options?.projection === undefined ? {} : { [Attributes.projection]: options.projection }
          )
        })
      ),
    get: (id) =>
      backend
        .get(id)
        .pipe(
          Effect.withSpan(Spans.deadLetterGet, { attributes: attributes({ [Attributes.deadLetterId]: String(id) }) })
        ),
    resolve: (id, options) =>
      backend.resolve(id, options).pipe(
        Effect.withSpan(Spans.deadLetterResolve, {
          attributes: attributes({ [Attributes.deadLetterId]: String(id) })
        })
      ),
    resolveEvent: (projection, eventId, options) =>
      backend
        .resolveEvent(projection, eventId, options)
        .pipe(
          Effect.withSpan(Spans.deadLetterResolve, { attributes: attributes({ [Attributes.projection]: projection }) })
        ),
    markRetrying: (id) =>
      backend
        .markRetrying(id)
        .pipe(
          Effect.withSpan(Spans.deadLetterRetry, { attributes: attributes({ [Attributes.deadLetterId]: String(id) }) })
        ),
    recordFailure: (id, failure) =>
      backend
        .recordFailure(id, failure)
        .pipe(
          Effect.withSpan(Spans.deadLetterRetry, { attributes: attributes({ [Attributes.deadLetterId]: String(id) }) })
        )
  })
}

/**
 * A dead-letter queue kept in memory, for tests.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory: Effect.Effect<Service> = Effect.gen(function* () {
  interface State {
    readonly nextId: bigint
    readonly letters: Map<bigint, DeadLetter>
  }
  const ref = yield* Ref.make<State>({ nextId: 1n, letters: new Map() })

  const update = (
    id: bigint,
    f: (letter: DeadLetter, now: Date) => DeadLetter
  ): Effect.Effect<DeadLetter, DeadLetterNotFoundError> =>
    Effect.clockWith((clock) =>
      Ref.modify(ref, (state): readonly [Effect.Effect<DeadLetter, DeadLetterNotFoundError>, State] => {
        const letter = state.letters.get(id)
        if (letter === undefined) return [Effect.fail(new DeadLetterNotFoundError({ id })), state] as const
        const next = f(letter, new Date(clock.unsafeCurrentTimeMillis()))
        return [Effect.succeed(next), { ...state, letters: new Map(state.letters).set(id, next) }] as const
      }).pipe(Effect.flatten)
    )

  // Times come from the fiber's clock, as the event store's do: a TestClock moves them all.
  const add: Service["add"] = (projection, event, failure) =>
    Effect.clockWith((clock) =>
      Ref.modify(ref, (state) => {
        const now = new Date(clock.unsafeCurrentTimeMillis())
        const existing = [...state.letters.values()].find(
          (l) => l.projection === projection && l.eventId === event.eventId
        )
        const letter: DeadLetter = {
          id: existing?.id ?? state.nextId,
          projection,
          eventId: event.eventId,
          eventType: event.eventType,
          globalPosition: event.globalPosition,
          // What PostgreSQL stores and hands back, for the same input.
          eventData: JSON.parse(eventDataJson(event)),
          errorMessage: failure.message,
          errorStacktrace: failure.stacktrace ?? null,
          retryCount: (existing?.retryCount ?? 0) + failure.attempts,
          firstFailedAt: existing?.firstFailedAt ?? now,
          lastFailedAt: now,
          status: "failed",
          resolvedAt: null,
          resolvedBy: null
        }
        return [
          letter,
          {
            nextId: existing === undefined ? state.nextId + 1n : state.nextId,
            letters: new Map(state.letters).set(letter.id, letter)
          }
        ] as const
      })
    )

  const list: Service["list"] = (options) =>
    Effect.map(Ref.get(ref), (state) => {
      const statuses =
        options?.status === undefined ? undefined : new Set<Status>([options.status].flat() as Array<Status>)
      return [...state.letters.values()]
        .filter(
          (l) =>
            (options?.projection === undefined || l.projection === options.projection) &&
            (statuses === undefined || statuses.has(l.status)) &&
            (options?.afterId === undefined || l.id > options.afterId)
        )
        .sort((a, b) => (a.id < b.id ? -1 : 1))
        .slice(0, options?.limit ?? 100)
    })

  const get: Service["get"] = (id) => Effect.map(Ref.get(ref), (state) => Option.fromNullable(state.letters.get(id)))

  const resolve: Service["resolve"] = (id, options) =>
    update(id, (letter, now) => ({ ...letter, status: "resolved", resolvedAt: now, resolvedBy: options?.by ?? null }))

  const resolveEvent: Service["resolveEvent"] = (projection, eventId, options) =>
    Effect.clockWith((clock) =>
      Ref.modify(ref, (state) => {
        const open = [...state.letters.values()].find(
          (l) => l.projection === projection && l.eventId === eventId && l.status !== "resolved"
        )
        if (open === undefined) return [false, state] as const
        const resolved: DeadLetter = {
          ...open,
          status: "resolved",
          resolvedAt: new Date(clock.unsafeCurrentTimeMillis()),
          resolvedBy: options?.by ?? null
        }
        return [true, { ...state, letters: new Map(state.letters).set(open.id, resolved) }] as const
      })
    )

  const markRetrying: Service["markRetrying"] = (id) => update(id, (letter) => ({ ...letter, status: "retrying" }))

  const recordFailure: Service["recordFailure"] = (id, failure) =>
    update(id, (letter, now) => ({
      ...letter,
      status: "failed",
      errorMessage: failure.message,
      errorStacktrace: failure.stacktrace ?? null,
      retryCount: letter.retryCount + failure.attempts,
      lastFailedAt: now
    }))

  return make({ name: "memory", add, list, get, resolve, resolveEvent, markRetrying, recordFailure })
})

/**
 * A dead-letter queue in memory, for tests and prototypes.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<DeadLetterQueue> = Layer.effect(DeadLetterQueue, makeMemory)
