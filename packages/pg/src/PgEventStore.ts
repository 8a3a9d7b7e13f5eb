/**
 * The PostgreSQL event store.
 *
 * - `append` is one statement whatever the batch size: it moves the stream's head in
 *   `event_streams` and inserts the events (see `internal/appendSql.ts`). The head's
 *   row lock serializes the writers of one stream, so `exact` and `noStream` appends
 *   that lose a race fail with `ConcurrencyError`, and `any` and `streamExists`
 *   appends always land at the next version. It joins the caller's transaction, under
 *   a savepoint, when it runs inside `sql.withTransaction`.
 * - `readStream` and `readAll` read in keyset pages (by version, by global
 *   position): constant memory, no connection held between pages.
 * - `subscribe` never skips an event that commits late with a lower position: it
 *   reads only up to the settled horizon, below which every transaction that wrote
 *   to `events` has ended (see `internal/pgSubscription.ts`). It wakes on NOTIFY sent
 *   at commit (only while a subscriber waits for one), polls as a fallback, logs which
 *   session holds it back after a threshold, and reconnects by a `Schedule` after a
 *   lost connection, resuming where it was.
 *
 * **Two ways to run statements**, chosen by the layer:
 *
 * - {@link layer}: every statement through the application's `SqlClient`, whichever
 *   PgClient layer made it (with or without name transforms).
 * - {@link layerPrepared}: outside transactions, appends and reads run as named
 *   prepared statements directly on the connections of a pool made by `PgPool.layer`
 *   (parsed once per connection, without @effect/sql's per-statement work); inside a
 *   transaction, through the `SqlClient` as {@link layer} does. The faster choice for
 *   an application that builds its pool with `PgPool`.
 *
 * Both pass the same conformance suites. Failures of the database or of the
 * connection are `EventStoreError`s on every path; an append that lost its connection
 * outside a transaction is sent again (with the same event ids, so that a first one
 * that committed is replayed, not doubled) as `retry` says.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import * as PgClient from "@effect/sql-pg/PgClient"
import type { EventRegistry } from "@eventfold/core/EventRegistry"
import * as EventStore from "@eventfold/core/EventStore"
import * as Subscription from "@eventfold/core/Subscription"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as PgAppend from "./internal/pgAppend.js"
import * as Driver from "./internal/pgDriver.js"
import * as PgReads from "./internal/pgReads.js"
import * as PgSubscription from "./internal/pgSubscription.js"
import { PgPool } from "./PgPool.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  readonly registry: EventRegistry
  /** Rows per page for reads; default 1,000. */
  readonly pageSize?: number | undefined
  /**
   * Rows per page when a stream is read to be folded (`readStreamEvents`, aggregate
   * loads): only version, type and payload, so pages can be larger. Default 10,000.
   */
  readonly foldPageSize?: number | undefined
  /**
   * Writes an `event_outbox` entry for every appended event, in the append's
   * transaction, for the outbox relay (`PgOutbox`, `OutboxRelay`). Default false.
   */
  readonly outbox?: boolean | undefined
  /** How subscriptions watch the log, and reconnect (polling, settling, stall reports, `reconnect`). */
  readonly subscriptions?: WatchOptions | undefined
  /**
   * Outside a transaction, how an append or a page of a read is tried again after a
   * transient failure (no connection, a lost connection, a serialization failure).
   * Default: 4 more tries, exponential from 20 ms with jitter (about 0.3 s in all).
   */
  readonly retry?: Schedule.Schedule<unknown, unknown> | undefined
}

/**
 * How subscriptions watch the log.
 *
 * @since 0.1.0
 * @category models
 */
export interface WatchOptions {
  /** Refresh at least this often even without notifications. Default 1 second. */
  readonly pollInterval?: Duration.DurationInput | undefined
  /** While positions wait for their transactions, refresh this often at first. Default 5 ms. */
  readonly settleInterval?: Duration.DurationInput | undefined
  /** Report (log and publish) when readers have been held back this long. Default 5 seconds. */
  readonly stallThreshold?: Duration.DurationInput | undefined
  /** Wake on LISTEN/NOTIFY (needs `PgClient`). Default true. */
  readonly listen?: boolean | undefined
  /**
   * After a lost connection (a page read, the LISTEN connection), how to try again.
   * A subscription fails only when this schedule ends. Default: exponential from 100
   * milliseconds, at most every 5 seconds, for up to 5 minutes.
   */
  readonly reconnect?: Schedule.Schedule<unknown, unknown> | undefined
}

/**
 * The default of {@link Options.retry}.
 *
 * @since 0.1.0
 * @category models
 */
export const defaultRetry: Schedule.Schedule<unknown, unknown> = Schedule.exponential("20 millis").pipe(
  Schedule.jittered,
  Schedule.intersect(Schedule.recurs(4))
)

/**
 * The backend over an executor, with its subscription watcher in the current scope.
 */
const makeBackend = (executor: Driver.Executor, options: Options) =>
  Effect.gen(function* () {
    const retry = options.retry ?? defaultRetry
    const listenConfig = Option.map(yield* Effect.serviceOption(PgClient.PgClient), (client) => client.config)
    // One watcher for every tenant scope: the horizon is the log's, not a tenant's.
    const watcher = yield* PgSubscription.makeWatcher(executor, listenConfig, options.subscriptions)
    const reconnect = options.subscriptions?.reconnect ?? PgSubscription.defaultReconnect
    const over = (executor: Driver.Executor): EventStore.Backend => {
      const reads = PgReads.make(executor, {
        pageSize: options.pageSize ?? 1000,
        foldPageSize: options.foldPageSize ?? 10_000,
        retry
      })
      const subscribe: EventStore.Backend["subscribe"] = (subscription) =>
        Subscription.follow(
          {
            horizon: watcher.horizon,
            read: (range) =>
              reads
                .subscriptionPage(subscription, range, reconnect)
                .pipe(Effect.mapError(EventStore.storeError("subscribe")))
          },
          subscription
        )
      return {
        name: "postgresql",
        append: PgAppend.make(executor, { outbox: options.outbox ?? false, retry }),
        readStream: reads.readStream,
        readStreamEvents: reads.readStreamEvents,
        readAll: reads.readAll,
        subscribe,
        forTenant: (tenantId) => over(executor.forTenant(tenantId))
      }
    }
    return over(executor)
  })

/**
 * A role that row-level security binds (not a superuser, not `BYPASSRLS`, not the
 * tables' owner) sees and writes no events outside a tenant scope: said once, when the
 * store is made, rather than found out from reads that come back empty.
 */
const warnIfBound = (sql: SqlClient.SqlClient) =>
  sql.withoutTransforms()<{ readonly bound: boolean; readonly role: string }>`
    SELECT row_security_active('events') AS bound, current_user AS role`.pipe(
    Effect.flatMap(([row]) =>
      row?.bound === true
        ? Effect.logWarning(
            `PgEventStore: row-level security binds the role ${row.role}: outside a tenant scope (EventStore.forTenant) it sees and writes no events. Run components that need every tenant (the outbox relay, projections, monitoring) on the tables' owner or a BYPASSRLS role.`
          )
        : Effect.void
    ),
    Effect.catchAllCause((cause) =>
      Effect.logDebug("PgEventStore: could not tell whether row-level security binds this role", cause)
    )
  )

/**
 * The PostgreSQL `EventStore` over the `SqlClient` in context: every statement through
 * @effect/sql. Its subscription watcher lives as long as the scope.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<EventStore.Service, never, SqlClient.SqlClient | Scope.Scope> =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.zipRight(
      warnIfBound(sql),
      Effect.map(makeBackend(Driver.sqlExecutor(sql), options), (backend) => EventStore.make(backend, options.registry))
    )
  )

/**
 * The PostgreSQL `EventStore` over the pool of `PgPool.layer`: appends and reads
 * outside transactions run as named prepared statements on the pool's connections;
 * in a transaction, through the `SqlClient` (see the module's overview).
 *
 * @since 0.1.0
 * @category constructors
 */
export const makePrepared = (
  options: Options
): Effect.Effect<EventStore.Service, never, SqlClient.SqlClient | PgPool | Scope.Scope> =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const pool = yield* PgPool
    yield* warnIfBound(sql)
    const backend = yield* makeBackend(Driver.preparedExecutor(sql, pool.connections), options)
    return EventStore.make(backend, options.registry)
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
 * The store over the `SqlClient` in context (any PgClient layer); see {@link make}.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<EventStore.EventStore, never, SqlClient.SqlClient> =>
  Layer.scoped(EventStore.EventStore, make(options))

/**
 * The store over `PgPool.layer`'s pool, with prepared statements; see {@link makePrepared}.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerPrepared = (
  options: Options
): Layer.Layer<EventStore.EventStore, never, SqlClient.SqlClient | PgPool> =>
  Layer.scoped(EventStore.EventStore, makePrepared(options))
