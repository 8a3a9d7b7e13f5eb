/**
 * The event store: append to a stream under an expected version, read one stream,
 * read the global log. One contract, with a memory layer here and a PostgreSQL
 * layer in `@eventfold/pg`; the shared conformance suite holds both to it.
 *
 * @since 0.1.0
 */
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as FiberRef from "effect/FiberRef"
import * as Layer from "effect/Layer"
import * as Predicate from "effect/Predicate"
import * as Stream from "effect/Stream"
import type * as Tracer from "effect/Tracer"
import type {
  AppendError,
  ConcurrencyError,
  DuplicateEventError,
  EventDecodeError,
  ReadError,
  UnknownEventTypeError
} from "./Errors.js"
import { describeCause, EventStoreError, InvalidEventError, TenantMismatchError } from "./Errors.js"
import type * as Event from "./Event.js"
import * as EventMetadata from "./EventMetadata.js"
import type { EventRegistry } from "./EventRegistry.js"
import type { ExpectedVersion } from "./ExpectedVersion.js"
import * as JsonShape from "./internal/jsonShape.js"
import * as MemoryEventStore from "./internal/memoryEventStore.js"
import * as validate from "./internal/validate.js"
import type * as Subscription from "./Subscription.js"
import { Attributes, countReads, measureAppend, metricsEnabled, Spans, withHotSpan } from "./Telemetry.js"

/**
 * A stream: the events of one aggregate.
 *
 * @since 0.1.0
 * @category models
 */
export interface StreamId {
  readonly aggregateId: string
  readonly aggregateType: string
}

/**
 * An event to append, with the optional identity a caller may fix. A caller that
 * retries an append should fix `eventId`: re-appending the same ids at the same
 * versions is idempotent.
 *
 * @since 0.1.0
 * @category models
 */
export interface EventToAppend {
  readonly event: Event.Any
  /** UUID; generated when absent. */
  readonly eventId?: string
  /** When the event occurred in the domain; the clock's time when absent. */
  readonly timestamp?: Date
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AppendOptions {
  readonly expectedVersion: ExpectedVersion
  /** UUID of the tenant the events belong to. */
  readonly tenantId?: string | null
  /** Who caused the events (a user id, a service name). */
  readonly actorId?: string | null
  /**
   * The request the events belong to; default: the fiber's (see `EventMetadata`).
   * At most 255 characters.
   */
  readonly correlationId?: string | null
  /** The command or event that caused them; default: the fiber's (see `EventMetadata`). */
  readonly causationId?: string | null
}

/**
 * @since 0.1.0
 * @category models
 */
export interface AppendResult {
  /** The stream's version after the append. */
  readonly version: number
  /** Global position of the first event appended. */
  readonly firstPosition: bigint
  /** Global position of the last event appended. */
  readonly lastPosition: bigint
}

/**
 * A stored event with its envelope. Positions are exact integers (`bigint`).
 *
 * @since 0.1.0
 * @category models
 */
export interface RecordedEvent<E extends Event.Any = Event.Any> {
  readonly eventId: string
  readonly eventType: string
  readonly aggregateId: string
  readonly aggregateType: string
  readonly version: number
  readonly tenantId: string | null
  readonly actorId: string | null
  /** When the event occurred in the domain. */
  readonly timestamp: Date
  readonly globalPosition: bigint
  /** When the store wrote it. */
  readonly createdAt: Date
  /** The trace context, correlation and causation of the append that stored it. */
  readonly metadata: EventMetadata.EventMetadata
  readonly event: E
}

/**
 * A stored event before decoding: what a backend returns.
 *
 * @since 0.1.0
 * @category models
 */
export interface StoredEvent extends Omit<RecordedEvent, "event"> {
  /** Owned by this read: a backend never hands the same payload object to two reads. */
  readonly payload: unknown
}

/**
 * An event of a stream without its envelope: what folding it into a state needs.
 *
 * @since 0.1.0
 * @category models
 */
export interface StreamEvent<E extends Event.Any = Event.Any> {
  readonly version: number
  readonly event: E
}

/**
 * A stored event of a stream before decoding, without its envelope: what a backend
 * returns for {@link Service.readStreamEvents}.
 *
 * @since 0.1.0
 * @category models
 */
export interface StoredStreamEvent {
  readonly version: number
  readonly eventType: string
  /** Owned by this read, as {@link StoredEvent}'s. */
  readonly payload: unknown
}

/**
 * @since 0.1.0
 * @category models
 */
export type Direction = "forward" | "backward"

/**
 * @since 0.1.0
 * @category models
 */
export interface ReadStreamOptions {
  /** First version to read (inclusive); default 1. */
  readonly fromVersion?: number
  /** Last version to read (inclusive); default: the stream's end. */
  readonly toVersion?: number
  readonly direction?: Direction
}

/**
 * An entry of an `eventTypes` filter: an event type's name, or its definition (what
 * `Event.make` returns). A definition must be the one the store's registry holds for
 * its type; the store reads by its name either way.
 *
 * @since 0.1.0
 * @category models
 */
export type EventTypeFilter = string | Event.AnyEventType

/**
 * The events a read filtered by `eventTypes: ReadonlyArray<T>` yields: the events of
 * those definitions when every entry is a definition, any event otherwise (no filter,
 * or names among the entries).
 *
 * @example
 * ```ts
 * // Stream<RecordedEvent<typeof OrderPlaced.Type | typeof OrderShipped.Type>, ReadError>
 * store.readAll({ eventTypes: [OrderPlaced, OrderShipped] })
 * // Stream<RecordedEvent<Event.Any>, ReadError>
 * store.readAll({ eventTypes: [OrderPlaced, "OrderShipped"] })
 * ```
 *
 * @since 0.1.0
 * @category models
 */
export type SelectedEvent<T extends EventTypeFilter> = [T] extends [never]
  ? Event.Any
  : [T] extends [Event.AnyEventType]
    ? Extract<T, Event.AnyEventType>["Type"]
    : Event.Any

/**
 * Filters and bounds of a read of the global log. Every filter is applied by the
 * store (in SQL for PostgreSQL), never after loading.
 *
 * @since 0.1.0
 * @category models
 */
export interface ReadAllOptions<T extends EventTypeFilter = string> {
  /** Only events with a global position greater than this. */
  readonly after?: bigint
  /** Only events with a global position less than this. */
  readonly before?: bigint
  readonly direction?: Direction
  /** At most this many events. */
  readonly limit?: number
  readonly tenantId?: string
  readonly aggregateTypes?: ReadonlyArray<string>
  /** Only events of these types, by name or by definition (definitions only: the events are typed as theirs). */
  readonly eventTypes?: ReadonlyArray<T>
  /** Only events whose domain timestamp is at or after this. */
  readonly since?: Date
  /** Only events whose domain timestamp is before this. */
  readonly until?: Date
}

/**
 * An append after validation and encoding: what a backend receives.
 *
 * @since 0.1.0
 * @category models
 */
export interface PreparedAppend {
  readonly stream: StreamId
  readonly expectedVersion: ExpectedVersion
  readonly tenantId: string | null
  readonly actorId: string | null
  /** The same for every event of the append. */
  readonly metadata: EventMetadata.EventMetadata
  readonly events: ReadonlyArray<PreparedEvent>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface PreparedEvent {
  readonly eventId: string
  readonly eventType: string
  readonly timestamp: Date
  /** The encoded payload, serialized as JSON once for every backend. */
  readonly payloadJson: string
}

/**
 * What a storage backend implements. Validation, encoding, decoding and spans are
 * done once, by {@link make}, for every backend.
 *
 * @since 0.1.0
 * @category models
 */
export interface Backend {
  readonly name: string
  readonly append: (
    input: PreparedAppend
  ) => Effect.Effect<AppendResult, ConcurrencyError | DuplicateEventError | TenantMismatchError | EventStoreError>
  readonly readStream: (
    stream: StreamId,
    options: Required<Pick<ReadStreamOptions, "direction" | "fromVersion">> & Pick<ReadStreamOptions, "toVersion">
  ) => Stream.Stream<StoredEvent, EventStoreError>
  /** A stream forward from `fromVersion`, with version, type and payload only (the envelope is not read). */
  readonly readStreamEvents: (
    stream: StreamId,
    fromVersion: number
  ) => Stream.Stream<StoredStreamEvent, EventStoreError>
  readonly readAll: (
    options: ReadAllOptions & { readonly direction: Direction }
  ) => Stream.Stream<StoredEvent, EventStoreError>
  /** Catch up, then follow live; never past the settled horizon (see `Subscription`). */
  readonly subscribe: (
    options: Subscription.BackendOptions
  ) => Stream.Stream<Subscription.BackendMessage, EventStoreError>
  /**
   * The same storage bound to one tenant (a lower-case UUID): its reads see only that
   * tenant's rows and its appends write only them (PostgreSQL: SQL filters, and
   * row-level security keyed by a setting made for each transaction). Cheap: called
   * once per tenant scope.
   */
  readonly forTenant: (tenantId: string) => Backend
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Appends events to one stream, atomically, if the stream is at the expected version. */
  readonly append: (
    stream: StreamId,
    events: ReadonlyArray<EventToAppend>,
    options: AppendOptions
  ) => Effect.Effect<AppendResult, AppendError>
  /** The events of one stream in version order, decoded. */
  readonly readStream: (stream: StreamId, options?: ReadStreamOptions) => Stream.Stream<RecordedEvent, ReadError>
  /**
   * The events of one stream in version order, decoded, without their envelope: the
   * cheapest read for folding a stream into a state (aggregates). Failures name the
   * event as {@link Service.readStream}'s do.
   */
  readonly readStreamEvents: (
    stream: StreamId,
    options?: { readonly fromVersion?: number }
  ) => Stream.Stream<StreamEvent, ReadError>
  /**
   * The global log in position order, filtered, decoded, read in pages. Filtered by
   * event definitions (`eventTypes: [OrderPlaced]`), it yields those events typed as
   * theirs (see {@link SelectedEvent}); a definition the registry does not hold is an
   * `InvalidEventError`.
   */
  readonly readAll: <T extends EventTypeFilter = never>(
    options?: ReadAllOptions<T>
  ) => Stream.Stream<RecordedEvent<SelectedEvent<T>>, ReadError>
  /**
   * Catches up from `after`, then follows the log live, in `readAll`'s order. Never
   * skips an event committed late at a lower position and never delivers a rolled-back
   * one. Fails on an event that does not decode, naming it. Filtered by event
   * definitions, it yields those events typed as theirs, as `readAll` does.
   */
  readonly subscribe: <T extends EventTypeFilter = never>(
    options?: Subscription.Options<T>
  ) => Stream.Stream<RecordedEvent<SelectedEvent<T>>, ReadError>
  /**
   * {@link Service.subscribe} with its progress, stalls and undecodable events as
   * messages, for checkpointing consumers such as projection runners.
   */
  readonly subscribeMessages: <T extends EventTypeFilter = never>(
    options?: Subscription.Options<T>
  ) => Stream.Stream<Subscription.Message<RecordedEvent<SelectedEvent<T>>>, InvalidEventError | EventStoreError>
  readonly registry: EventRegistry
  /** The tenant scope of this store (a lower-case UUID), or null outside any. */
  readonly tenantId: string | null
  /**
   * This store in the scope of one tenant: `readStream`, `readStreamEvents`, `readAll`
   * and `subscribe` see only that tenant's events; `append` writes them for that tenant
   * (an append naming another tenant, or to another tenant's stream, fails with
   * `TenantMismatchError`). A read filter naming another tenant is an
   * `InvalidEventError`. On PostgreSQL, row-level security enforces the same for a
   * tenant-bound role (see `@eventfold/pg/PgEventStore`). A store already scoped to
   * another tenant refuses (`InvalidEventError`): leaving a scope takes the unscoped store.
   */
  readonly forTenant: (tenantId: string) => Effect.Effect<Service, InvalidEventError>
}

/**
 * @since 0.1.0
 * @category models
 */
export class EventStore extends Context.Tag("@eventfold/core/EventStore")<EventStore, Service>() {}

/**
 * Builds the service from a backend: validates and encodes appends, decodes reads
 * through the registry, and names every operation's span.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (backend: Backend, registry: EventRegistry): Service => makeIn(backend, registry, null)

/** Reads options and subscriptions of a tenant scope: the scope's tenant, or why the filter is refused. */
const scopeFilter = <O extends { readonly tenantId?: string }>(
  scope: string | null,
  options: O
): Either.Either<O, InvalidEventError> => {
  if (scope === null) return Either.right(options)
  const asked = options.tenantId
  if (asked !== undefined && (typeof asked !== "string" || asked.toLowerCase() !== scope)) {
    return Either.left(
      new InvalidEventError({ reason: `tenantId ${String(asked)} is outside this store's tenant scope (${scope})` })
    )
  }
  return Either.right({ ...options, tenantId: scope })
}

const makeIn = (backend: Backend, registry: EventRegistry, scope: string | null): Service => {
  // The hottest call of the library: a plain function with one span (no per-call stack
  // capture, as Effect.fn would do, and none at all when no tracer collects it), and
  // synchronous validation and encoding.
  const append = (stream: StreamId, events: ReadonlyArray<EventToAppend>, options: AppendOptions) =>
    withHotSpan(
      (now, measured, span, fiber): Effect.Effect<AppendResult, AppendError> => {
        const scoped = scope === null ? options : appendInScope(scope, stream, options)
        if (scoped instanceof TenantMismatchError) return Effect.fail(scoped)
        const causality = fiber.getFiberRef(EventMetadata.currentCausality)
        const prepared = prepareAppend(registry, stream, events, scoped, now, causality, span)
        if (Either.isLeft(prepared)) return Effect.fail(prepared.left)
        const appended = backend.append(prepared.right)
        return measured ? measureAppend(appended, backend.name, events.length) : appended
      },
      Spans.append,
      () => ({
        captureStackTrace: false,
        attributes: {
          [Attributes.backend]: backend.name,
          [Attributes.aggregateType]: stream?.aggregateType,
          [Attributes.aggregateId]: stream?.aggregateId,
          [Attributes.eventCount]: events.length,
          [Attributes.expectedVersion]:
            options.expectedVersion._tag === "Exact"
              ? String(options.expectedVersion.version)
              : options.expectedVersion._tag
        }
      })
    )

  const decodeChunk = (
    chunk: Chunk.Chunk<StoredEvent>
  ): Stream.Stream<RecordedEvent, UnknownEventTypeError | EventDecodeError> => {
    const decoded: Array<RecordedEvent> = []
    for (const stored of chunk) {
      const result = registry.decodeOwned(stored.eventType, stored.payload, stored)
      if (Either.isLeft(result)) {
        // Hand out what decoded before the bad event, then fail naming it: a reader
        // can resume after `globalPosition`.
        return Stream.concat(Stream.fromIterable(decoded), Stream.fail(result.left))
      }
      decoded.push(recorded(stored, result.right))
    }
    return Stream.fromChunk(Chunk.unsafeFromArray(decoded))
  }

  const decodeStream = (stored: Stream.Stream<StoredEvent, EventStoreError>) =>
    stored.pipe(Stream.chunks, Stream.flatMap(decodeChunk))

  /** The span of a read of one stream, whichever columns it reads. */
  const streamSpan = (stream: StreamId, fromVersion: number | undefined) =>
    Stream.withSpan(Spans.readStream, {
      attributes: {
        [Attributes.backend]: backend.name,
        [Attributes.aggregateType]: stream.aggregateType,
        [Attributes.aggregateId]: stream.aggregateId,
        [Attributes.fromVersion]: fromVersion ?? 1
      }
    })

  const readStream = (stream: StreamId, options?: ReadStreamOptions) =>
    Effect.gen(function* () {
      yield* validate.stream(stream)
      const fromVersion = options?.fromVersion ?? 1
      const toVersion = options?.toVersion
      if (!Number.isSafeInteger(fromVersion) || (toVersion !== undefined && !Number.isSafeInteger(toVersion))) {
        return yield* new InvalidEventError({ reason: "fromVersion and toVersion must be integers" })
      }
      const stored = backend.readStream(
        { aggregateId: stream.aggregateId.toLowerCase(), aggregateType: stream.aggregateType },
        {
          direction: options?.direction ?? "forward",
          fromVersion: validate.versionBound(fromVersion),
          ...(toVersion === undefined ? {} : { toVersion: validate.versionBound(toVersion) })
        }
      )
      return decodeStream(countReads(stored, yield* FiberRef.get(metricsEnabled), backend.name, "readStream"))
    }).pipe(Stream.unwrap, streamSpan(stream, options?.fromVersion))

  /**
   * Decodes a page of envelope-less events. A payload that does not decode is
   * explained from its full row (the id and position its error names), read then:
   * failures are rare, and the hot path reads only what folding needs.
   */
  const decodeStreamChunk =
    (stream: StreamId) =>
    (chunk: Chunk.Chunk<StoredStreamEvent>): Stream.Stream<StreamEvent, ReadError> => {
      const decoded = new Array<StreamEvent>(chunk.length)
      let i = 0
      for (const stored of chunk) {
        const result = registry.decodeOwned(stored.eventType, stored.payload, unnamed)
        if (Either.isLeft(result)) {
          const failure = backend
            .readStream(stream, { direction: "forward", fromVersion: stored.version, toVersion: stored.version })
            .pipe(
              Stream.runHead,
              Effect.flatMap((full): Effect.Effect<never, ReadError> => {
                if (full._tag === "None") return Effect.fail(result.left)
                const named = registry.decodeOwned(full.value.eventType, full.value.payload, full.value)
                return Effect.fail(Either.isLeft(named) ? named.left : result.left)
              })
            )
          return Stream.concat(Stream.fromIterable(decoded.slice(0, i)), Stream.fromEffect(failure))
        }
        decoded[i++] = { version: stored.version, event: result.right }
      }
      return Stream.fromChunk(Chunk.unsafeFromArray(decoded))
    }

  const readStreamEvents = (stream: StreamId, options?: { readonly fromVersion?: number }) =>
    Effect.gen(function* () {
      yield* validate.stream(stream)
      const fromVersion = options?.fromVersion ?? 1
      if (!Number.isSafeInteger(fromVersion)) {
        return yield* new InvalidEventError({ reason: "fromVersion must be an integer" })
      }
      const normalized = { aggregateId: stream.aggregateId.toLowerCase(), aggregateType: stream.aggregateType }
      const measured = yield* FiberRef.get(metricsEnabled)
      return countReads(
        backend.readStreamEvents(normalized, validate.versionBound(fromVersion)),
        measured,
        backend.name,
        "readStreamEvents"
      ).pipe(Stream.chunks, Stream.flatMap(decodeStreamChunk(normalized)))
    }).pipe(Stream.unwrap, streamSpan(stream, options?.fromVersion))

  const readAll = (options?: ReadAllOptions<EventTypeFilter>): Stream.Stream<RecordedEvent, ReadError> =>
    Effect.gen(function* () {
      const named = yield* namedEventTypes(registry, options ?? emptyReadAll)
      const normalized = yield* validate.readAllOptions(yield* scopeFilter(scope, named))
      return decodeStream(
        countReads(backend.readAll(normalized), yield* FiberRef.get(metricsEnabled), backend.name, "readAll")
      )
    }).pipe(
      Stream.unwrap,
      Stream.withSpan(Spans.readAll, {
        attributes: {
          [Attributes.backend]: backend.name,
          [Attributes.direction]: options?.direction ?? "forward",
          ...(options?.after === undefined ? {} : { [Attributes.fromPosition]: String(options.after) }),
          ...(options?.tenantId === undefined ? {} : { [Attributes.tenantId]: options.tenantId })
        }
      })
    )

  /** Counts the events a subscription delivers, while metrics are on when it starts. */
  const countSubscribed = <E>(messages: Stream.Stream<Subscription.BackendMessage, E>) =>
    Stream.unwrap(
      Effect.map(FiberRef.get(metricsEnabled), (measured) =>
        countReads(messages, measured, backend.name, "subscribe", countEvents)
      )
    )

  const subscribeMessages = (
    options?: Subscription.Options<EventTypeFilter>
  ): Stream.Stream<Subscription.Message, InvalidEventError | EventStoreError> =>
    Effect.map(
      Effect.flatMap(
        Effect.flatMap(namedEventTypes(registry, options ?? emptySubscribe), (named) => scopeFilter(scope, named)),
        validate.subscribeOptions
      ),
      (normalized) =>
        backend.subscribe(normalized).pipe(
          countSubscribed,
          Stream.map((message): Subscription.Message => {
            if (message._tag === "Stalled" && scope !== null) {
              // The horizon is the whole log's: a tenant scope learns that it is held back, and
              // for how long, but not what other tenants' sessions are running.
              return { _tag: "Stalled", stall: { ...message.stall, holders: message.stall.holders.map(anonymous) } }
            }
            if (message._tag !== "Event") return message
            const stored = message.event
            const result = registry.decodeOwned(stored.eventType, stored.payload, stored)
            if (Either.isLeft(result)) return { _tag: "Undecodable", stored, error: result.left }
            return { _tag: "Event", event: recorded(stored, result.right) }
          })
        )
    ).pipe(Stream.unwrap)

  const subscribe = (options?: Subscription.Options<EventTypeFilter>): Stream.Stream<RecordedEvent, ReadError> =>
    subscribeMessages(options).pipe(
      Stream.chunks,
      Stream.flatMap((chunk): Stream.Stream<RecordedEvent, ReadError> => {
        const events: Array<RecordedEvent> = []
        for (const message of chunk) {
          if (message._tag === "Event") events.push(message.event)
          // What decoded before the bad event is handed out first, as readAll does.
          else if (message._tag === "Undecodable") {
            return Stream.concat(Stream.fromIterable(events), Stream.fail(message.error))
          }
        }
        return Stream.fromChunk(Chunk.unsafeFromArray(events))
      })
    )

  const forTenant = (tenantId: string): Effect.Effect<Service, InvalidEventError> => {
    const invalid = validate.uuidError("tenantId", tenantId)
    if (invalid !== undefined) return Effect.fail(invalid)
    const tenant = tenantId.toLowerCase()
    if (scope === tenant) return Effect.succeed(service)
    if (scope !== null) {
      return Effect.fail(
        new InvalidEventError({ reason: `this store is scoped to tenant ${scope}; it cannot enter tenant ${tenant}` })
      )
    }
    return Effect.sync(() => makeIn(backend.forTenant(tenant), registry, tenant))
  }

  const service: Service = EventStore.of({
    append,
    readStream,
    readStreamEvents,
    // The reads filtered by definitions yield only events of those types, decoded by those very
    // definitions (namedEventTypes refuses any other): the narrowed types hold.
    readAll: readAll as Service["readAll"],
    subscribe: subscribe as Service["subscribe"],
    subscribeMessages: subscribeMessages as Service["subscribeMessages"],
    registry,
    tenantId: scope,
    forTenant
  })
  return service
}

/**
 * A read's options with its `eventTypes` as names. A definition must be the one the
 * registry decodes its type with: a read filtered by another (an older copy, a namesake)
 * would yield events of another shape than its type says.
 */
const namedEventTypes = <O extends { readonly eventTypes?: ReadonlyArray<EventTypeFilter> }>(
  registry: EventRegistry,
  options: O
): Either.Either<Omit<O, "eventTypes"> & { readonly eventTypes?: ReadonlyArray<string> }, InvalidEventError> => {
  const { eventTypes: entries, ...rest } = options
  if (entries === undefined) return Either.right(rest)
  const names = new Array<string>(entries.length)
  for (let i = 0; i < entries.length; i++) {
    const entry: unknown = entries[i]
    if (typeof entry === "string") {
      names[i] = entry
      continue
    }
    const type = Predicate.hasProperty(entry, "type") ? entry.type : undefined
    if (typeof type === "string" && registry.types.get(type) === entry) {
      names[i] = type
      continue
    }
    return Either.left(
      new InvalidEventError({
        reason:
          typeof type === "string"
            ? `eventTypes: the store's registry does not hold this definition of ${type}`
            : "eventTypes: each entry is an event type's name or its definition"
      })
    )
  }
  return Either.right({ ...rest, eventTypes: names })
}

/**
 * An append's options in a tenant scope: the scope's tenant when it names none, or the
 * error when it names another (an invalid id is left to the validation of the append).
 */
const appendInScope = (
  scope: string,
  stream: StreamId,
  options: AppendOptions
): AppendOptions | TenantMismatchError => {
  const asked = options.tenantId
  if (asked === undefined) return { ...options, tenantId: scope }
  if (typeof asked === "string" && asked.toLowerCase() === scope) return options
  if (asked !== null && validate.uuidError("tenantId", asked) !== undefined) return options
  return new TenantMismatchError({
    aggregateId: String(stream?.aggregateId).toLowerCase(),
    aggregateType: String(stream?.aggregateType),
    tenantId: asked === null ? null : asked.toLowerCase(),
    reason: "OutsideScope"
  })
}

/** A session holding readers back, as a tenant scope may see it. */
const anonymous = (holder: Subscription.Holder): Subscription.Holder => ({
  ...holder,
  query: null,
  applicationName: null
})

/** The events among a page of a subscription's messages. */
const countEvents = (chunk: Chunk.Chunk<Subscription.BackendMessage>): number => {
  let events = 0
  for (const message of chunk) if (message._tag === "Event") events++
  return events
}

const emptyReadAll: ReadAllOptions<EventTypeFilter> = {}
const emptySubscribe: Subscription.Options<EventTypeFilter> = {}

/** Errors of envelope-less reads are named after re-reading the event's row. */
const unnamed = { eventId: "", globalPosition: 0n }

/** The envelope of a stored event with its decoded event (built field by field: this runs per event read). */
const recorded = (stored: StoredEvent, event: Event.Any): RecordedEvent => ({
  eventId: stored.eventId,
  eventType: stored.eventType,
  aggregateId: stored.aggregateId,
  aggregateType: stored.aggregateType,
  version: stored.version,
  tenantId: stored.tenantId,
  actorId: stored.actorId,
  timestamp: stored.timestamp,
  globalPosition: stored.globalPosition,
  createdAt: stored.createdAt,
  metadata: stored.metadata,
  event
})

const prepareAppend = (
  registry: EventRegistry,
  stream: StreamId,
  events: ReadonlyArray<EventToAppend>,
  options: AppendOptions,
  now: number,
  causality: EventMetadata.Causality,
  span: Tracer.AnySpan | undefined
): Either.Either<PreparedAppend, InvalidEventError | UnknownEventTypeError> => {
  const invalid = validate.streamError(stream)
  if (invalid !== undefined) return Either.left(invalid)
  if (events.length === 0) return Either.left(new InvalidEventError({ reason: "append needs at least one event" }))
  const expected = options.expectedVersion
  if (expected?._tag === "Exact" && expected.version + events.length > validate.MAX_VERSION) {
    return Either.left(
      new InvalidEventError({
        reason: `versions end at ${validate.MAX_VERSION}: ${events.length} event(s) cannot follow version ${expected.version}`
      })
    )
  }
  const tenantId = options.tenantId ?? null
  const actorId = options.actorId ?? null
  const invalidOption =
    (tenantId === null ? undefined : validate.uuidError("tenantId", tenantId)) ??
    (actorId === null ? undefined : validate.textError("actorId", actorId))
  if (invalidOption !== undefined) return Either.left(invalidOption)
  const metadata = appendMetadata(options, causality, span)
  if (Either.isLeft(metadata)) return Either.left(metadata.left)
  const defaultTimestamp = new Date(now)
  const seen = new Set<string>()
  const prepared = new Array<PreparedEvent>(events.length)
  for (let i = 0; i < events.length; i++) {
    const item = events[i]!
    const payload = registry.encode(item.event)
    if (Either.isLeft(payload)) return Either.left(payload.left)
    const eventId = item.eventId === undefined ? crypto.randomUUID() : item.eventId.toLowerCase()
    const invalidId = item.eventId === undefined ? undefined : validate.uuidError("eventId", eventId)
    if (invalidId !== undefined) return Either.left(invalidId)
    if (seen.has(eventId)) {
      return Either.left(new InvalidEventError({ reason: `event id ${eventId} appears twice in one append` }))
    }
    seen.add(eventId)
    const timestamp = item.timestamp ?? defaultTimestamp
    const invalidTimestamp = validate.timestampError(`the timestamp of event ${eventId}`, timestamp)
    if (invalidTimestamp !== undefined) return Either.left(invalidTimestamp)
    const definition = registry.types.get(item.event._tag)
    const opaque = definition !== undefined && JsonShape.isOpaque(definition.payload.ast)
    const payloadJson = validate.payloadJson(item.event._tag, payload.right, opaque)
    if (Either.isLeft(payloadJson)) return Either.left(payloadJson.left)
    prepared[i] = { eventId, eventType: item.event._tag, timestamp, payloadJson: payloadJson.right }
  }
  return Either.right({
    stream: { aggregateId: stream.aggregateId.toLowerCase(), aggregateType: stream.aggregateType },
    expectedVersion: options.expectedVersion,
    tenantId: tenantId?.toLowerCase() ?? null,
    actorId,
    metadata: metadata.right,
    events: prepared
  })
}

/** The metadata of an append: its options' ids, else the fiber's, and the trace context of its span. */
const appendMetadata = (
  options: AppendOptions,
  causality: EventMetadata.Causality,
  span: Tracer.AnySpan | undefined
): Either.Either<EventMetadata.EventMetadata, InvalidEventError> => {
  const correlationId = options.correlationId === undefined ? causality.correlationId : options.correlationId
  const causationId = options.causationId === undefined ? causality.causationId : options.causationId
  const traceparent = span === undefined ? null : EventMetadata.traceparent(span)
  if (correlationId === null && causationId === null && traceparent === null) return Either.right(EventMetadata.empty)
  const invalid =
    (correlationId === null ? undefined : validate.textError("correlationId", correlationId)) ??
    (causationId === null ? undefined : validate.textError("causationId", causationId))
  return invalid === undefined
    ? Either.right(Object.freeze({ correlationId, causationId, traceparent }))
    : Either.left(invalid)
}

/**
 * The `EventStore` in context, in the scope of one tenant (see {@link Service.forTenant}).
 *
 * @since 0.1.0
 * @category constructors
 */
export const forTenant = (tenantId: string): Effect.Effect<Service, InvalidEventError, EventStore> =>
  Effect.flatMap(EventStore, (store) => store.forTenant(tenantId))

/**
 * Runs `effect` with the `EventStore` in context scoped to one tenant: everything it
 * reads and appends through the store (an `AggregateRepository` it makes included) is
 * that tenant's.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withTenant =
  (tenantId: string) =>
  <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | InvalidEventError, R | EventStore> =>
    Effect.flatMap(forTenant(tenantId), (store) => Effect.provideService(effect, EventStore, store))

/**
 * The `EventStore` of the layer below, scoped to one tenant: a layer for a process (or
 * a request's layer graph) that serves one tenant.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerTenant = (tenantId: string): Layer.Layer<EventStore, InvalidEventError, EventStore> =>
  Layer.effect(EventStore, forTenant(tenantId))

/**
 * An event store kept in memory, for unit tests and prototypes. Same contract,
 * same validation and decoding as PostgreSQL; its data lives as long as the layer.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory = (options: { readonly registry: EventRegistry }): Layer.Layer<EventStore> =>
  Layer.sync(EventStore, () => make(MemoryEventStore.make(), options.registry))

/**
 * A memory backend whose data can be shared by several stores (e.g. a writer and a
 * reader built with different registries).
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemoryBackend: () => Backend = MemoryEventStore.make

/**
 * Wraps an infrastructure failure of `method`, keeping its cause.
 *
 * @since 0.1.0
 * @category errors
 */
export const storeError =
  (method: string) =>
  (cause: unknown): EventStoreError =>
    new EventStoreError({ method, message: `EventStore.${method} failed: ${describeCause(cause)}`, cause })
