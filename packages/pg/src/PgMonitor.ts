/**
 * What an operator asks of a PostgreSQL event store, as typed results: the spec's
 * monitoring queries (events per type, per day, the largest streams, table and index
 * sizes, index usage) and Eventfold's own state (migrations, the subscription horizon and
 * who holds it back, the outbox, projection lag, dead letters, connections). The
 * `eventfold` command (`@eventfold/cli`) prints these; an application may serve them too.
 *
 * `overview` reads little of the log: estimates, heads, and each projection's events
 * after its checkpoint, counted up to {@link lagCountLimit}; the outbox and dead letters
 * are counted. The spec's breakdowns (`eventsByAggregateType`, `largestStreams`, ...) scan the
 * log, as the spec's queries do.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as PgClient from "@effect/sql-pg/PgClient"
import type * as CheckpointStore from "@eventfold/core/CheckpointStore"
import type * as DeadLetterQueue from "@eventfold/core/DeadLetterQueue"
import type { StoredEvent } from "@eventfold/core/EventStore"
import type * as Outbox from "@eventfold/core/Outbox"
import { spanOf } from "@eventfold/core/Telemetry"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import { CheckpointRow, toCheckpoint } from "./internal/checkpointRows.js"
import { COLUMNS, Count, decodeRow, Int8 } from "./internal/eventRows.js"
import { migrations as knownMigrations, migrationsTable, storeTables } from "./internal/migrations.js"
import * as PgOutbox from "./PgOutbox.js"
import * as PgPool from "./PgPool.js"

/**
 * A monitoring query failed (a SQL error, an unreachable server). The cause is kept.
 *
 * @since 0.1.0
 * @category errors
 */
export class MonitorError extends Schema.TaggedError<MonitorError>()("MonitorError", {
  method: Schema.String,
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * The migrations the database has and those this version of Eventfold would apply.
 *
 * @since 0.1.0
 * @category models
 */
export interface Migrations {
  readonly applied: ReadonlyArray<{ readonly id: number; readonly name: string; readonly appliedAt: Date }>
  /** Known to this version of Eventfold and not applied: `PgMigrations.run` applies them. */
  readonly pending: ReadonlyArray<{ readonly id: number; readonly name: string }>
  /** Applied, and unknown to this version: the database was migrated by a newer Eventfold. */
  readonly unknown: ReadonlyArray<{ readonly id: number; readonly name: string }>
}

/**
 * A transaction that holds an open write on `events`: subscribers do not pass the
 * positions it may still commit (see `PgEventStore`, "Subscriptions").
 *
 * @since 0.1.0
 * @category models
 */
export interface Writer {
  readonly pid: number
  readonly applicationName: string | null
  readonly user: string | null
  readonly state: string | null
  readonly transactionStart: Date | null
  readonly transactionAgeMillis: number
  /**
   * The session's last statement, as `pg_stat_activity` shows it (to a role allowed to see
   * it): it may hold literal values, the application's data among them; show it only to
   * whoever may see that data.
   */
  readonly query: string | null
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Horizon {
  /** The last global position taken (committed or not). */
  readonly lastPosition: bigint
  /** The transactions holding subscribers back, oldest first. */
  readonly writers: ReadonlyArray<Writer>
}

/**
 * A projection's checkpoint and how far it is behind the whole log (the monitor knows
 * no projection's filters: every later event counts).
 *
 * @since 0.1.0
 * @category models
 */
export interface ProjectionLag extends CheckpointStore.Checkpoint {
  readonly headPosition: bigint
  /** The events after the checkpoint, counted up to {@link lagCountLimit}. */
  readonly eventsBehind: number
  /** False when the count stopped at {@link lagCountLimit}: the projection is at least that far behind. */
  readonly eventsBehindExact: boolean
  /** Age of the oldest event not yet processed; 0 when caught up. */
  readonly timeBehindMillis: number
}

/**
 * How many events behind a projection's lag is counted to: beyond, the count would
 * read the log far back (a projection just reset to the start), and "at least this
 * many" says enough.
 *
 * @since 0.1.0
 * @category utils
 */
export const lagCountLimit = 100_000

/**
 * Dead letters of one projection in one status.
 *
 * @since 0.1.0
 * @category models
 */
export interface DeadLetterCount {
  readonly projection: string
  readonly status: DeadLetterQueue.Status
  readonly count: number
  readonly oldestFailedAt: Date
}

/**
 * Sessions of the database by application name and state (`pg_stat_activity`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Connections {
  readonly applicationName: string
  readonly state: string
  readonly count: number
  /** The oldest open transaction among them, or 0. */
  readonly oldestTransactionAgeMillis: number
}

/**
 * One relation's size in bytes; a partitioned table's includes its partitions.
 *
 * @since 0.1.0
 * @category models
 */
export interface TableSize {
  readonly table: string
  /** The table, its indexes and its TOAST (large values kept out of line, such as big payloads). */
  readonly totalBytes: bigint
  readonly tableBytes: bigint
  /** Its indexes only (the spec's `total - table` would count TOAST as index). */
  readonly indexBytes: bigint
  /** PostgreSQL's estimate of the rows, from the last ANALYZE; null before any. */
  readonly estimatedRows: bigint | null
}

/**
 * The spec's index-usage query, with `pg_stat_user_indexes`' real column names.
 *
 * @since 0.1.0
 * @category models
 */
export interface IndexUsage {
  readonly schema: string
  readonly table: string
  readonly index: string
  readonly scans: bigint
  readonly tuplesRead: bigint
  readonly tuplesFetched: bigint
  readonly bytes: bigint
}

/**
 * A stream's head (`event_streams`).
 *
 * @since 0.1.0
 * @category models
 */
export interface StreamHead {
  readonly aggregateId: string
  readonly aggregateType: string
  readonly tenantId: string | null
  /** The last version appended. */
  readonly version: number
  readonly createdAt: Date
  readonly updatedAt: Date
}

/**
 * @since 0.1.0
 * @category models
 */
export interface StreamsOptions {
  readonly aggregateType?: string | undefined
  readonly tenantId?: string | undefined
  /** Default 50. */
  readonly limit?: number | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface StreamEventsOptions {
  /** The aggregate type, when one id names streams of several types. */
  readonly aggregateType?: string | undefined
  /** Default 1. */
  readonly fromVersion?: number | undefined
  /** Default 100. */
  readonly limit?: number | undefined
}

/**
 * The store at a glance: what `eventfold status` prints. Computed from estimates, heads
 * and indexes, and projections' lag counted up to {@link lagCountLimit}, so the size of
 * the log does not matter. `store` is none while migrations are pending (the tables it
 * reads may not be there yet).
 *
 * @since 0.1.0
 * @category models
 */
export interface Overview {
  readonly database: { readonly name: string; readonly schema: string; readonly serverVersion: string }
  readonly migrations: Migrations
  readonly store: Option.Option<{
    /**
     * The events stored: PostgreSQL's estimate from the last ANALYZE; before any, an exact
     * count while the table is small (under 16 MB), else null.
     */
    readonly estimatedEvents: bigint | null
    /** The streams, estimated as the events are. */
    readonly streams: bigint | null
    readonly horizon: Horizon
    readonly outbox: Outbox.Stats
    readonly projections: ReadonlyArray<ProjectionLag>
    readonly deadLetters: ReadonlyArray<DeadLetterCount>
    readonly sizes: ReadonlyArray<TableSize>
  }>
  readonly connections: ReadonlyArray<Connections>
  /** The application's pool, when it is a `PgPool`. */
  readonly pool: Option.Option<PgPool.PoolStats>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  readonly overview: Effect.Effect<Overview, MonitorError>
  readonly migrations: Effect.Effect<Migrations, MonitorError>
  /** The spec's `SELECT COUNT(*) FROM events` (a scan). */
  readonly totalEvents: Effect.Effect<bigint, MonitorError>
  /** Events per day over the last `days` days (default 7), newest first. */
  readonly eventsPerDay: (options?: {
    readonly days?: number | undefined
  }) => Effect.Effect<ReadonlyArray<{ readonly date: string; readonly events: bigint }>, MonitorError>
  readonly eventsByAggregateType: Effect.Effect<
    ReadonlyArray<{ readonly aggregateType: string; readonly events: bigint }>,
    MonitorError
  >
  readonly eventsByEventType: Effect.Effect<
    ReadonlyArray<{ readonly eventType: string; readonly events: bigint }>,
    MonitorError
  >
  /** The streams with the most events stored (default 10). */
  readonly largestStreams: (options?: {
    readonly limit?: number | undefined
  }) => Effect.Effect<
    ReadonlyArray<{ readonly aggregateId: string; readonly aggregateType: string; readonly events: bigint }>,
    MonitorError
  >
  readonly tableSizes: Effect.Effect<ReadonlyArray<TableSize>, MonitorError>
  readonly indexUsage: Effect.Effect<ReadonlyArray<IndexUsage>, MonitorError>
  readonly horizon: Effect.Effect<Horizon, MonitorError>
  readonly outbox: Effect.Effect<Outbox.Stats, MonitorError>
  readonly projections: Effect.Effect<ReadonlyArray<ProjectionLag>, MonitorError>
  readonly deadLetters: Effect.Effect<ReadonlyArray<DeadLetterCount>, MonitorError>
  readonly connections: Effect.Effect<ReadonlyArray<Connections>, MonitorError>
  /** Stream heads, most recently written first, of one aggregate type or tenant when given. */
  readonly streams: (options?: StreamsOptions) => Effect.Effect<ReadonlyArray<StreamHead>, MonitorError>
  /** A stream's stored events as they are in the table, undecoded (no registry needed). */
  readonly streamEvents: (
    aggregateId: string,
    options?: StreamEventsOptions
  ) => Effect.Effect<ReadonlyArray<StoredEvent>, MonitorError>
}

/**
 * @since 0.1.0
 * @category models
 */
export class PgMonitor extends Context.Tag("@eventfold/pg/PgMonitor")<PgMonitor, Service>() {}

/** Below this size, a table never analyzed is counted for the overview (a count is quick there). */
const smallTable = 16n * 1024n * 1024n

const Millis = Schema.NullOr(Count)
const decode = <A, I>(schema: Schema.Schema<A, I>) => Schema.decodeUnknown(Schema.Array(schema))

const MigrationRow = Schema.Struct({ migration_id: Count, name: Schema.String, created_at: Schema.DateFromSelf })
const WriterRow = Schema.Struct({
  pid: Count,
  application_name: Schema.NullOr(Schema.String),
  usename: Schema.NullOr(Schema.String),
  state: Schema.NullOr(Schema.String),
  xact_start: Schema.NullOr(Schema.DateFromSelf),
  xact_age_ms: Millis,
  query: Schema.NullOr(Schema.String)
})
const SizeRow = Schema.Struct({
  table_name: Schema.String,
  total_bytes: Int8,
  table_bytes: Int8,
  index_bytes: Int8,
  estimated_rows: Schema.NullOr(Int8)
})
const IndexRow = Schema.Struct({
  schemaname: Schema.String,
  tablename: Schema.String,
  indexname: Schema.String,
  scans: Int8,
  tuples_read: Int8,
  tuples_fetched: Int8,
  bytes: Int8
})
const LagRow = Schema.Struct({
  ...CheckpointRow.fields,
  head: Int8,
  behind: Count,
  behind_ms: Millis
})
const DeadLetterRow = Schema.Struct({
  projection_name: Schema.String,
  status: Schema.Literal("failed", "retrying", "resolved"),
  n: Count,
  oldest: Schema.DateFromSelf
})
const ConnectionRow = Schema.Struct({
  application_name: Schema.String,
  state: Schema.String,
  n: Count,
  oldest_xact_ms: Millis
})
const StreamRow = Schema.Struct({
  aggregate_id: Schema.String,
  aggregate_type: Schema.String,
  tenant_id: Schema.NullOr(Schema.String),
  version: Count,
  created_at: Schema.DateFromSelf,
  updated_at: Schema.DateFromSelf
})

/** Wraps a failure of `method`, keeping its cause; one already of `method` is kept as it is. */
const fail =
  (method: string) =>
  (cause: unknown): MonitorError =>
    cause instanceof MonitorError && cause.method === method
      ? cause
      : new MonitorError({
          method,
          message: `PgMonitor.${method} failed: ${cause instanceof Error ? cause.message : String(cause)}`,
          cause
        })

/**
 * The monitor over the `SqlClient` and `PgClient` in context (and the `PgPool`, when
 * there is one, for the pool's figures).
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: Effect.Effect<Service, never, SqlClient.SqlClient | PgClient.PgClient> = Effect.gen(function* () {
  // Column names exactly as written, whatever name transforms the application's client has.
  const sql = (yield* SqlClient.SqlClient).withoutTransforms()
  const pool = yield* Effect.serviceOption(PgPool.PgPool)
  const outboxService = yield* PgOutbox.make()

  const query =
    <A, I>(method: string, schema: Schema.Schema<A, I>) =>
    (statement: Effect.Effect<ReadonlyArray<unknown>, unknown>) =>
      statement.pipe(Effect.flatMap(decode(schema)), Effect.mapError(fail(method)))

  const migrations: Service["migrations"] = Effect.gen(function* () {
    const [found] = yield* query(
      "migrations",
      Schema.Struct({ table: Schema.NullOr(Schema.String) })
    )(sql`SELECT to_regclass(${migrationsTable})::text AS table`)
    const rows =
      found?.table == null
        ? []
        : yield* query(
            "migrations",
            MigrationRow
          )(sql`SELECT migration_id, name, created_at FROM ${sql(migrationsTable)} ORDER BY migration_id`)
    const applied = rows.map((row) => ({ id: row.migration_id, name: row.name, appliedAt: row.created_at }))
    const highest = applied.reduce((max, m) => Math.max(max, m.id), 0)
    const known = new Set(knownMigrations.map((m) => m.id))
    return {
      applied,
      // The Migrator only runs migrations above the highest applied one.
      pending: knownMigrations.filter((m) => m.id > highest).map(({ id, name }) => ({ id, name })),
      unknown: applied.filter((m) => !known.has(m.id)).map(({ id, name }) => ({ id, name }))
    }
  }).pipe(Effect.mapError(fail("migrations")))

  const totalEvents = query(
    "totalEvents",
    Schema.Struct({ total_events: Int8 })
  )(sql`SELECT count(*) AS total_events FROM events`).pipe(Effect.map(([row]) => row!.total_events))

  const eventsPerDay: Service["eventsPerDay"] = (options) =>
    query(
      "eventsPerDay",
      Schema.Struct({ date: Schema.String, events: Int8 })
    )(
      sql`SELECT to_char(date(timestamp), 'YYYY-MM-DD') AS date, count(*) AS events
              FROM events
             WHERE timestamp >= current_date - make_interval(days => ${options?.days ?? 7})
             GROUP BY date(timestamp)
             ORDER BY date(timestamp) DESC`
    ).pipe(Effect.map((rows) => rows.map(({ date, events }) => ({ date, events }))))

  const eventsByAggregateType: Service["eventsByAggregateType"] = query(
    "eventsByAggregateType",
    Schema.Struct({ aggregate_type: Schema.String, count: Int8 })
  )(
    sql`SELECT aggregate_type, count(*) AS count FROM events GROUP BY aggregate_type ORDER BY count DESC, aggregate_type`
  ).pipe(Effect.map((rows) => rows.map((row) => ({ aggregateType: row.aggregate_type, events: row.count }))))

  const eventsByEventType: Service["eventsByEventType"] = query(
    "eventsByEventType",
    Schema.Struct({ event_type: Schema.String, count: Int8 })
  )(sql`SELECT event_type, count(*) AS count FROM events GROUP BY event_type ORDER BY count DESC, event_type`).pipe(
    Effect.map((rows) => rows.map((row) => ({ eventType: row.event_type, events: row.count })))
  )

  const largestStreams: Service["largestStreams"] = (options) =>
    query(
      "largestStreams",
      Schema.Struct({ aggregate_id: Schema.String, aggregate_type: Schema.String, event_count: Int8 })
    )(
      sql`SELECT aggregate_id::text, aggregate_type, count(*) AS event_count
              FROM events
             GROUP BY aggregate_id, aggregate_type
             ORDER BY event_count DESC, aggregate_id, aggregate_type
             LIMIT ${options?.limit ?? 10}`
    ).pipe(
      Effect.map((rows) =>
        rows.map((row) => ({
          aggregateId: row.aggregate_id,
          aggregateType: row.aggregate_type,
          events: row.event_count
        }))
      )
    )

  // A table and, when it is partitioned, its partitions: pg_partition_tree lists a
  // partitioned table with its partitions, and nothing at all for a plain table.
  // reltuples is -1 before the first ANALYZE (PostgreSQL 14+); 0 on 12 and 13, where with no
  // pages it means as much (or an empty table, whose count costs nothing). A
  // partitioned table's own (ANALYZE sets it too) would count its rows twice.
  const tableSizes: Service["tableSizes"] = query(
    "tableSizes",
    SizeRow
  )(
    sql`SELECT t.name AS table_name,
                 coalesce(sum(pg_total_relation_size(p.relid)), 0)::int8 AS total_bytes,
                 coalesce(sum(pg_relation_size(p.relid)), 0)::int8 AS table_bytes,
                 coalesce(sum(pg_indexes_size(p.relid)), 0)::int8 AS index_bytes,
                 CASE WHEN bool_and(c.reltuples < 0 OR (c.reltuples = 0 AND c.relpages = 0
                                    AND current_setting('server_version_num')::int < 140000))
                             FILTER (WHERE c.relkind <> 'p') THEN NULL
                      ELSE (sum(greatest(c.reltuples, 0)) FILTER (WHERE c.relkind <> 'p'))::int8 END AS estimated_rows
            FROM unnest(${sql.literal(`ARRAY[${storeTables.map((t) => `'${t}'`).join(", ")}]`)}::text[]) WITH ORDINALITY AS t(name, n)
            CROSS JOIN LATERAL (SELECT to_regclass(t.name) AS oid) r
            CROSS JOIN LATERAL (SELECT relid FROM pg_partition_tree(r.oid) UNION SELECT r.oid) p
            JOIN pg_class c ON c.oid = p.relid
           WHERE r.oid IS NOT NULL
           GROUP BY t.name, t.n
           ORDER BY t.n`
  ).pipe(
    Effect.map((rows) =>
      rows.map((row) => ({
        table: row.table_name,
        totalBytes: row.total_bytes,
        tableBytes: row.table_bytes,
        indexBytes: row.index_bytes,
        estimatedRows: row.estimated_rows
      }))
    )
  )

  const indexUsage: Service["indexUsage"] = query(
    "indexUsage",
    IndexRow
  )(
    sql`SELECT schemaname, relname AS tablename, indexrelname AS indexname, idx_scan AS scans,
                 idx_tup_read AS tuples_read, idx_tup_fetch AS tuples_fetched,
                 pg_relation_size(indexrelid) AS bytes
            FROM pg_stat_user_indexes
           WHERE relid IN (SELECT relid FROM pg_partition_tree('events') UNION SELECT 'events'::regclass)
           ORDER BY idx_scan DESC, indexrelname`
  ).pipe(
    Effect.map((rows) =>
      rows.map((row) => ({
        schema: row.schemaname,
        table: row.tablename,
        index: row.indexname,
        scans: row.scans,
        tuplesRead: row.tuples_read,
        tuplesFetched: row.tuples_fetched,
        bytes: row.bytes
      }))
    )
  )

  const horizon: Service["horizon"] = Effect.all({
    lastPosition: query(
      "horizon",
      Schema.Struct({ last_position: Int8 })
    )(sql`SELECT last_position FROM eventfold_log_horizon()`).pipe(Effect.map(([row]) => row!.last_position)),
    writers: query(
      "horizon",
      WriterRow
    )(
      // A prepared transaction (two-phase commit) has no session: pid 0, as in eventfold_log_horizon().
      sql`SELECT coalesce(pid, 0) AS pid, application_name, usename, state, xact_start,
                   (extract(epoch FROM xact_age) * 1000)::float8 AS xact_age_ms, query
              FROM eventfold_log_writers
             ORDER BY xact_start NULLS LAST, pid`
    ).pipe(
      Effect.map((rows) =>
        rows.map(
          (row): Writer => ({
            pid: row.pid,
            applicationName: row.application_name,
            user: row.usename,
            state: row.state,
            transactionStart: row.xact_start,
            transactionAgeMillis: Math.max(0, row.xact_age_ms ?? 0),
            query: row.query
          })
        )
      )
    )
  })

  const outbox: Service["outbox"] = Effect.mapError(outboxService.stats, fail("outbox"))

  // One statement for every checkpoint; each count stops past the limit (an index range
  // scan of at most that many positions), the age is the first later event's.
  const projections: Service["projections"] = query(
    "projections",
    LagRow
  )(
    sql`SELECT c.projection_name, c.global_position, c.last_event_id::text, c.last_event_type, c.events_processed,
                 c.last_processed_at, c.created_at, c.updated_at, head.position AS head,
                 (SELECT count(*) FROM (SELECT 1 FROM events e WHERE e.global_position > c.global_position
                                         LIMIT ${lagCountLimit + 1}) later) AS behind,
                 (SELECT (extract(epoch FROM now() - e.created_at) * 1000)::float8 FROM events e
                   WHERE e.global_position > c.global_position ORDER BY e.global_position LIMIT 1) AS behind_ms
            FROM projection_checkpoints c,
                 (SELECT coalesce(max(global_position), 0) AS position FROM events) head
           ORDER BY c.projection_name`
  ).pipe(
    Effect.map((rows) =>
      rows.map(
        (row): ProjectionLag => ({
          ...toCheckpoint(row),
          headPosition: row.head,
          eventsBehind: Math.min(row.behind, lagCountLimit),
          eventsBehindExact: row.behind <= lagCountLimit,
          timeBehindMillis: Math.max(0, row.behind_ms ?? 0)
        })
      )
    )
  )

  const deadLetters: Service["deadLetters"] = query(
    "deadLetters",
    DeadLetterRow
  )(
    sql`SELECT projection_name, status, count(*) AS n, min(first_failed_at) AS oldest
            FROM dead_letter_queue
           GROUP BY projection_name, status
           ORDER BY projection_name, status`
  ).pipe(
    Effect.map((rows) =>
      rows.map((row) => ({
        projection: row.projection_name,
        status: row.status,
        count: row.n,
        oldestFailedAt: row.oldest
      }))
    )
  )

  const connections: Service["connections"] = query(
    "connections",
    ConnectionRow
  )(
    sql`SELECT coalesce(nullif(application_name, ''), '(none)') AS application_name,
                 coalesce(state, '(unknown)') AS state, count(*) AS n,
                 coalesce(max(extract(epoch FROM now() - xact_start) * 1000), 0)::float8 AS oldest_xact_ms
            FROM pg_stat_activity
           WHERE datname = current_database() AND backend_type = 'client backend'
           GROUP BY 1, 2
           ORDER BY 1, 2`
  ).pipe(
    Effect.map((rows) =>
      rows.map((row) => ({
        applicationName: row.application_name,
        state: row.state,
        count: row.n,
        oldestTransactionAgeMillis: Math.max(0, row.oldest_xact_ms ?? 0)
      }))
    )
  )

  const streams: Service["streams"] = (options) => {
    const filters = [
      ...(options?.aggregateType === undefined ? [] : [sql`aggregate_type = ${options.aggregateType}`]),
      ...(options?.tenantId === undefined ? [] : [sql`tenant_id = ${options.tenantId.toLowerCase()}::uuid`])
    ]
    return query(
      "streams",
      StreamRow
    )(
      sql`SELECT aggregate_id::text, aggregate_type, tenant_id::text, version, created_at, updated_at
              FROM event_streams
             WHERE ${sql.and(filters)}
             ORDER BY updated_at DESC, aggregate_id, aggregate_type
             LIMIT ${options?.limit ?? 50}`
    ).pipe(
      Effect.map((rows) =>
        rows.map((row) => ({
          aggregateId: row.aggregate_id,
          aggregateType: row.aggregate_type,
          tenantId: row.tenant_id,
          version: row.version,
          createdAt: row.created_at,
          updatedAt: row.updated_at
        }))
      )
    )
  }

  const streamEvents: Service["streamEvents"] = (aggregateId, options) =>
    Effect.gen(function* () {
      const id = aggregateId.toLowerCase()
      const rows = yield* sql`SELECT ${sql.literal(COLUMNS)}
              FROM events
             WHERE ${sql.and([
               sql`aggregate_id = ${id}::uuid`,
               sql`version >= ${options?.fromVersion ?? 1}`,
               ...(options?.aggregateType === undefined ? [] : [sql`aggregate_type = ${options.aggregateType}`])
             ])}
             ORDER BY aggregate_type, version
             LIMIT ${options?.limit ?? 100}`.values
      return yield* Effect.try(() => rows.map(decodeRow))
    }).pipe(Effect.mapError(fail("streamEvents")))

  // A span per query, named PgMonitor.<method>; the overview's parts are its children.
  const span = (method: string) => Effect.withSpan(spanOf.monitor(method))
  const traced =
    <A extends ReadonlyArray<unknown>, B>(method: string, f: (...args: A) => Effect.Effect<B, MonitorError>) =>
    (...args: A) =>
      span(method)(f(...args))
  const parts = {
    migrations: span("migrations")(migrations),
    totalEvents: span("totalEvents")(totalEvents),
    eventsPerDay: traced("eventsPerDay", eventsPerDay),
    eventsByAggregateType: span("eventsByAggregateType")(eventsByAggregateType),
    eventsByEventType: span("eventsByEventType")(eventsByEventType),
    largestStreams: traced("largestStreams", largestStreams),
    tableSizes: span("tableSizes")(tableSizes),
    indexUsage: span("indexUsage")(indexUsage),
    horizon: span("horizon")(horizon),
    outbox: span("outbox")(outbox),
    projections: span("projections")(projections),
    deadLetters: span("deadLetters")(deadLetters),
    connections: span("connections")(connections),
    streams: traced("streams", streams),
    streamEvents: traced("streamEvents", streamEvents)
  } satisfies Omit<Service, "overview">

  // A table no ANALYZE has seen yet has no estimate: a small one is counted instead
  // (a new store's tables, until autovacuum analyzes them).
  const estimated = (sizes: ReadonlyArray<TableSize>, table: "events" | "event_streams") => {
    const size = sizes.find((s) => s.table === table)
    if (size === undefined) return Effect.succeed(null)
    if (size.estimatedRows !== null || size.tableBytes > smallTable) return Effect.succeed(size.estimatedRows)
    return query(
      "overview",
      Schema.Struct({ n: Int8 })
    )(sql`SELECT count(*) AS n FROM ${sql(table)}`).pipe(Effect.map(([row]) => row!.n))
  }

  const store = Effect.all({
    sizes: parts.tableSizes,
    horizon: parts.horizon,
    outbox: parts.outbox,
    projections: parts.projections,
    deadLetters: parts.deadLetters
  }).pipe(
    Effect.flatMap(({ sizes, ...rest }) =>
      Effect.map(
        Effect.all({ estimatedEvents: estimated(sizes, "events"), streams: estimated(sizes, "event_streams") }),
        (counts) => ({ ...rest, sizes, ...counts })
      )
    )
  )

  // current_schema() is null while no schema of the search_path exists (a pool's `schema`
  // before the migrations create it): the schema named is then the pool's, or the path.
  const database = query(
    "overview",
    Schema.Struct({
      name: Schema.String,
      schema: Schema.NullOr(Schema.String),
      search_path: Schema.String,
      server_version: Schema.String
    })
  )(
    sql`SELECT current_database() AS name, current_schema() AS schema, current_setting('search_path') AS search_path,
                 current_setting('server_version') AS server_version`
  ).pipe(
    Effect.map(([row]) => ({
      name: row!.name,
      schema: row!.schema ?? Option.getOrUndefined(pool)?.options.schema ?? row!.search_path,
      serverVersion: row!.server_version
    }))
  )

  // Any part's failure is the overview's, with the part's own error as its cause.
  const overview: Service["overview"] = Effect.gen(function* () {
    const applied = yield* parts.migrations
    return {
      database: yield* database,
      migrations: applied,
      store: applied.pending.length > 0 ? Option.none() : Option.some(yield* store),
      connections: yield* parts.connections,
      pool: Option.isSome(pool) ? Option.some(yield* pool.value.stats) : Option.none()
    }
  }).pipe(Effect.mapError(fail("overview")), span("overview"))

  return PgMonitor.of({ overview, ...parts })
})

/**
 * @since 0.1.0
 * @category layers
 */
export const layer: Layer.Layer<PgMonitor, never, SqlClient.SqlClient | PgClient.PgClient> = Layer.effect(
  PgMonitor,
  make
)
