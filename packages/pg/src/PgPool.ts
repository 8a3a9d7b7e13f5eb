/**
 * The connection pool: one scoped `pg` pool behind `PgClient`/`SqlClient`, sized
 * and tuned with the spec's knobs, and readable statistics.
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
import type * as Scope from "effect/Scope"
import * as Pg from "pg"
import * as EmbeddedPostgres from "./EmbeddedPostgres.js"

/**
 * Where the server is: a URL, or its parts.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectionOptions {
  readonly url?: Redacted.Redacted<string>
  readonly host?: string
  readonly port?: number
  readonly user?: string
  readonly password?: Redacted.Redacted<string>
  readonly database?: string
  readonly ssl?: boolean
}

/**
 * @since 0.1.0
 * @category models
 */
export interface PoolOptions {
  /** Connections kept open once opened (spec: pool_size). Default 5. */
  readonly poolSize?: number
  /** Extra connections under load, closed after `idleTimeout` (spec: max_overflow). Default 10. */
  readonly maxOverflow?: number
  /** How long a caller waits for a connection before failing (spec: pool_timeout). Default 30 s. */
  readonly acquireTimeout?: Duration.DurationInput
  /** Connections are replaced after this age (spec: pool_recycle). Default: never. */
  readonly recycle?: Duration.DurationInput
  /** Validate a connection on checkout when it has been idle for a while (spec: pool_pre_ping). Default false. */
  readonly prePing?: boolean
  /** With `prePing`, how long a connection may sit idle and still be handed out unchecked. Default 5 s. */
  readonly prePingAfterIdle?: Duration.DurationInput
  /** Overflow connections idle this long are closed. Default 10 s. */
  readonly idleTimeout?: Duration.DurationInput
  /** Shown in `pg_stat_activity`. Default "eventfold". */
  readonly applicationName?: string
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
 * @since 0.1.0
 * @category models
 */
export class PgPool extends Context.Tag("@eventfold/pg/PgPool")<
  PgPool,
  {
    readonly stats: Effect.Effect<PoolStats>
    readonly options: Options
    /** The driver's pool behind `PgClient`, for hot paths that use prepared statements (see PgEventStore). */
    readonly pool: Pg.Pool
  }
>() {}

const defaults = {
  poolSize: 5,
  maxOverflow: 10,
  acquireTimeout: Duration.seconds(30),
  idleTimeout: Duration.seconds(10)
}

/**
 * A pg pool that can validate connections on checkout. pg-pool only verifies new
 * connections; a connection that sat idle while the server or the network dropped
 * it would fail the caller's first query.
 */
class ValidatingPool extends Pg.Pool {
  private readonly releasedAt = new WeakMap<Pg.PoolClient, number>()
  constructor(
    config: Pg.PoolConfig,
    private readonly pingAfterMillis: number | undefined
  ) {
    super(config)
    if (pingAfterMillis !== undefined) {
      this.on("release", (_error, client) => this.releasedAt.set(client, Date.now()))
    }
  }

  override connect(): Promise<Pg.PoolClient>
  override connect(
    callback: (err: Error | undefined, client: Pg.PoolClient | undefined, done: (release?: unknown) => void) => void
  ): void
  override connect(
    callback?: (err: Error | undefined, client: Pg.PoolClient | undefined, done: (release?: unknown) => void) => void
  ): Promise<Pg.PoolClient> | undefined {
    if (callback === undefined) {
      return new Promise((resolve, reject) =>
        this.connect((err, client) => (err || !client ? reject(err) : resolve(client)))
      )
    }
    const threshold = this.pingAfterMillis
    if (threshold === undefined && this.takeIdle(callback)) return undefined
    super.connect((err, client, done) => {
      if (err || client === undefined || threshold === undefined) return callback(err, client, done)
      const releasedAt = this.releasedAt.get(client)
      if (releasedAt === undefined || Date.now() - releasedAt < threshold) return callback(undefined, client, done)
      client.query("SELECT 1", (pingError) => {
        if (!pingError) return callback(undefined, client, done)
        // The connection is dead: destroy it and hand out a fresh one.
        done(pingError)
        super.connect((retryError, retryClient, retryDone) => callback(retryError, retryClient, retryDone))
      })
    })
    return undefined
  }

  /**
   * Hands out an idle connection at once, when no caller is waiting: what pg-pool does
   * on its next tick, without the tick, the checkout timer and the waiter record it
   * allocates on the way (about 3 us per statement, half the pool's cost). The
   * checkout itself is pg-pool's (`_acquireClient`): release, errors and events are
   * its own.
   */
  private takeIdle(
    callback: (err: Error | undefined, client: Pg.PoolClient | undefined, done: (release?: unknown) => void) => void
  ): boolean {
    const pool = this as unknown as PoolInternals
    if (
      pool.ending ||
      pool._pendingQueue?.length !== 0 ||
      pool._idle === undefined ||
      pool._idle.length === 0 ||
      typeof pool._acquireClient !== "function"
    ) {
      return false
    }
    const idle = pool._idle.pop()!
    clearTimeout(idle.timeoutId)
    idle.client.ref?.()
    pool._acquireClient.call(this, idle.client, { callback, timedOut: false }, idle.idleListener, false)
    return true
  }
}

/**
 * pg-pool's own fields (3.x), read by {@link ValidatingPool.takeIdle}; each is checked
 * before use, so another version only loses the shortcut.
 */
interface PoolInternals {
  readonly ending: boolean
  readonly _idle?: Array<{
    readonly client: Pg.PoolClient & { ref?: () => void }
    readonly idleListener: (error: Error) => void
    readonly timeoutId: ReturnType<typeof setTimeout> | undefined
  }>
  readonly _pendingQueue?: ReadonlyArray<unknown>
  readonly _acquireClient?: (
    client: Pg.PoolClient,
    pendingItem: {
      readonly callback: (
        err: Error | undefined,
        client: Pg.PoolClient | undefined,
        done: (release?: unknown) => void
      ) => void
      readonly timedOut: boolean
    },
    idleListener: (error: Error) => void,
    isNew: boolean
  ) => void
}

/**
 * Opens the pool (checking one connection) and closes it when the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: Options
): Effect.Effect<{ readonly pool: Pg.Pool; readonly stats: Effect.Effect<PoolStats> }, SqlError, Scope.Scope> =>
  Effect.gen(function* () {
    const poolSize = options.poolSize ?? defaults.poolSize
    const max = poolSize + (options.maxOverflow ?? defaults.maxOverflow)
    const config: Pg.PoolConfig = {
      ...(options.url === undefined ? {} : { connectionString: Redacted.value(options.url) }),
      ...(options.host === undefined ? {} : { host: options.host }),
      ...(options.port === undefined ? {} : { port: options.port }),
      ...(options.user === undefined ? {} : { user: options.user }),
      ...(options.password === undefined ? {} : { password: Redacted.value(options.password) }),
      ...(options.database === undefined ? {} : { database: options.database }),
      ...(options.ssl === undefined ? {} : { ssl: options.ssl }),
      min: poolSize,
      max,
      connectionTimeoutMillis: Duration.toMillis(options.acquireTimeout ?? defaults.acquireTimeout),
      idleTimeoutMillis: Duration.toMillis(options.idleTimeout ?? defaults.idleTimeout),
      ...(options.recycle === undefined ? {} : { maxLifetimeSeconds: Duration.toSeconds(options.recycle) }),
      application_name: options.applicationName ?? "eventfold"
    }
    const pool = new ValidatingPool(
      config,
      options.prePing === true ? Duration.toMillis(options.prePingAfterIdle ?? Duration.seconds(5)) : undefined
    )
    // An idle connection the server closed: pg-pool already removes it; we report it.
    pool.on("error", (error) =>
      Effect.runFork(Effect.logWarning(`PostgreSQL pool: idle connection lost: ${error.message}`))
    )
    yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => pool.query("SELECT 1"),
        catch: (cause) => new SqlError({ cause, message: "PgPool: cannot connect to PostgreSQL" })
      }),
      () => Effect.promise(() => pool.end())
    )
    const stats = Effect.sync(
      (): PoolStats => ({
        size: poolSize,
        max,
        open: pool.totalCount,
        checkedOut: pool.totalCount - pool.idleCount,
        idle: pool.idleCount,
        overflow: Math.max(0, pool.totalCount - poolSize),
        waiting: pool.waitingCount
      })
    )
    return { pool, stats }
  })

/**
 * `PgClient` and `SqlClient` over a new pool, and the `PgPool` service for its
 * statistics. The pool is closed when the layer is released.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<PgPool | PgClient.PgClient | SqlClient.SqlClient, SqlError> =>
  Layer.unwrapScoped(
    Effect.map(make(options), ({ pool, stats }) =>
      Layer.merge(
        PgClient.layerFromPool({
          acquire: Effect.succeed(pool),
          applicationName: options.applicationName ?? "eventfold"
        }),
        Layer.succeed(PgPool, { stats, options, pool })
      )
    )
  )

/**
 * The pool's settings from the environment:
 * `DATABASE_URL` (or `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`), and
 * `DATABASE_POOL_SIZE`, `DATABASE_MAX_OVERFLOW`, `DATABASE_POOL_TIMEOUT`,
 * `DATABASE_POOL_RECYCLE` (durations such as "30 seconds"), `DATABASE_POOL_PRE_PING`.
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
      prePing: Config.boolean("DATABASE_POOL_PRE_PING")
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
 * The pool from {@link config}; when the environment names no server and
 * `embedded` is given, an embedded PostgreSQL is started (and stopped with the
 * layer) so that the program needs nothing installed.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  defaultOptions: PoolOptions = {},
  fallback?: { readonly embedded: EmbeddedPostgres.Options }
): Layer.Layer<
  PgPool | PgClient.PgClient | SqlClient.SqlClient,
  SqlError | ConfigError.ConfigError | EmbeddedPostgres.EmbeddedPostgresError
> =>
  Layer.unwrapScoped(
    Effect.gen(function* () {
      const options = yield* config(defaultOptions)
      if (hasServer(options) || fallback === undefined) return layer(options)
      const server = yield* EmbeddedPostgres.start(fallback.embedded)
      return layer({ ...options, url: server.url })
    })
  )
