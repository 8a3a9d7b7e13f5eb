/**
 * Subscriptions to the global log: catch up from a position, then follow the log
 * live, as one `Stream` (`EventStore.subscribe`, `EventStore.subscribeMessages`).
 *
 * A subscription delivers events in global-position order, the order of `readAll`,
 * and never passes a position that a still-running transaction holds: a backend
 * only hands out positions up to its *settled horizon*, the highest position below
 * which every transaction that took a position has ended (committed or rolled
 * back). How a backend knows its horizon is its own business (memory: appends are
 * atomic, so the end of the log; PostgreSQL: see `@eventfold/pg/PgEventStore`).
 *
 * With filters, most positions may match nothing: the subscription still reports
 * how far it has looked (`Progress`), so that a checkpoint can move on.
 *
 * @since 0.1.0
 */
import * as Chunk from "effect/Chunk"
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import type { EventDecodeError, UnknownEventTypeError } from "./Errors.js"
import * as EventMetadata from "./EventMetadata.js"
import type { EventTypeFilter, RecordedEvent, StoredEvent } from "./EventStore.js"
import { Attributes, metricsEnabled, Spans, subscriptionMetrics, withHotSpan } from "./Telemetry.js"

/**
 * Where a subscription starts and what it selects. Filters are applied by the
 * store (in SQL for PostgreSQL).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options<T extends EventTypeFilter = string> {
  /** Deliver events with a global position greater than this; default 0 (the whole log). */
  readonly after?: bigint
  readonly tenantId?: string
  readonly aggregateTypes?: ReadonlyArray<string>
  /** Only events of these types, by name or by definition (definitions only: the events are typed as theirs). */
  readonly eventTypes?: ReadonlyArray<T>
  /** Rows per read while catching up; default 1,000. */
  readonly batchSize?: number
  /**
   * Who subscribes (a projection's name, say): with a name, the subscription's lag is
   * measured under it while metrics are on (`Telemetry.subscriptionMetrics`).
   */
  readonly name?: string
}

/**
 * The options a backend receives, validated and with defaults.
 *
 * @since 0.1.0
 * @category models
 */
export interface BackendOptions {
  readonly after: bigint
  readonly batchSize: number
  readonly tenantId?: string
  readonly aggregateTypes?: ReadonlyArray<string>
  readonly eventTypes?: ReadonlyArray<string>
  readonly name?: string
}

/**
 * A session that holds readers back: a transaction that wrote to the log and has
 * not ended yet.
 *
 * @since 0.1.0
 * @category models
 */
export interface Holder {
  /** Server process id (PostgreSQL `pg_stat_activity.pid`); null for a prepared transaction. */
  readonly pid: number | null
  /** The backend's transaction identifier (PostgreSQL: the virtual transaction id). */
  readonly transaction: string
  readonly transactionStart: Date | null
  /** e.g. "active", "idle in transaction". */
  readonly state: string | null
  /** The session's current or last statement. */
  readonly query: string | null
  readonly applicationName: string | null
  /** How long the transaction has been open, in milliseconds. */
  readonly transactionAgeMillis: number | null
}

/**
 * Readers are held back: positions above `position` were taken by transactions
 * that have not ended, and have been for `heldForMillis`.
 *
 * @since 0.1.0
 * @category models
 */
export interface Stall {
  /** Everything up to here is settled and can be delivered. */
  readonly position: bigint
  /** Positions up to here have been taken and wait for their transactions. */
  readonly waitingUpTo: bigint
  /** When the waiting began. */
  readonly since: Date
  readonly heldForMillis: number
  readonly holders: ReadonlyArray<Holder>
}

/**
 * What a subscription emits.
 *
 * - `Event`: the next event, in global-position order.
 * - `Progress`: every matching event up to `position` has been emitted; emitted when
 *   positions passed without a match (filters, rolled-back positions), so that a
 *   checkpoint can move on.
 * - `Stalled`: the subscription is caught up and held back (see {@link Stall}); repeated
 *   while it lasts.
 * - `Undecodable`: a stored event that does not decode (only from
 *   `subscribeMessages`; `subscribe` fails with the error instead). The subscription
 *   goes on after it.
 *
 * @since 0.1.0
 * @category models
 */
export type Message<A = RecordedEvent> =
  | { readonly _tag: "Event"; readonly event: A }
  | { readonly _tag: "Progress"; readonly position: bigint }
  | { readonly _tag: "Stalled"; readonly stall: Stall }
  | {
      readonly _tag: "Undecodable"
      readonly stored: StoredEvent
      readonly error: UnknownEventTypeError | EventDecodeError
    }

/**
 * What a backend emits: stored events, not yet decoded.
 *
 * @since 0.1.0
 * @category models
 */
export type BackendMessage = Exclude<Message<StoredEvent>, { readonly _tag: "Undecodable" }>

/**
 * A backend's settled horizon at one moment.
 *
 * @since 0.1.0
 * @category models
 */
export interface Horizon {
  /** Every transaction that took a position up to this one has ended. */
  readonly settled: bigint
  /** Present when readers have been held back longer than the backend's threshold. */
  readonly stall: Option.Option<Stall>
}

/**
 * What {@link follow} needs from a backend.
 *
 * @since 0.1.0
 * @category models
 */
export interface Source<E> {
  /** The current horizon, then each change. */
  readonly horizon: Stream.Stream<Horizon, E>
  /** Matching events with `after < position <= upTo`, in position order, at most `limit`. */
  readonly read: (range: {
    readonly after: bigint
    readonly upTo: bigint
    readonly limit: number
  }) => Effect.Effect<ReadonlyArray<StoredEvent>, E>
}

/**
 * The subscription loop shared by backends: whenever the horizon moves past the
 * cursor, read the range in pages (with the backend's filters) and move the cursor
 * to the horizon, reporting `Progress` when the range ended without a match. A
 * slow consumer never makes horizons pile up: only the latest one is kept.
 *
 * A named subscription started while metrics are on measures its lag: at each page it
 * hands out and each move of the horizon, the positions between the horizon and what it
 * delivered; at each page, the age of the last event delivered (0 once caught up).
 *
 * @since 0.1.0
 * @category constructors
 */
export const follow = <E>(source: Source<E>, options: BackendOptions): Stream.Stream<BackendMessage, E> =>
  Stream.unwrap(
    Effect.map(FiberRef.get(metricsEnabled), (measured) =>
      followWith(source, options, measured && options.name !== undefined ? lagGauges(options.name) : undefined)
    )
  )

const lagGauges = (name: string) => ({
  lag: Metric.tagged(subscriptionMetrics.lag, Attributes.subscription, name),
  lagTime: Metric.tagged(subscriptionMetrics.lagTime, Attributes.subscription, name)
})

const followWith = <E>(
  source: Source<E>,
  options: BackendOptions,
  gauges: ReturnType<typeof lagGauges> | undefined
): Stream.Stream<BackendMessage, E> =>
  Stream.suspend(() => {
    // The stream's own cursor; read and written only by the sequential loop below.
    let cursor = options.after
    const limit = options.batchSize
    // The newest horizon seen, ahead of the one being read while the consumer is busy.
    let head = -1n
    const positionsBehind = () => Number(head > cursor ? head - cursor : 0n)
    // After a page is read (the cursor moved past it): a page without events that is not
    // caught up says nothing of the age, which stays as it was.
    const measurePage = (measured: NonNullable<typeof gauges>, rows: ReadonlyArray<StoredEvent>) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => {
        const last = rows[rows.length - 1]
        const behind = positionsBehind()
        const age =
          behind === 0 ? 0 : last === undefined ? undefined : Math.max(0, now - last.createdAt.getTime()) / 1000
        return Effect.zipRight(
          Metric.set(measured.lag, behind),
          age === undefined ? Effect.void : Metric.set(measured.lagTime, age)
        )
      })

    /**
     * A page, in a consumer span of its own (under a tracer someone installed) that links
     * to the appends of its events: a subscription living for months makes one short
     * trace per page, not one endless trace.
     */
    const readPage = (after: bigint, upTo: bigint) =>
      withHotSpan(
        (_now, _measured, span) => {
          const read = source.read({ after, upTo, limit })
          return span?._tag === "Span"
            ? Effect.tap(read, (rows) => {
                span.attribute(Attributes.eventCount, rows.length)
                span.addLinks(EventMetadata.spanLinks(rows))
              })
            : read
        },
        Spans.subscribe,
        () => ({
          kind: "consumer",
          root: true,
          captureStackTrace: false,
          attributes: {
            [Attributes.fromPosition]: String(after),
            ...(options.name === undefined ? {} : { [Attributes.subscription]: options.name })
          }
        })
      )

    const range = (upTo: bigint): Stream.Stream<BackendMessage, E> =>
      Stream.paginateChunkEffect(cursor, (after) =>
        Effect.flatMap(readPage(after, upTo), (rows) => {
          const last = rows[rows.length - 1]
          const more = rows.length >= limit && last !== undefined && last.globalPosition < upTo
          cursor = more ? last.globalPosition : upTo
          const messages: Array<BackendMessage> = rows.map((event) => ({ _tag: "Event", event }))
          // The range ended past the last match: say so, or a filtered checkpoint could never move.
          if (!more && (last === undefined || last.globalPosition < upTo)) {
            messages.push({ _tag: "Progress", position: upTo })
          }
          const page = [Chunk.unsafeFromArray(messages), more ? Option.some(cursor) : Option.none()] as const
          return gauges === undefined ? Effect.succeed(page) : Effect.as(measurePage(gauges, rows), page)
        })
      )

    const horizons =
      gauges === undefined
        ? source.horizon
        : Stream.tap(source.horizon, (horizon) => {
            if (horizon.settled > head) head = horizon.settled
            return Metric.set(gauges.lag, positionsBehind())
          })
    return horizons.pipe(
      Stream.buffer({ capacity: 1, strategy: "sliding" }),
      Stream.flatMap((horizon): Stream.Stream<BackendMessage, E> => {
        if (horizon.settled > cursor) return range(horizon.settled)
        // Caught up and held back: tell the reader why nothing comes.
        if (Option.isSome(horizon.stall)) {
          return Stream.make<[BackendMessage]>({ _tag: "Stalled", stall: horizon.stall.value })
        }
        return Stream.empty
      })
    )
  })
