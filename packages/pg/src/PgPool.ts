/**
 * The connection pool: one scoped `pg` pool behind `PgClient`/`SqlClient`, sized
 * and tuned with the spec's knobs, and readable statistics. When Eventfold's metrics are on
 * where the pool is made (`Telemetry.layerMetrics`, or an exporting layer such as
 * `OtelTelemetry.layerConfig` provided around it), the pool also records
 * `eventfold.pool.connections` (idle, used, waiting; sampled every second) and
 * `eventfold.pool.acquire.duration` (`Telemetry.poolMetrics`), tagged with its `applicationName`.
 *
 * | spec (SQLAlchemy) | here | pg-pool |
 * |---|---|---|
 * | pool_size | `poolSize` | `min` (baseline kept open once opened) |
 * | max_overflow | `maxOverflow` | `max = poolSize + maxOverflow` |
 * | pool_timeout | `acquireTimeout` | `connectionTimeoutMillis` |
 * | pool_recycle | `recycle` | `maxLifetimeSeconds` |
 * | pool_pre_ping | `prePing` | a `SELECT 1` on checkout of a connection idle for over `prePingAfterIdle` |
 *
 * @since 0.1.0
 */

import type * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Settings from "@eventfold/core/Settings"
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import type { Connections } from "./internal/connections.js"
import * as Driver from "./internal/pgDriver.js"

/**
 * Where the server is: a URL, or its parts.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectionOptions {
  readonly url?: Redacted.Redacted<string> | undefined
  readonly host?: string | undefined
  readonly port?: number | undefined
  readonly user?: string | undefined
  readonly password?: Redacted.Redacted<string> | undefined
  readonly database?: string | undefined
  readonly ssl?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface PoolOptions {
  /** Connections kept open once opened (spec: pool_size). Default 5. */
  readonly poolSize?: number | undefined
  /** Extra connections under load, closed after `idleTimeout` (spec: max_overflow). Default 10. */
  readonly maxOverflow?: number | undefined
  /** How long a caller waits for a connection before failing (spec: pool_timeout). Default 30 s. */
  readonly acquireTimeout?: Duration.DurationInput | undefined
  /** Connections are replaced after this age (spec: pool_recycle). Default: never. */
  readonly recycle?: Duration.DurationInput | undefined
  /** Validate a connection on checkout when it has been idle for a while (spec: pool_pre_ping). Default false. */
  readonly prePing?: boolean | undefined
  /** With `prePing`, how long a connection may sit idle and still be handed out unchecked. Default 5 s. */
  readonly prePingAfterIdle?: Duration.DurationInput | undefined
  /** Overflow connections idle this long are closed. Default 10 s. */
  readonly idleTimeout?: Duration.DurationInput | undefined
  /** Shown in `pg_stat_activity`, and the pool's name in its metrics: give each pool its own. Default "eventfold". */
  readonly applicationName?: string | undefined
  /**
   * The server cancels a statement that runs longer (`statement_timeout` of every
   * connection). Default: the server's setting (usually none).
   */
  readonly statementTimeout?: Duration.DurationInput | undefined
  /** The server cancels a statement that waits longer for a lock (`lock_timeout`). Default: the server's. */
  readonly lockTimeout?: Duration.DurationInput | undefined
  /**
   * The server ends a session whose transaction stays idle longer
   * (`idle_in_transaction_session_timeout`): a transaction the application forgot open
   * then no longer holds subscribers back forever. Default: the server's setting.
   */
  readonly idleInTransactionTimeout?: Duration.DurationInput | undefined
  /**
   * While the server cannot be reached when the pool starts, how to try again (each
   * failure is logged with host and port). When the schedule ends, the layer fails with
   * a `SqlError` that names them. Default: every second, for 10 seconds.
   */
  readonly connectRetry?: Schedule.Schedule<unknown, unknown> | undefined
  /**
   * Log every statement run on the pool's connections, its text (never its values) and
   * how long it took, at Debug through the program's logger (spec: echo). Lower the
   * minimum log level to see them (`Logger.minimumLogLevel(LogLevel.Debug)`). Default false.
   */
  readonly echo?: boolean | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Options extends ConnectionOptions, PoolOptions {}

/**
 * The pool's figures at one moment.
 *
 * @since 0.1.0
 * @category models
 */
export interface PoolStats {
  /** The configured baseline (spec: pool.size()). */
  readonly size: number
  /** The most connections the pool may open. */
  readonly max: number
  /** Connections open now. */
  readonly open: number
  /** Connections in use by a caller (spec: pool.checkedout()). */
  readonly checkedOut: number
  /** Open connections waiting for a caller (spec: pool.checkedin()). */
  readonly idle: number
  /** Open connections beyond the baseline (spec: pool.overflow()). */
  readonly overflow: number
  /** Callers waiting for a connection. */
  readonly waiting: number
}

/**
 * The pool made by {@link layer}: its statistics, and its connections for
 * `PgEventStore.layerPrepared`. An application whose `SqlClient` comes from another
 * layer (`PgClient.layer`, say) has no `PgPool`: pool statistics are then not
 * available, and the event store runs every statement through @effect/sql.
 *
 * @since 0.1.0
 * @category models
 */
export class PgPool extends Context.Tag("@eventfold/pg/PgPool")<
  PgPool,
  {
    readonly stats: Effect.Effect<PoolStats>
    readonly options: Options
    /** The pool's connections, for the prepared-statement path of `PgEventStore.layerPrepared`. */
    readonly connections: Connections
  }
>() {}

/**
 * The options name no server: no `url` or `host` (from the environment: no
 * `DATABASE_URL` or `PGHOST`). Eventfold never falls back to pg's defaults (localhost,
 * the OS user): events would go to whichever server happens to answer there.
 *
 * @since 0.1.0
 * @category errors
 */
export class ServerNotConfiguredError extends Schema.TaggedError<ServerNotConfiguredError>()(
  "ServerNotConfiguredError",
  {}
) {
  override get message(): string {
    return "PgPool: no PostgreSQL server is configured: set DATABASE_URL (or PGHOST and the other PG* variables), or pass `url` or `host`; for development, @eventfold/pg-embedded's EmbeddedPostgres.layerPoolConfig starts an embedded PostgreSQL instead"
  }
}

const defaults = {
  poolSize: 5,
  maxOverflow: 10,
  acquireTimeout: Duration.seconds(30),
  idleTimeout: Duration.seconds(10),
  connectRetry: Schedule.spaced("1 second").pipe(Schedule.upTo("10 seconds"))
}

/**
 * Where the options point, for messages: host and port, never credentials.
 *
 * @since 0.1.0
 * @category utils
 */
export const describeServer = (options: ConnectionOptions): string => {
  let host = options.host
  let port = options.port
  if (options.url !== undefined) {
    try {
      const url = new URL(Redacted.value(options.url))
      host ??= decodeURIComponent(url.hostname) || undefined
      port ??= url.port === "" ? undefined : Number(url.port)
    } catch {
      return "a server whose URL does not parse"
    }
  }
  return `${host ?? "localhost"}:${port ?? 5432}`
}

const millis = (duration: Duration.DurationInput | undefined) =>
  duration === undefined ? undefined : Duration.toMillis(Duration.decode(duration))

/**
 * Opens the pool (checking one connection, retrying by `connectRetry`) and closes it
 * when the scope closes. Options that name no server fail with
 * {@link ServerNotConfiguredError}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Options
): Effect.Effect<
  { readonly connections: Connections; readonly stats: Effect.Effect<PoolStats> },
  SqlError | ServerNotConfiguredError,
  Scope.Scope
> =>
  Effect.gen(function* () {
    if (!hasServer(options)) return yield* new ServerNotConfiguredError()
    const poolSize = options.poolSize ?? defaults.poolSize
    const max = poolSize + (options.maxOverflow ?? defaults.maxOverflow)
    const { check, connections, counts } = yield* Driver.makePool({
      url: options.url,
      host: options.host,
      port: options.port,
      user: options.user,
      password: options.password,
      database: options.database,
      ssl: options.ssl,
      min: poolSize,
      max,
      acquireTimeoutMillis: millis(options.acquireTimeout ?? defaults.acquireTimeout)!,
      idleTimeoutMillis: millis(options.idleTimeout ?? defaults.idleTimeout)!,
      maxLifetimeSeconds: options.recycle === undefined ? undefined : Duration.toSeconds(options.recycle),
      applicationName: options.applicationName ?? "eventfold",
      prePingAfterMillis:
        options.prePing === true ? millis(options.prePingAfterIdle ?? Duration.seconds(5)) : undefined,
      statementTimeoutMillis: millis(options.statementTimeout),
      lockTimeoutMillis: millis(options.lockTimeout),
      idleInTransactionTimeoutMillis: millis(options.idleInTransactionTimeout),
      echo: options.echo === true
    })
    const server = describeServer(options)
    yield* check.pipe(
      Effect.tapError((error) =>
        Effect.logWarning(`PgPool: PostgreSQL at ${server} cannot be reached yet (${error.message}); trying again`)
      ),
      Effect.retry(options.connectRetry ?? defaults.connectRetry),
      Effect.mapError(
        (error) =>
          new SqlError({ cause: error, message: `PgPool: cannot connect to PostgreSQL at ${server}: ${error.message}` })
      )
    )
    const stats = Effect.map(
      counts,
      ({ idle, open, waiting }): PoolStats => ({
        size: poolSize,
        max,
        open,
        checkedOut: open - idle,
        idle,
        overflow: Math.max(0, open - poolSize),
        waiting
      })
    )
    return { connections, stats }
  })

/**
 * `PgClient` and `SqlClient` over a new pool, and the `PgPool` service for its
 * statistics and connections. The pool is closed when the layer is released.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options
): Layer.Layer<PgPool | PgClient.PgClient | SqlClient.SqlClient, SqlError | ServerNotConfiguredError> =>
  Layer.unwrapScoped(
    Effect.map(make(options), ({ connections, stats }) =>
      Layer.merge(
        PgClient.layerFromPool({
          acquire: Effect.succeed(Driver.pgPool(connections)),
          applicationName: options.applicationName ?? "eventfold"
        }),
        Layer.succeed(PgPool, { stats, options, connections })
      )
    )
  )

/**
 * The pool's settings from the environment:
 * `DATABASE_URL` (or `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`), and
 * `DATABASE_POOL_SIZE`, `DATABASE_MAX_OVERFLOW`, `DATABASE_POOL_TIMEOUT`,
 * `DATABASE_POOL_RECYCLE` (durations such as "30 seconds"), `DATABASE_POOL_PRE_PING`,
 * `DATABASE_STATEMENT_TIMEOUT`, `DATABASE_LOCK_TIMEOUT`, `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`,
 * `DATABASE_ECHO` (log every statement at Debug).
 * Values given in `defaults` apply where the environment says nothing.
 *
 * @since 0.1.0
 * @category constructors
 */
export const config = (defaultOptions: PoolOptions = {}): Config.Config<Options> =>
  Settings.overDefaults(
    {
      url: Config.redacted("DATABASE_URL"),
      host: Config.string("PGHOST"),
      port: Config.port("PGPORT"),
      user: Config.string("PGUSER"),
      password: Config.redacted("PGPASSWORD"),
      database: Config.string("PGDATABASE"),
      poolSize: Config.integer("DATABASE_POOL_SIZE"),
      maxOverflow: Config.integer("DATABASE_MAX_OVERFLOW"),
      acquireTimeout: Config.duration("DATABASE_POOL_TIMEOUT"),
      recycle: Config.duration("DATABASE_POOL_RECYCLE"),
      prePing: Config.boolean("DATABASE_POOL_PRE_PING"),
      statementTimeout: Config.duration("DATABASE_STATEMENT_TIMEOUT"),
      lockTimeout: Config.duration("DATABASE_LOCK_TIMEOUT"),
      idleInTransactionTimeout: Config.duration("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"),
      echo: Config.boolean("DATABASE_ECHO")
    },
    defaultOptions
  )

/**
 * Whether the options name a server (a URL or a host).
 *
 * @since 0.1.0
 * @category utils
 */
export const hasServer = (options: ConnectionOptions): boolean =>
  options.url !== undefined || options.host !== undefined

/**
 * The pool from {@link config}. When the environment names no server, the layer
 * fails with {@link ServerNotConfiguredError}; for development and tests,
 * `EmbeddedPostgres.layerPoolConfig` of `@eventfold/pg-embedded` starts an embedded
 * PostgreSQL instead.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  defaultOptions: PoolOptions = {}
): Layer.Layer<
  PgPool | PgClient.PgClient | SqlClient.SqlClient,
  SqlError | ServerNotConfiguredError | ConfigError.ConfigError
> => Layer.unwrapEffect(Effect.map(config(defaultOptions), layer))
