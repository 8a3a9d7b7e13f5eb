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
 * Configuration: {@link layer} takes the options as given in code, and nothing of the
 * environment changes them; {@link layerConfig} reads them through any `Config` the
 * application names (`Config.Wrap<Options>`, as `PgClient.layerConfig` does); the preset
 * {@link config} (and {@link layerFromEnv}) reads Eventfold's variables: `DATABASE_URL`,
 * the PG* variables, `DATABASE_POOL_SIZE`, ... (the README's table).
 *
 * TLS is libpq's `sslmode` (`disable` by default), from `sslMode` or the URL's `?sslmode=`;
 * certificates are PEM text or the path of a PEM file. `schema` puts Eventfold's tables in
 * a PostgreSQL schema of their own, so that stores can share a database.
 *
 * @since 0.1.0
 */

import type * as SqlClient from "@effect/sql/SqlClient"
import { SqlError } from "@effect/sql/SqlError"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Settings from "@eventfold/core/Settings"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Ref from "effect/Ref"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as Target from "./internal/connection.js"
import type { Connections } from "./internal/connections.js"
import * as Driver from "./internal/pgDriver.js"
import * as SslModes from "./internal/sslMode.js"

/**
 * How a connection uses TLS: libpq's `sslmode`.
 *
 * | sslMode | TLS | the server's certificate |
 * |---|---|---|
 * | `disable` (default) | never | — |
 * | `allow` | only when the server requires it | as `require` |
 * | `prefer` | when the server offers it | as `require` |
 * | `require` | always | not checked; with `sslRootCert`, its chain is (as `verify-ca`) |
 * | `verify-ca` | always | signed by `sslRootCert`, whatever host name it names |
 * | `verify-full` | always | signed by `sslRootCert` (or a system CA: `"system"`), for the host connected to |
 *
 * pg cannot fall back per connection as libpq does: with `allow` and `prefer`, the first
 * connection that is refused for want (or excess) of TLS switches the whole pool.
 *
 * @since 0.1.0
 * @category models
 */
export type SslMode = SslModes.SslMode

/**
 * The values of {@link SslMode}, weakest first.
 *
 * @since 0.1.0
 * @category models
 */
export const sslModes: ReadonlyArray<SslMode> = SslModes.sslModes

/**
 * Where the server is, a URL or its parts, how to reach it, and in which schema the
 * tables are. Fields given beside `url` replace the URL's.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectionOptions {
  /**
   * `postgres://user:password@host:port/database`, optionally with libpq's parameters
   * `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `host`, `port`, `user`, `password`,
   * `dbname`, `application_name`, `options` (any other is refused).
   */
  readonly url?: Redacted.Redacted<string> | undefined
  readonly host?: string | undefined
  /** Default 5432. */
  readonly port?: number | undefined
  readonly user?: string | undefined
  readonly password?: Redacted.Redacted<string> | undefined
  readonly database?: string | undefined
  /**
   * The PostgreSQL schema of Eventfold's tables, so that several stores can share a
   * database: every connection of the pool has it as its `search_path` (and nothing else:
   * the application's own tables elsewhere need their schema's name), `PgMigrations.run`
   * creates it, and its migrations are recorded in it. The name is used exactly as given
   * (quoted: `Orders` is not `orders`). Default: the server's `search_path` (`public`).
   */
  readonly schema?: string | undefined
  /** TLS (libpq's `sslmode`), see {@link SslMode}. Default: the URL's, else `disable`. */
  readonly sslMode?: SslMode | undefined
  /**
   * The CA certificates the server's must chain to: PEM text, the path of a PEM file, or
   * `"system"` (the system's CAs, with `verify-full` only). libpq's `sslrootcert`.
   */
  readonly sslRootCert?: string | undefined
  /** A client certificate to present (PEM text or the path of a PEM file), with `sslKey`. libpq's `sslcert`. */
  readonly sslCert?: string | undefined
  /** The client certificate's private key (PEM text or the path of a PEM file). libpq's `sslkey`. */
  readonly sslKey?: Redacted.Redacted<string> | undefined
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
export const describeServer = (options: ConnectionOptions): string =>
  Either.match(Target.resolve(options), {
    onLeft: () =>
      options.host === undefined ? "a server whose URL does not parse" : `${options.host}:${options.port ?? 5432}`,
    onRight: (target) => `${target.host ?? "localhost"}:${target.port ?? 5432}`
  })

/** The name in `pg_stat_activity` and of the pool's metrics: the option's, the URL's, or "eventfold". */
const applicationName = (options: PoolOptions, target: Target.Target | undefined): string =>
  options.applicationName ?? target?.applicationName ?? "eventfold"

const millis = (duration: Duration.DurationInput | undefined) =>
  duration === undefined ? undefined : Duration.toMillis(Duration.decode(duration))

/**
 * Why the options cannot be used (a URL that does not parse, `verify-full` without a root
 * certificate, a schema name PostgreSQL refuses), or undefined. The message names the
 * setting and quotes no secret.
 *
 * @since 0.1.0
 * @category utils
 */
export const optionsProblem = (options: ConnectionOptions): string | undefined =>
  Either.match(Target.resolve(options), { onLeft: (problem) => problem, onRight: () => undefined })

/**
 * Opens the pool (checking one connection, retrying by `connectRetry` while the server
 * cannot be reached) and closes it when the scope closes. Options that name no server
 * fail with {@link ServerNotConfiguredError}; options that cannot be used (see
 * {@link optionsProblem}, or a certificate file that cannot be read), a certificate that
 * does not verify and a login the server refuses fail at once with a `SqlError` that
 * says so.
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
    const unusable = (problem: string) => new SqlError({ message: `PgPool: ${problem}` })
    const target = yield* Either.mapLeft(Target.resolve(options), unusable)
    const tls = yield* Effect.mapError(Target.tlsPlan(target), unusable)
    const poolSize = options.poolSize ?? defaults.poolSize
    const max = poolSize + (options.maxOverflow ?? defaults.maxOverflow)
    const { check, connections, counts } = yield* Driver.makePool({
      host: target.host!,
      port: target.port ?? 5432,
      user: target.user,
      password: target.password,
      database: target.database,
      startupOptions: target.startupOptions,
      tls,
      min: poolSize,
      max,
      acquireTimeoutMillis: millis(options.acquireTimeout ?? defaults.acquireTimeout)!,
      idleTimeoutMillis: millis(options.idleTimeout ?? defaults.idleTimeout)!,
      maxLifetimeSeconds: options.recycle === undefined ? undefined : Duration.toSeconds(options.recycle),
      applicationName: applicationName(options, target),
      prePingAfterMillis:
        options.prePing === true ? millis(options.prePingAfterIdle ?? Duration.seconds(5)) : undefined,
      statementTimeoutMillis: millis(options.statementTimeout),
      lockTimeoutMillis: millis(options.lockTimeout),
      idleInTransactionTimeoutMillis: millis(options.idleInTransactionTimeout),
      echo: options.echo === true
    })
    const server = `${target.host}:${target.port ?? 5432}${target.sslMode === "disable" ? "" : ` (sslmode ${target.sslMode})`}`
    // Said once as a warning (a command line or a log would otherwise repeat it at every
    // attempt), then at Debug.
    const attempts = yield* Ref.make(0)
    yield* check.pipe(
      Effect.tapError((error) =>
        Driver.isSettingsFailure(error)
          ? Effect.void
          : Effect.flatMap(
              Ref.getAndUpdate(attempts, (n) => n + 1),
              (n) =>
                Effect.logWithLevel(
                  n === 0 ? LogLevel.Warning : LogLevel.Debug,
                  `PgPool: PostgreSQL at ${server} cannot be reached yet (${error.message}); trying again`
                )
            )
      ),
      // A certificate that does not verify or a login the server refuses stays so: no retry.
      Effect.retry({
        schedule: options.connectRetry ?? defaults.connectRetry,
        while: (error) => !Driver.isSettingsFailure(error)
      }),
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
          applicationName: applicationName(options, Either.getOrUndefined(Target.resolve(options)))
        }),
        Layer.succeed(PgPool, { stats, options, connections })
      )
    )
  )

/**
 * Whether the options name a server (a URL or a host).
 *
 * @since 0.1.0
 * @category utils
 */
export const hasServer = (options: ConnectionOptions): boolean =>
  options.url !== undefined || options.host !== undefined

/** The options, refused with a `ConfigError` when they cannot be used (see {@link optionsProblem}). */
const usable = (config: Config.Config<Options>): Config.Config<Options> =>
  Config.mapOrFail(config, (options) => {
    const problem = optionsProblem(options)
    return problem === undefined
      ? Either.right(options)
      : Either.left(ConfigError.InvalidData([], `PgPool: ${problem}`))
  })

/**
 * The pool, its options read through `config`: a `Config` of the options, or a record
 * with a `Config` per option, as `PgClient.layerConfig` takes them. Options that cannot
 * be used (a URL that does not parse, `verify-full` without a root certificate, ...) fail
 * with a `ConfigError` before anything connects, and no secret is in its message.
 *
 * ```ts
 * PgPool.layerConfig({
 *   url: Config.redacted("ORDERS_DATABASE_URL"),
 *   schema: Config.succeed("orders"),
 *   poolSize: Config.integer("ORDERS_POOL_SIZE").pipe(Config.withDefault(10))
 * })
 * ```
 *
 * Options that name no server fail with {@link ServerNotConfiguredError}; for
 * development and tests, `EmbeddedPostgres.layerPoolConfig` of `@eventfold/pg-embedded`
 * starts an embedded PostgreSQL instead.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  config: Config.Config.Wrap<Options>
): Layer.Layer<
  PgPool | PgClient.PgClient | SqlClient.SqlClient,
  SqlError | ServerNotConfiguredError | ConfigError.ConfigError
> => Layer.unwrapEffect(Effect.map(usable(Config.unwrap(config)), layer))

/**
 * The options of a server whose URL says everything about it (an embedded one): `options`
 * less what would take its place (PGUSER, say, must not replace its user), with `url`.
 *
 * @since 0.1.0
 * @category utils
 */
export const withServerUrl = (options: Options, url: Redacted.Redacted<string>): Options => {
  const {
    database: _d,
    password: _p,
    port: _o,
    sslCert: _c,
    sslKey: _k,
    sslMode: _m,
    sslRootCert: _r,
    user: _u,
    host: _h,
    ...rest
  } = options
  return { ...rest, url }
}

// ---------------------------------------------------------------------------
// The preset: Eventfold's variables
// ---------------------------------------------------------------------------

/** A setting that may be left unset. */
const optional = <A>(config: Config.Config<A>): Config.Config<A | undefined> =>
  Config.map(Config.option(config), Option.getOrUndefined)

/** `config` with a default (code's, else the library's), or unset when there is none. */
const withDefault = <A>(config: Config.Config<A>, fallback: A | undefined): Config.Config<A | undefined> =>
  fallback === undefined ? optional(config) : Config.withDefault(config, fallback)

/** A URL, refused at once (naming the variable, quoting nothing of it) when it is not a PostgreSQL URL. */
const urlConfig = (name: string) =>
  Config.nested(
    Config.mapOrFail(Config.redacted(), (url) =>
      Either.match(Target.parseUrl(Redacted.value(url)), {
        onLeft: (problem) =>
          Either.left(
            ConfigError.InvalidData(
              [],
              `Expected a PostgreSQL URL (postgres://user:password@host:port/database), but it ${problem}`
            )
          ),
        onRight: (parts) => Either.right({ url, parts })
      })
    ),
    name
  )

const schemaConfig = (name: string) =>
  Config.nested(
    Config.mapOrFail(Config.string(), (schema) => {
      const problem = Target.schemaProblem(schema)
      return problem === undefined
        ? Either.right(schema)
        : Either.left(ConfigError.InvalidData([], `Expected a PostgreSQL schema name, but it ${problem}`))
    }),
    name
  )

/**
 * The pool's options from Eventfold's variables (the README's table), each with its
 * description, over `defaults` given in code: a variable that is set replaces the
 * default, one left unset keeps it. The server comes from `DATABASE_URL`, then the PG*
 * variables for what the URL leaves out (as libpq reads them), then `defaults`:
 *
 * - `DATABASE_URL`; `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`;
 * - TLS: `PGSSLMODE` (the URL's `?sslmode=` first), `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`;
 * - `DATABASE_SCHEMA`: the schema of the tables;
 * - `DATABASE_POOL_SIZE`, `DATABASE_MAX_OVERFLOW`, `DATABASE_POOL_TIMEOUT`, `DATABASE_POOL_RECYCLE`
 *   (durations, a plain number in seconds), `DATABASE_POOL_PRE_PING`;
 * - `DATABASE_STATEMENT_TIMEOUT`, `DATABASE_LOCK_TIMEOUT`, `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`
 *   (durations, a plain number in milliseconds, as PostgreSQL reads them);
 * - `DATABASE_ECHO` (log every statement at Debug).
 *
 * Durations read as people write them: `30s`, `30 seconds`, `1500ms`, `1500 millis`,
 * `2m`, `1h30m`. A malformed value is a `ConfigError` naming its variable.
 *
 * @since 0.1.0
 * @category constructors
 */
export const config = (defaultOptions: Options = {}): Config.Config<Options> => {
  const d = defaultOptions
  const described = <A>(config: Config.Config<A>, description: string) => Config.withDescription(config, description)
  const durationIn = (name: string, unit: Settings.DurationUnit) => Settings.duration(name, { unit })
  const durationDefault = (value: Duration.DurationInput | undefined) =>
    value === undefined ? undefined : Duration.decode(value)
  return usable(
    Config.all({
      url: described(optional(urlConfig("DATABASE_URL")), "postgres://user:password@host:port/database[?sslmode=...]"),
      host: described(optional(Config.string("PGHOST")), "the server's host, where DATABASE_URL names none"),
      port: described(optional(Config.port("PGPORT")), "the server's port, where DATABASE_URL names none (5432)"),
      user: described(optional(Config.string("PGUSER")), "the user, where DATABASE_URL names none"),
      password: described(optional(Config.redacted("PGPASSWORD")), "the password, where DATABASE_URL has none"),
      database: described(optional(Config.string("PGDATABASE")), "the database, where DATABASE_URL names none"),
      applicationName: described(
        withDefault(Config.string("PGAPPNAME"), d.applicationName),
        "shown in pg_stat_activity; the pool's name in its metrics"
      ),
      sslMode: described(
        optional(Config.literal(...Target.sslModes)("PGSSLMODE")),
        "TLS: disable, allow, prefer, require, verify-ca or verify-full (the URL's sslmode first)"
      ),
      sslRootCert: described(
        optional(Config.string("PGSSLROOTCERT")),
        'the CA certificates (PEM file) the server\'s must chain to, or "system"'
      ),
      sslCert: described(optional(Config.string("PGSSLCERT")), "a client certificate (PEM file)"),
      sslKey: described(optional(Config.redacted("PGSSLKEY")), "the client certificate's key (PEM file)"),
      schema: described(
        withDefault(schemaConfig("DATABASE_SCHEMA"), d.schema),
        "the PostgreSQL schema of the tables (default: the server's search_path, public)"
      ),
      poolSize: described(
        Config.withDefault(Config.integer("DATABASE_POOL_SIZE"), d.poolSize ?? defaults.poolSize),
        "connections kept open once opened (spec: pool_size)"
      ),
      maxOverflow: described(
        Config.withDefault(Config.integer("DATABASE_MAX_OVERFLOW"), d.maxOverflow ?? defaults.maxOverflow),
        "extra connections under load (spec: max_overflow)"
      ),
      acquireTimeout: described(
        Config.withDefault(
          durationIn("DATABASE_POOL_TIMEOUT", "seconds"),
          Duration.decode(d.acquireTimeout ?? defaults.acquireTimeout)
        ),
        "how long a caller waits for a connection (spec: pool_timeout); a plain number is in seconds"
      ),
      recycle: described(
        withDefault(durationIn("DATABASE_POOL_RECYCLE", "seconds"), durationDefault(d.recycle)),
        "connections are replaced after this age (spec: pool_recycle); a plain number is in seconds"
      ),
      prePing: described(
        withDefault(Config.boolean("DATABASE_POOL_PRE_PING"), d.prePing),
        "check a connection idle for a while before handing it out (spec: pool_pre_ping)"
      ),
      statementTimeout: described(
        withDefault(durationIn("DATABASE_STATEMENT_TIMEOUT", "millis"), durationDefault(d.statementTimeout)),
        "the server cancels a statement that runs longer; a plain number is in milliseconds"
      ),
      lockTimeout: described(
        withDefault(durationIn("DATABASE_LOCK_TIMEOUT", "millis"), durationDefault(d.lockTimeout)),
        "the server cancels a statement that waits longer for a lock; a plain number is in milliseconds"
      ),
      idleInTransactionTimeout: described(
        withDefault(
          durationIn("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "millis"),
          durationDefault(d.idleInTransactionTimeout)
        ),
        "the server ends a session whose transaction idles longer; a plain number is in milliseconds"
      ),
      echo: described(
        withDefault(Config.boolean("DATABASE_ECHO"), d.echo),
        "log every statement's text (never its values) and duration at Debug (spec: echo)"
      )
    }).pipe(
      Config.map(({ url, ...env }): Options => {
        // The URL's parts first, then the PG* variables, then the defaults given in code:
        // a field is set only where the URL says nothing, since set fields replace the URL's.
        const fromUrl = url ?? (d.url === undefined ? undefined : { url: d.url, parts: parsedOrEmpty(d.url) })
        const parts = fromUrl?.parts ?? {}
        const unlessInUrl = <A>(inUrl: unknown, value: A | undefined): A | undefined =>
          inUrl === undefined ? value : undefined
        return {
          ...d,
          ...env,
          url: fromUrl?.url,
          host: unlessInUrl(parts.host, env.host ?? d.host),
          port: unlessInUrl(parts.port, env.port ?? d.port),
          user: unlessInUrl(parts.user, env.user ?? d.user),
          password: unlessInUrl(parts.password, env.password ?? d.password),
          database: unlessInUrl(parts.database, env.database ?? d.database),
          sslMode: unlessInUrl(parts.sslMode, env.sslMode ?? d.sslMode),
          sslRootCert: unlessInUrl(parts.sslRootCert, env.sslRootCert ?? d.sslRootCert),
          sslCert: unlessInUrl(parts.sslCert, env.sslCert ?? d.sslCert),
          sslKey: unlessInUrl(parts.sslKey, env.sslKey ?? d.sslKey)
        }
      })
    )
  )
}

const parsedOrEmpty = (url: Redacted.Redacted<string>): Target.UrlParts =>
  Either.getOrElse(Target.parseUrl(Redacted.value(url)), () => ({}))

/**
 * The pool from Eventfold's variables ({@link config}) over `defaults` given in code, the
 * preset an application that keeps to those names takes.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFromEnv = (
  defaultOptions: Options = {}
): Layer.Layer<
  PgPool | PgClient.PgClient | SqlClient.SqlClient,
  SqlError | ServerNotConfiguredError | ConfigError.ConfigError
> => layerConfig(config(defaultOptions))
