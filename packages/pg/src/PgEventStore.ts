/**
 * The PostgreSQL event store, over the application's `SqlClient` pool.
 *
 * - `append` is one INSERT statement whatever the batch size, guarded by the unique
 *   constraint on versions as plain SQL is (see `internal/appendSql.ts`); it checks
 *   all four expected-version forms atomically, and joins the caller's transaction,
 *   under a savepoint, when it runs inside `sql.withTransaction`.
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
import {
  type ConcurrencyError,
  concurrencyError,
  DuplicateEventError,
  type EventStoreError
} from "@eventfold/core/Errors"
import type { EventRegistry } from "@eventfold/core/EventRegistry"
import * as EventStore from "@eventfold/core/EventStore"
import * as ExpectedVersion from "@eventfold/core/ExpectedVersion"
import * as Subscription from "@eventfold/core/Subscription"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as Pg from "pg"
import * as AppendSql from "./internal/appendSql.js"
import * as EventRows from "./internal/eventRows.js"
import * as LeanQuery from "./internal/leanQuery.js"
import * as PgSubscription from "./internal/pgSubscription.js"
import * as ReadSql from "./internal/readSql.js"
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
   * Rows per page when a stream is read to be folded (`readStreamEvents`, aggregate
   * loads): only version, type and payload, so pages can be larger. Default 10,000.
   */
  readonly foldPageSize?: number
  /**
   * Writes an `event_outbox` entry for every appended event, in the append's
   * transaction, for the outbox relay (`PgOutbox`, `OutboxRelay`). Default false.
   */
  readonly outbox?: boolean
  /** How subscriptions watch the log (polling, settling, stall reports). */
  readonly subscriptions?: PgSubscription.WatchOptions
}

/**
 * Runs a named prepared statement on a connection of the pool, lean (see
 * internal/leanQuery.ts): parsed once per connection, and without the per-statement
 * work of @effect/sql (a checkout, a compiled statement and a span per query) or of
 * pg's Query (a Describe and a result object per run). Rows are arrays of text. A
 * failure of the statement is pg's DatabaseError itself (a lost race is common on
 * this path, and wrapping it cost another Error); anything else is a SqlError, as
 * through @effect/sql.
 */
const prepared = <A>(
  pool: Pg.Pool,
  statement: LeanQuery.Statement,
  values: ReadonlyArray<unknown>,
  parseRow: (row: LeanQuery.Row) => A
) =>
  Effect.async<ReadonlyArray<A>, SqlError | Pg.DatabaseError>((resume) => {
    pool.connect((connectError, client, release) => {
      if (connectError !== undefined || client === undefined) {
        resume(Effect.fail(new SqlError({ cause: connectError, message: "Failed to acquire connection" })))
        return
      }
      LeanQuery.run(client, statement, values, parseRow, (error, rows) => {
        // A database error, or a row the reader rejected, leaves the connection usable; anything
        // else (a dropped socket) does not.
        const database = error instanceof Pg.DatabaseError
        release(error !== undefined && !database && !(error instanceof LeanQuery.RowError) ? error : undefined)
        resume(
          database
            ? Effect.fail(error)
            : error !== undefined
              ? Effect.fail(new SqlError({ cause: error, message: "Failed to execute statement" }))
              : Effect.succeed(rows)
        )
      })
    })
  })

const asIs = (row: LeanQuery.Row): ReadonlyArray<unknown> => row

/** An append that did not go in is explained again after a lost race this many times, then reported. */
const MAX_RETRIES = 10

/** The batch as one JSON document; payloads are embedded as the JSON text core produced. */
const eventsDocument = (events: EventStore.PreparedAppend["events"]) => {
  let document = "["
  // Events of one append usually share one timestamp (the clock's, when none is given).
  let timestamp: Date | undefined
  let iso = ""
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!
    if (e.timestamp !== timestamp) {
      timestamp = e.timestamp
      iso = timestamp.toISOString()
    }
    document += `${i === 0 ? "" : ","}{"event_id":"${e.eventId}","event_type":${JSON.stringify(e.eventType)},"timestamp":"${iso}","payload":${e.payloadJson}}`
  }
  return `${document}]`
}

const VERSION_CONSTRAINT = "uq_events_aggregate_version"
const EVENT_ID_CONSTRAINT = "events_event_id_key"

/** The DatabaseError behind a failure, whichever path ran the statement. */
const databaseError = (error: SqlError | Pg.DatabaseError): Pg.DatabaseError | undefined => {
  const cause = error instanceof SqlError ? error.cause : error
  return cause instanceof Pg.DatabaseError ? cause : undefined
}

/**
 * The backend over a `SqlClient`; most users want {@link layer}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeBackend = (
  options: {
    readonly pageSize?: number
    readonly foldPageSize?: number
    readonly outbox?: boolean
    readonly subscriptions?: PgSubscription.WatchOptions
  } = {}
) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    // The application's pool, when it was built with PgPool (then it is the one behind `sql`).
    const pool = yield* Effect.serviceOption(PgPool)
    const pageSize = options.pageSize ?? 1000
    const foldPageSize = options.foldPageSize ?? 10_000
    const outbox = options.outbox ?? false

    const statements = {
      expected: {
        single: AppendSql.appendStatement("expected", "single", outbox),
        batch: AppendSql.appendStatement("expected", "batch", outbox)
      },
      head: {
        single: AppendSql.appendStatement("head", "single", outbox),
        batch: AppendSql.appendStatement("head", "batch", outbox)
      }
    }

    // Inside a caller's transaction a statement must run on its connection, through
    // @effect/sql; otherwise it goes straight to the pool as a prepared statement. Rows
    // are arrays either way, of text on the lean path, of parsed values through
    // @effect/sql: the readers below take both.
    const run = <A = ReadonlyArray<unknown>>(
      statement: LeanQuery.Statement,
      values: ReadonlyArray<unknown>,
      transaction: boolean,
      parseRow: (row: ReadonlyArray<unknown>) => A = asIs as (row: ReadonlyArray<unknown>) => A
    ): Effect.Effect<ReadonlyArray<A>, SqlError | Pg.DatabaseError> =>
      transaction || Option.isNone(pool)
        ? Effect.flatMap(sql.unsafe(statement.text, values).values, (rows) =>
            Effect.try({
              try: () => rows.map(parseRow),
              catch: (cause) => new SqlError({ cause, message: "Failed to read a row" })
            })
          )
        : prepared(pool.value.pool, statement, values, parseRow)

    const append: EventStore.Backend["append"] = (input) => {
      const { aggregateId, aggregateType } = input.stream
      const expected = input.expectedVersion
      const count = input.events.length
      const [base, expectation] =
        expected._tag === "Exact"
          ? (["expected", expected.version] as const)
          : expected._tag === "NoStream"
            ? (["expected", 0] as const)
            : (["head", expected._tag === "StreamExists"] as const)
      const single = count === 1 ? input.events[0]! : undefined
      const statement = statements[base][single === undefined ? "batch" : "single"]
      const values: AppendSql.AppendParameters =
        single === undefined
          ? [aggregateId, aggregateType, input.tenantId, input.actorId, expectation, eventsDocument(input.events)]
          : [
              aggregateId,
              aggregateType,
              input.tenantId,
              input.actorId,
              expectation,
              single.eventId,
              single.eventType,
              single.timestamp.toISOString(),
              single.payloadJson
            ]
      const failed = (cause: unknown) => Effect.fail(EventStore.storeError("append")(cause))

      /**
       * The append did not go in (a conflict on a unique constraint, or an expectation
       * the stream did not meet): an idempotent replay, a duplicate id, a conflict, or
       * a race lost by a writer whose expectation still holds, which tries again.
       */
      const explain = (
        transaction: boolean,
        attempt: number
      ): Effect.Effect<EventStore.AppendResult, ConcurrencyError | DuplicateEventError | EventStoreError> =>
        run(
          AppendSql.explainStatement,
          // A uuid[] literal (the ids are checked lower-case UUIDs), text on either path.
          [aggregateId, aggregateType, `{${input.events.map((e) => e.eventId).join(",")}}`],
          transaction
        ).pipe(
          Effect.catchAll(failed),
          Effect.flatMap((rows) => {
            // The columns of AppendSql.explainStatement, in order.
            const row = rows[0] ?? []
            const current = EventRows.integer(row[0])
            const found = EventRows.integer(row[1])
            if (current === undefined || found === undefined) {
              return failed(new Error(`unexpected explanation of a failed append: ${JSON.stringify(row)}`))
            }
            if (found === 0) {
              return ExpectedVersion.isSatisfiedBy(expected, current) && attempt < MAX_RETRIES
                ? insert(transaction, attempt + 1)
                : Effect.fail(
                    concurrencyError({ aggregateId, aggregateType, expectedVersion: expected, actualVersion: current })
                  )
            }
            const baseMin = EventRows.integer(row[3])
            const lastVersion = EventRows.integer(row[5])
            const first = EventRows.int8(row[6])
            const last = EventRows.int8(row[7])
            const replayed =
              found === count &&
              EventRows.boolean(row[2]) &&
              baseMin !== undefined &&
              baseMin === EventRows.integer(row[4]) &&
              ExpectedVersion.isSatisfiedBy(expected, baseMin)
            return replayed && lastVersion !== undefined && first !== undefined && last !== undefined
              ? Effect.succeed({ version: lastVersion, firstPosition: first, lastPosition: last })
              : Effect.fail(new DuplicateEventError({ eventId: String(row[8]), aggregateId, aggregateType }, true))
          })
        )

      const insert = (
        transaction: boolean,
        attempt: number
      ): Effect.Effect<EventStore.AppendResult, ConcurrencyError | DuplicateEventError | EventStoreError> =>
        // In a caller's transaction a failing statement would abort it: run under a savepoint.
        (transaction ? sql.withTransaction(run(statement, values, true)) : run(statement, values, false)).pipe(
          Effect.matchEffect({
            onFailure: (error) => {
              const cause = databaseError(error)
              return cause?.code === "23505" &&
                (cause.constraint === VERSION_CONSTRAINT || cause.constraint === EVENT_ID_CONSTRAINT)
                ? explain(transaction, attempt)
                : failed(error)
            },
            onSuccess: (rows) => {
              // No row (a single event) or none inserted: the expectation did not hold, or a race
              // was lost. Columns: inserted, version, first_position, last_position.
              const row = rows[0]
              const inserted = row === undefined ? 0 : EventRows.integer(row[0])
              if (inserted === count && row !== undefined) {
                const version = EventRows.integer(row[1])
                const first = EventRows.int8(row[2])
                const last = EventRows.int8(row[3])
                if (version !== undefined && first !== undefined && last !== undefined) {
                  return Effect.succeed({ version, firstPosition: first, lastPosition: last })
                }
              }
              return inserted === 0
                ? explain(transaction, attempt)
                : failed(new Error(`unexpected result of an append: ${JSON.stringify(row ?? null)}`))
            }
          })
        )

      return Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (transaction) =>
        insert(Option.isSome(transaction), 1)
      )
    }

    /** A page of stored events, on the lean path outside a caller's transaction. */
    /** A page of a read, on the lean path outside a caller's transaction, decoded by `parseRow`. */
    const read = <A>(
      method: string,
      statement: LeanQuery.Statement,
      values: ReadonlyArray<unknown>,
      parseRow: (row: ReadonlyArray<unknown>) => A
    ) =>
      Effect.serviceOption(SqlClient.TransactionConnection).pipe(
        Effect.flatMap((transaction) => run(statement, values, Option.isSome(transaction), parseRow)),
        Effect.mapError(EventStore.storeError(method))
      )

    /** A page of stored events. */
    const page = (method: string, query: ReadSql.EventQuery, order: string, limit: number) =>
      read(method, query.statement(order, limit), query.values, EventRows.decodeRow)

    const readStream: EventStore.Backend["readStream"] = (stream, options) => {
      const forward = options.direction === "forward"
      const to = options.toVersion ?? 2147483647
      return Stream.paginateChunkEffect(forward ? options.fromVersion : to, (cursor) =>
        Effect.suspend(() => {
          const [query, order] = ReadSql.streamPage(stream, forward, cursor, forward ? to : options.fromVersion)
          return page("readStream", query, order, pageSize)
        }).pipe(
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

    const readStreamEvents: EventStore.Backend["readStreamEvents"] = (stream, fromVersion) =>
      Stream.paginateChunkEffect(fromVersion, (cursor) =>
        read(
          "readStreamEvents",
          ReadSql.READ_STREAM_EVENTS,
          [stream.aggregateId, stream.aggregateType, cursor, foldPageSize],
          EventRows.decodeStreamRow
        ).pipe(
          Effect.map((events) => {
            const last = events[events.length - 1]
            return [
              Chunk.unsafeFromArray(events),
              events.length < foldPageSize || last === undefined ? Option.none() : Option.some(last.version + 1)
            ] as const
          })
        )
      )

    const readAll: EventStore.Backend["readAll"] = (options) => {
      const forward = options.direction === "forward"
      const limit = options.limit ?? Number.POSITIVE_INFINITY
      const start: bigint | undefined = forward ? (options.after ?? 0n) : options.before
      return Stream.paginateChunkEffect({ cursor: start, taken: 0 }, ({ cursor, taken }) => {
        const size = Math.min(pageSize, limit - taken)
        if (size <= 0) return Effect.succeed([Chunk.empty<EventStore.StoredEvent>(), Option.none()] as const)
        const [query, order] = ReadSql.logPage(options, cursor)
        return page("readAll", query, order, size).pipe(
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
      return Subscription.follow(
        {
          horizon: watcher.horizon,
          read: ({ after, upTo, limit }) =>
            Effect.suspend(() => {
              const [query, order] = ReadSql.subscriptionPage(options, after, upTo)
              return page("subscribe", query, order, limit)
            })
        },
        options
      )
    }

    return { name: "postgresql", append, readStream, readStreamEvents, readAll, subscribe } satisfies EventStore.Backend
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
