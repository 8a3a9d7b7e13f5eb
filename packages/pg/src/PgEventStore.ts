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
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as Pg from "pg"
import * as AppendSql from "./internal/appendSql.js"
import * as EventRows from "./internal/eventRows.js"
import * as KnownVersions from "./internal/knownVersions.js"
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
  /**
   * How many streams' last committed version the store remembers (from its own
   * appends and reads outside transactions). An append outside a transaction that
   * expects a version it remembers, or an older one, does not read the stream's last
   * version first: the unique constraint on versions decides alone. Default 10,000
   * streams (about 1 MB); 0 turns it off.
   */
  readonly knownVersions?: number
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
const prepared = <A, B, E>(
  pool: Pg.Pool,
  statement: LeanQuery.Statement,
  values: ReadonlyArray<unknown>,
  parseRow: (row: LeanQuery.Row) => A,
  // What to run next, resumed with directly: an append's outcome is decided here, without
  // further steps through the runtime.
  then: (error: SqlError | Pg.DatabaseError | undefined, rows: ReadonlyArray<A>) => Effect.Effect<B, E>
) =>
  Effect.async<B, E>((resume) => {
    pool.connect((connectError, client, release) => {
      if (connectError !== undefined || client === undefined) {
        resume(then(new SqlError({ cause: connectError, message: "Failed to acquire connection" }), []))
        return
      }
      LeanQuery.run(client, statement, values, parseRow, (error, rows) => {
        // A database error, or a row the reader rejected, leaves the connection usable; anything
        // else (a dropped socket) does not.
        const database = error instanceof Pg.DatabaseError
        release(error !== undefined && !database && !(error instanceof LeanQuery.RowError) ? error : undefined)
        resume(
          then(
            database || error === undefined
              ? error
              : new SqlError({ cause: error, message: "Failed to execute statement" }),
            rows
          )
        )
      })
    })
  })

/** The outcome of a statement as an Effect: its rows, or its error. */
const rowsOrError = <A>(
  error: SqlError | Pg.DatabaseError | undefined,
  rows: ReadonlyArray<A>
): Effect.Effect<ReadonlyArray<A>, SqlError | Pg.DatabaseError> =>
  error === undefined ? Effect.succeed(rows) : Effect.fail(error)

const asIs = (row: LeanQuery.Row): ReadonlyArray<unknown> => row

/** An append that did not go in is explained again after a lost race this many times, then reported. */
const MAX_RETRIES = 10

/** One append, prepared once: its statement and parameters, and where it runs. */
interface Append {
  readonly input: EventStore.PreparedAppend
  /** The event, when the append has one (the common case). */
  readonly single: EventStore.PreparedAppend["events"][number] | undefined
  readonly statement: LeanQuery.Statement
  readonly values: AppendSql.AppendParameters
  /** Inside a caller's transaction. */
  readonly transaction: boolean
}

type Statements = Record<AppendSql.Base, Record<AppendSql.Shape, LeanQuery.Statement>>

/** The statement for an expected version, by what the store knows of it. */
const baseOf = (knowledge: KnownVersions.Knowledge): AppendSql.Base =>
  knowledge === "unknown" ? "expected" : knowledge

/**
 * In a caller's transaction, what the store knows is not used: under REPEATABLE READ
 * a version committed after the snapshot makes a plain INSERT fail at the constraint
 * while the lookup still shows the expected version, so the append would be retried
 * in vain and reported as a conflict with the version it expected. The probe and ON
 * CONFLICT make that a serialization failure, as PostgreSQL reports it.
 */
const baseInTransaction = (version: number): AppendSql.Base => (version === 0 ? "contended" : "expected")

const prepareStatement = (
  input: EventStore.PreparedAppend,
  statements: Statements,
  known: KnownVersions.KnownVersions,
  transaction: Option.Option<unknown>
): Append => {
  const { aggregateId, aggregateType } = input.stream
  const expected = input.expectedVersion
  const version = expected._tag === "Exact" ? expected.version : expected._tag === "NoStream" ? 0 : undefined
  const [base, expectation] =
    version === undefined
      ? (["head", expected._tag === "StreamExists"] as const)
      : Option.isSome(transaction)
        ? ([baseInTransaction(version), version] as const)
        : ([baseOf(known.knows(aggregateId, aggregateType, version)), version] as const)
  const single = input.events.length === 1 ? input.events[0]! : undefined
  return {
    input,
    single,
    statement: statements[base][single === undefined ? "batch" : "single"],
    values:
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
          ],
    transaction: Option.isSome(transaction)
  }
}

const appendFailed = (cause: unknown) => Effect.fail(EventStore.storeError("append")(cause))

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
    readonly knownVersions?: number
  } = {}
) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    // The application's pool, when it was built with PgPool (then it is the one behind `sql`).
    const pool = yield* Effect.serviceOption(PgPool)
    const pageSize = options.pageSize ?? 1000
    const foldPageSize = options.foldPageSize ?? 10_000
    const outbox = options.outbox ?? false
    const known = KnownVersions.make(options.knownVersions ?? 10_000)

    const statements: Statements = {
      expected: {
        single: AppendSql.appendStatement("expected", "single", outbox),
        batch: AppendSql.appendStatement("expected", "batch", outbox)
      },
      known: {
        single: AppendSql.appendStatement("known", "single", outbox),
        batch: AppendSql.appendStatement("known", "batch", outbox)
      },
      contended: {
        single: AppendSql.appendStatement("contended", "single", outbox),
        // A batch never skips a taken version: it is the same statement.
        batch: AppendSql.appendStatement("known", "batch", outbox)
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
        : prepared(pool.value.pool, statement, values, parseRow, rowsOrError)

    /**
     * The stream of an append outside a caller's transaction is at `version`, committed
     * (and, with `lostRace`, the append met a version it did not expect).
     */
    const committed = (append: Append, version: number, lostRace = false) => {
      if (append.transaction) return
      const { aggregateId, aggregateType } = append.input.stream
      if (lostRace) known.lostRace(aggregateId, aggregateType, version)
      else known.saw(aggregateId, aggregateType, version)
    }

    type Outcome = Effect.Effect<EventStore.AppendResult, ConcurrencyError | DuplicateEventError | EventStoreError>

    /**
     * Runs the append's statement. Outside a caller's transaction the outcome is decided
     * in the driver's callback (see `prepared`); inside one, the statement runs under a
     * savepoint, so that a failure does not abort the caller's transaction.
     */
    const insert = (append: Append, attempt: number): Outcome => {
      if (!append.transaction && Option.isSome(pool)) {
        return prepared(pool.value.pool, append.statement, append.values, asIs, (error, rows) =>
          inserted(append, attempt, error, rows)
        )
      }
      const statement = run(append.statement, append.values, append.transaction)
      return (append.transaction ? sql.withTransaction(statement) : statement).pipe(
        Effect.matchEffect({
          onFailure: (error) => inserted(append, attempt, error, []),
          onSuccess: (rows) => inserted(append, attempt, undefined, rows)
        })
      )
    }

    /** What the statement's outcome means. Columns: inserted, version, first_position, last_position. */
    const inserted = (
      append: Append,
      attempt: number,
      error: SqlError | Pg.DatabaseError | undefined,
      rows: ReadonlyArray<ReadonlyArray<unknown>>
    ): Outcome => {
      if (error !== undefined) {
        const cause = databaseError(error)
        // A race lost at the version constraint (a batch, or a single event whose expected
        // version was known), or an id stored already.
        if (
          cause?.code !== "23505" ||
          (cause.constraint !== VERSION_CONSTRAINT && cause.constraint !== EVENT_ID_CONSTRAINT)
        ) {
          return appendFailed(error)
        }
        return append.single === undefined ? explain(append, attempt) : lookUp(append, attempt)
      }
      const row = rows[0]
      // No row (a single event) or none inserted: the expectation did not hold of the version
      // read, or a single event lost a race.
      const count = row === undefined ? 0 : EventRows.integer(row[0])
      if (row !== undefined && count === append.input.events.length) {
        const version = EventRows.integer(row[1])
        const first = EventRows.int8(row[2])
        const last = EventRows.int8(row[3])
        if (version !== undefined && first !== undefined && last !== undefined) {
          committed(append, version)
          return Effect.succeed({ version, firstPosition: first, lastPosition: last })
        }
      }
      return count !== 0
        ? appendFailed(new Error(`unexpected result of an append: ${JSON.stringify(row ?? null)}`))
        : append.single === undefined
          ? explain(append, attempt)
          : lookUp(append, attempt)
    }

    /** Runs a lookup after an append that did not go in, and decides from its one row. */
    const afterLookup = (
      append: Append,
      statement: LeanQuery.Statement,
      values: ReadonlyArray<unknown>,
      decide: (row: ReadonlyArray<unknown>) => Outcome
    ): Outcome =>
      run(statement, values, append.transaction).pipe(
        Effect.catchAll(appendFailed),
        Effect.flatMap((rows) => decide(rows[0] ?? []))
      )

    /**
     * A single event did not go in: its id is stored (a replay, or a duplicate), or the
     * expectation failed, or a race was lost.
     */
    const lookUp = (append: Append, attempt: number): Outcome =>
      afterLookup(
        append,
        AppendSql.headStatement,
        [append.input.stream.aggregateId, append.input.stream.aggregateType, append.single!.eventId],
        // The columns of AppendSql.headStatement: current_version, known.
        (row) => {
          const current = EventRows.integer(row[0])
          if (current === undefined) {
            return appendFailed(new Error(`unexpected lookup of a failed append: ${JSON.stringify(row)}`))
          }
          committed(append, current)
          return EventRows.boolean(row[1]) ? explain(append, attempt) : retryOrConflict(append, current, attempt)
        }
      )

    /**
     * The append did not go in (a batch, or a single event whose id is stored; or it met
     * a unique constraint): an idempotent replay, a duplicate id, a conflict, or a race
     * lost by a writer whose expectation still holds.
     */
    const explain = (append: Append, attempt: number): Outcome => {
      const { aggregateId, aggregateType } = append.input.stream
      const events = append.input.events
      return afterLookup(
        append,
        AppendSql.explainStatement,
        // A uuid[] literal (the ids are checked lower-case UUIDs), text on either path.
        [aggregateId, aggregateType, `{${events.map((e) => e.eventId).join(",")}}`],
        // The columns of AppendSql.explainStatement, in order.
        (row) => {
          const current = EventRows.integer(row[0])
          const found = EventRows.integer(row[1])
          if (current === undefined || found === undefined) {
            return appendFailed(new Error(`unexpected explanation of a failed append: ${JSON.stringify(row)}`))
          }
          committed(append, current)
          if (found === 0) return retryOrConflict(append, current, attempt)
          const baseMin = EventRows.integer(row[3])
          const lastVersion = EventRows.integer(row[5])
          const first = EventRows.int8(row[6])
          const last = EventRows.int8(row[7])
          const replayed =
            found === events.length &&
            EventRows.boolean(row[2]) &&
            baseMin !== undefined &&
            baseMin === EventRows.integer(row[4]) &&
            ExpectedVersion.isSatisfiedBy(append.input.expectedVersion, baseMin)
          return replayed && lastVersion !== undefined && first !== undefined && last !== undefined
            ? Effect.succeed({ version: lastVersion, firstPosition: first, lastPosition: last })
            : Effect.fail(new DuplicateEventError({ eventId: String(row[8]), aggregateId, aggregateType }, true))
        }
      )
    }

    /**
     * The stream is at `current` and none of the ids is stored: the expectation failed,
     * or it still holds and a race was lost (the version was read before the winner
     * committed), which runs the append again.
     */
    const retryOrConflict = (append: Append, current: number, attempt: number): Outcome => {
      const { stream, expectedVersion } = append.input
      committed(append, current, true)
      return ExpectedVersion.isSatisfiedBy(expectedVersion, current) && attempt < MAX_RETRIES
        ? insert(append, attempt + 1)
        : Effect.fail(
            concurrencyError({
              aggregateId: stream.aggregateId,
              aggregateType: stream.aggregateType,
              expectedVersion,
              actualVersion: current
            })
          )
    }

    const append: EventStore.Backend["append"] = (input) =>
      Effect.contextWithEffect((context) =>
        insert(
          prepareStatement(input, statements, known, Context.getOption(context, SqlClient.TransactionConnection)),
          1
        )
      )

    /**
     * A page of a read, on the lean path outside a caller's transaction, decoded by
     * `parseRow`. A page of one stream read outside a transaction shows versions
     * committed: the highest is remembered for appends (see `known`).
     */
    const read = <A extends { readonly version: number }>(
      method: string,
      statement: LeanQuery.Statement,
      values: ReadonlyArray<unknown>,
      parseRow: (row: ReadonlyArray<unknown>) => A,
      stream?: EventStore.StreamId
    ) =>
      Effect.serviceOption(SqlClient.TransactionConnection).pipe(
        Effect.flatMap((transaction) => {
          const rows = run(statement, values, Option.isSome(transaction), parseRow)
          return stream === undefined || Option.isSome(transaction)
            ? rows
            : Effect.tap(rows, (events) => {
                // In order of version, either way.
                const ends = events.length === 0 ? 0 : Math.max(events[0]!.version, events[events.length - 1]!.version)
                if (ends > 0) known.saw(stream.aggregateId, stream.aggregateType, ends)
              })
        }),
        Effect.mapError(EventStore.storeError(method))
      )

    /** A page of stored events. */
    const page = (
      method: string,
      query: ReadSql.EventQuery,
      order: string,
      limit: number,
      stream?: EventStore.StreamId
    ) => read(method, query.statement(order, limit), query.values, EventRows.decodeRow, stream)

    const readStream: EventStore.Backend["readStream"] = (stream, options) => {
      const forward = options.direction === "forward"
      const to = options.toVersion ?? 2147483647
      return Stream.paginateChunkEffect(forward ? options.fromVersion : to, (cursor) =>
        Effect.suspend(() => {
          const [query, order] = ReadSql.streamPage(stream, forward, cursor, forward ? to : options.fromVersion)
          return page("readStream", query, order, pageSize, stream)
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
          EventRows.decodeStreamRow,
          stream
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
