/**
 * The PostgreSQL event store, over the application's `SqlClient` pool.
 *
 * - `append` is one round trip whatever the batch size (the `eventfold_append`
 *   function), checks all four expected-version forms atomically, and joins the
 *   caller's transaction when it runs inside `sql.withTransaction`.
 * - `readStream` and `readAll` read in keyset pages (by version, by global
 *   position): constant memory, no connection held between pages.
 * - `subscribe` never skips an event that commits late with a lower position: it
 *   reads only up to the settled horizon, below which every transaction that wrote
 *   to `events` has ended (the sequence's last value, then the write locks held on
 *   `events`; see `internal/pgSubscription.ts`). It wakes on NOTIFY sent at commit
 *   (only while a subscriber waits for one), polls as a fallback, and logs which
 *   session holds it back after a threshold.
 *
 * @since 0.1.0
 */

import * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import { ConcurrencyError, DuplicateEventError, type EventStoreError } from "@eventfold/core/Errors"
import type { EventRegistry } from "@eventfold/core/EventRegistry"
import * as EventStore from "@eventfold/core/EventStore"
import * as Subscription from "@eventfold/core/Subscription"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as Pg from "pg"
import * as EventRows from "./internal/eventRows.js"
import * as PgSubscription from "./internal/pgSubscription.js"
import { PgPool } from "./PgPool.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly registry: EventRegistry
  /** Rows per page for reads; default 1,000. */
  readonly pageSize?: number
  /**
   * Writes an `event_outbox` entry for every appended event, in the append's
   * transaction, for the outbox relay (`PgOutbox`, `OutboxRelay`). Default false.
   */
  readonly outbox?: boolean
  /** How subscriptions watch the log (polling, settling, stall reports). */
  readonly subscriptions?: PgSubscription.WatchOptions
}

/** One constant statement text: no template to compile per append. */
const APPEND_SQL = "SELECT * FROM eventfold_append($1::uuid, $2, $3, $4::integer, $5::uuid, $6, $7::jsonb, $8::boolean)"

/**
 * Runs the append as a named prepared statement on a connection of the pool: parsed
 * once per connection, and without the per-statement work of @effect/sql (a checkout,
 * a compiled statement and a span per query), which is most of an append's client time.
 * Failures are SqlErrors, as through @effect/sql, so that one mapping serves both paths.
 */
const prepared = (pool: Pg.Pool, values: ReadonlyArray<unknown>) =>
  Effect.async<ReadonlyArray<Record<string, unknown>>, SqlError>((resume) => {
    pool.connect((connectError, client, release) => {
      if (connectError !== undefined || client === undefined) {
        resume(Effect.fail(new SqlError({ cause: connectError, message: "Failed to acquire connection" })))
        return
      }
      client.query({ name: "eventfold_append", text: APPEND_SQL, values: [...values] }, (error, result) => {
        // A database error leaves the connection usable; anything else (a dropped socket) does not.
        release(error !== null && error !== undefined && !(error instanceof Pg.DatabaseError) ? error : undefined)
        resume(
          error
            ? Effect.fail(new SqlError({ cause: error, message: "Failed to execute statement" }))
            : Effect.succeed(result.rows)
        )
      })
    })
  })

const expectedArgs = (expected: EventStore.PreparedAppend["expectedVersion"]) => {
  switch (expected._tag) {
    case "Any":
      return ["any", null] as const
    case "NoStream":
      return ["no_stream", null] as const
    case "StreamExists":
      return ["stream_exists", null] as const
    case "Exact":
      return ["exact", expected.version] as const
  }
}

/** The batch as one JSON document; payloads are embedded as the JSON text core produced. */
const eventsDocument = (events: EventStore.PreparedAppend["events"]) =>
  `[${events
    .map(
      (e) =>
        `{"event_id":"${e.eventId}","event_type":${JSON.stringify(e.eventType)},"timestamp":"${e.timestamp.toISOString()}","payload":${e.payloadJson}}`
    )
    .join(",")}]`

/** The fields of pg's DatabaseError that tell which constraint failed. */
const pgError = (
  error: SqlError
): { readonly code?: unknown; readonly constraint?: unknown; readonly detail?: unknown } =>
  typeof error.cause === "object" && error.cause !== null ? error.cause : {}

/**
 * The backend over a `SqlClient`; most users want {@link layer}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeBackend = (
  options: {
    readonly pageSize?: number
    readonly outbox?: boolean
    readonly subscriptions?: PgSubscription.WatchOptions
  } = {}
) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    // The application's pool, when it was built with PgPool (then it is the one behind `sql`).
    const pool = yield* Effect.serviceOption(PgPool)
    const pageSize = options.pageSize ?? 1000
    const outbox = options.outbox ?? false

    const append: EventStore.Backend["append"] = (input) => {
      const [expected, expectedVersion] = expectedArgs(input.expectedVersion)
      const { aggregateId, aggregateType } = input.stream
      const values = [
        aggregateId,
        aggregateType,
        expected,
        expectedVersion,
        input.tenantId,
        input.actorId,
        eventsDocument(input.events),
        outbox
      ]
      // Inside a caller's transaction the statement must run on its connection, through
      // @effect/sql; otherwise it goes straight to the pool as a prepared statement.
      return Effect.serviceOption(SqlClient.TransactionConnection)
        .pipe(
          Effect.flatMap((transaction) =>
            Option.isNone(transaction) && Option.isSome(pool)
              ? prepared(pool.value.pool, values)
              : sql.unsafe<Record<string, unknown>>(APPEND_SQL, values)
          )
        )
        .pipe(
          Effect.flatMap((rows): ReturnType<EventStore.Backend["append"]> => {
            // eventfold_append returns one row; read by hand, as this runs once per append.
            const row = rows[0]
            const version = row?.stream_version
            switch (row?.status) {
              case "appended":
              case "replayed": {
                if (typeof version !== "number") break
                const first = EventRows.int8(row.first_position)
                const last = EventRows.int8(row.last_position)
                if (first === undefined || last === undefined) break
                return Effect.succeed({ version, firstPosition: first, lastPosition: last })
              }
              case "conflict":
                if (typeof version !== "number") break
                return Effect.fail(
                  new ConcurrencyError(
                    { aggregateId, aggregateType, expectedVersion: input.expectedVersion, actualVersion: version },
                    // The fields are typed and checked already: skip the Schema validation (costly per conflict).
                    true
                  )
                )
              case "duplicate":
                return Effect.fail(
                  new DuplicateEventError({ eventId: String(row.duplicate_event_id), aggregateId, aggregateType }, true)
                )
            }
            return Effect.fail(
              EventStore.storeError("append")(new Error(`eventfold_append returned ${JSON.stringify(row ?? null)}`))
            )
          }),
          Effect.catchTags({
            SqlError: (error): Effect.Effect<never, ConcurrencyError | DuplicateEventError | EventStoreError> => {
              const { code, constraint, detail } = pgError(error)
              // Both can only come from writers racing outside eventfold_append's lock
              // (another id stored concurrently, a caller in REPEATABLE READ).
              if (code === "23505" && constraint === "uq_events_aggregate_version") {
                return currentVersion(aggregateId, aggregateType).pipe(
                  Effect.flatMap((actualVersion) =>
                    Effect.fail(
                      new ConcurrencyError({
                        aggregateId,
                        aggregateType,
                        expectedVersion: input.expectedVersion,
                        actualVersion
                      })
                    )
                  )
                )
              }
              if (code === "23505" && constraint === "events_event_id_key") {
                const eventId = /\(event_id\)=\(([0-9a-f-]+)\)/.exec(String(detail))?.[1] ?? ""
                return Effect.fail(new DuplicateEventError({ eventId, aggregateId, aggregateType }))
              }
              return Effect.fail(EventStore.storeError("append")(error))
            }
          })
        )
    }

    const currentVersion = (aggregateId: string, aggregateType: string) =>
      sql<{
        version: number
      }>`SELECT coalesce(max(version), 0)::integer AS version FROM events WHERE aggregate_id = ${aggregateId}::uuid AND aggregate_type = ${aggregateType}`.pipe(
        Effect.map((rows) => rows[0]?.version ?? 0),
        Effect.mapError(EventStore.storeError("append"))
      )

    const page = (method: string, query: Effect.Effect<ReadonlyArray<Record<string, unknown>>, SqlError>) =>
      query.pipe(Effect.flatMap(EventRows.decodeRows), Effect.mapError(EventStore.storeError(method)))

    const readStream: EventStore.Backend["readStream"] = (stream, options) => {
      const forward = options.direction === "forward"
      const to = options.toVersion ?? 2147483647
      return Stream.paginateChunkEffect(forward ? options.fromVersion : to, (cursor) =>
        page(
          "readStream",
          forward
            ? sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events
                  WHERE aggregate_id = ${stream.aggregateId}::uuid AND aggregate_type = ${stream.aggregateType}
                    AND version >= ${cursor} AND version <= ${to}
                  ORDER BY version ASC LIMIT ${pageSize}`
            : sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events
                  WHERE aggregate_id = ${stream.aggregateId}::uuid AND aggregate_type = ${stream.aggregateType}
                    AND version <= ${cursor} AND version >= ${options.fromVersion}
                  ORDER BY version DESC LIMIT ${pageSize}`
        ).pipe(
          Effect.map((events) => {
            const last = events[events.length - 1]
            return [
              Chunk.unsafeFromArray(events),
              events.length < pageSize || last === undefined
                ? Option.none()
                : Option.some(forward ? last.version + 1 : last.version - 1)
            ] as const
          })
        )
      )
    }

    const readAll: EventStore.Backend["readAll"] = (options) => {
      const forward = options.direction === "forward"
      const limit = options.limit ?? Number.POSITIVE_INFINITY
      const filters = [
        ...(options.tenantId === undefined ? [] : [sql`tenant_id = ${options.tenantId}::uuid`]),
        ...(options.aggregateTypes === undefined ? [] : [sql.in("aggregate_type", options.aggregateTypes)]),
        ...(options.eventTypes === undefined ? [] : [sql.in("event_type", options.eventTypes)]),
        ...(options.since === undefined ? [] : [sql`timestamp >= ${options.since}`]),
        ...(options.until === undefined ? [] : [sql`timestamp < ${options.until}`]),
        ...(options.before === undefined || !forward ? [] : [sql`global_position < ${options.before}`]),
        ...(options.after === undefined || forward ? [] : [sql`global_position > ${options.after}`])
      ]
      const start: bigint | undefined = forward ? (options.after ?? 0n) : options.before
      return Stream.paginateChunkEffect({ cursor: start, taken: 0 }, ({ cursor, taken }) => {
        const size = Math.min(pageSize, limit - taken)
        if (size <= 0) return Effect.succeed([Chunk.empty<EventStore.StoredEvent>(), Option.none()] as const)
        const where = sql.and([
          ...filters,
          ...(cursor === undefined
            ? []
            : [forward ? sql`global_position > ${cursor}` : sql`global_position < ${cursor}`])
        ])
        const query = forward
          ? sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events WHERE ${where} ORDER BY global_position ASC LIMIT ${size}`
          : sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events WHERE ${where} ORDER BY global_position DESC LIMIT ${size}`
        return page("readAll", query).pipe(
          Effect.map((events) => {
            const last = events[events.length - 1]
            return [
              Chunk.unsafeFromArray(events),
              events.length < size || last === undefined || taken + events.length >= limit
                ? Option.none()
                : Option.some({ cursor: last.globalPosition, taken: taken + events.length })
            ] as const
          })
        )
      })
    }

    // Subscriptions read up to the settled horizon (see internal/pgSubscription.ts): never
    // past a position that a running transaction holds, so that none is skipped.
    const watcher = yield* PgSubscription.makeWatcher(options.subscriptions)
    const subscribe: EventStore.Backend["subscribe"] = (options) => {
      const filters = [
        ...(options.tenantId === undefined ? [] : [sql`tenant_id = ${options.tenantId}::uuid`]),
        ...(options.aggregateTypes === undefined ? [] : [sql.in("aggregate_type", options.aggregateTypes)]),
        ...(options.eventTypes === undefined ? [] : [sql.in("event_type", options.eventTypes)])
      ]
      return Subscription.follow(
        {
          horizon: watcher.horizon,
          read: ({ after, upTo, limit }) =>
            page(
              "subscribe",
              sql`SELECT ${sql.literal(EventRows.COLUMNS)} FROM events
                  WHERE ${sql.and([sql`global_position > ${after}`, sql`global_position <= ${upTo}`, ...filters])}
                  ORDER BY global_position ASC LIMIT ${limit}`
            )
        },
        options
      )
    }

    return { name: "postgresql", append, readStream, readAll, subscribe } satisfies EventStore.Backend
  })

/**
 * The metrics of subscriptions: `horizonChecks` and `horizonCheckDuration` (the cost of
 * never skipping), `heldBack` (milliseconds positions have waited for open transactions),
 * `notifications` (NOTIFY wake-ups).
 *
 * @since 0.1.0
 * @category utils
 */
export const subscriptionMetrics = PgSubscription.metrics

/**
 * The PostgreSQL `EventStore` over the `SqlClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options) =>
  Effect.map(makeBackend(options), (backend) => EventStore.make(backend, options.registry))

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<EventStore.EventStore, never, SqlClient.SqlClient> =>
  Layer.effect(EventStore.EventStore, make(options))
