/**
 * Projections on PostgreSQL: the `ProjectionRuntime` that makes them exactly-once
 * and keeps each to one active runner, and a layer with everything a runner needs.
 *
 * - **Exactly once.** A batch runs in one transaction (`sql.withTransaction`): the
 *   handlers' writes (through the same `SqlClient`), the dead letters and the
 *   checkpoint commit or roll back together; each handler attempt is a savepoint.
 *   The checkpoint save is conditional on the batch's start position, so a runner
 *   that lost its lock, or raced a rebuild, rolls back instead of committing twice.
 * - **One active runner.** The lock is a session-level advisory lock
 *   (`pg_try_advisory_lock`) on a connection reserved from the pool for as long as
 *   the runner is active; a heartbeat on that connection notices when it is gone.
 *   When the process dies, PostgreSQL ends the session and frees the lock, and a
 *   standby (trying every `takeover` interval) becomes active.
 *
 * @since 0.1.0
 */
import * as SqlClient from "@effect/sql/SqlClient"
import type * as CheckpointStore from "@eventfold/core/CheckpointStore"
import type * as DeadLetterQueue from "@eventfold/core/DeadLetterQueue"
import * as Projection from "@eventfold/core/Projection"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Driver from "./internal/pgDriver.js"
import * as PgCheckpointStore from "./PgCheckpointStore.js"
import * as PgDeadLetterQueue from "./PgDeadLetterQueue.js"

/**
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** How often the lock's connection is checked while a runner is active. Default 2 seconds. */
  readonly heartbeat?: Duration.DurationInput
  /** A heartbeat slower than this counts as a lost lock. Default 10 seconds. */
  readonly heartbeatTimeout?: Duration.DurationInput
}

/** The advisory lock's key text; hashed to a bigint in SQL ({@link lockHash}). */
const lockKey = (name: string) => `eventfold.projection:${name}`

/**
 * The lock's key, `$1` hashed with the session's schema: advisory locks are the
 * database's, and a store in another schema (PgPool's `schema` option) runs projections
 * of the same names. The key of a store in `public` is the text alone, as before schemas.
 */
const lockHash = `hashtextextended(CASE WHEN coalesce(current_schema(), 'public') = 'public' THEN '' ELSE current_schema() || ':' END || $1, 0)`

class NotAcquired {
  readonly _tag = "NotAcquired"
}

/**
 * The runtime over the `SqlClient` in context.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeRuntime = (options: Options = {}) =>
  Effect.gen(function* () {
    const sql = yield* SqlClient.SqlClient
    const heartbeat = Duration.decode(options.heartbeat ?? "2 seconds")
    const heartbeatTimeout = Duration.decode(options.heartbeatTimeout ?? "10 seconds")

    const executor = Driver.sqlExecutor(sql)

    const failure = (projection: string, method: string) => (cause: Driver.DriverError) =>
      new Projection.ProjectionError({ projection, method, message: `${method} failed: ${cause.message}`, cause })

    // The effect's own failures pass through untouched; only the transaction's statements
    // (BEGIN, SAVEPOINT, COMMIT, ROLLBACK) become ProjectionError, typed on every path.
    const transaction = <A, E, R>(
      effect: Effect.Effect<A, E, R>
    ): Effect.Effect<A, E | Projection.ProjectionError, R> =>
      executor
        .transaction(effect)
        .pipe(Effect.catchIf(Driver.isDriverError, (error) => Effect.fail(failure("", "transaction")(error))))

    const lock: Projection.RuntimeService["lock"] = (name, { retry }) =>
      Effect.gen(function* () {
        const outer = yield* Effect.scope
        const attempt = Effect.gen(function* () {
          // A scope per attempt: a standby gives its connection back between attempts.
          const scope = yield* Scope.fork(outer, ExecutionStrategy.sequential)
          // Uninterruptible from taking the connection to registering the unlock: interrupted
          // in between, a connection could go back to the pool still holding the session lock
          // (and @effect/sql-pg's reserve loses a connection that arrives after an interrupt).
          const acquired = Effect.gen(function* () {
            const connection = yield* Scope.extend(Driver.reserve(sql), scope)
            let lockPid: number | undefined
            // Registered first: runs before the connection goes back to the pool (finalizers
            // run in reverse). A pooled connection must never keep the lock: when the unlock
            // fails and the session may live on, the session is ended.
            yield* Scope.addFinalizer(
              scope,
              connection.run(`SELECT pg_advisory_unlock(${lockHash})`, [lockKey(name)]).pipe(
                // The late cancel of an interrupted statement (pg_cancel_backend) can hit it.
                Effect.retry({ times: 3, while: (error) => error.code === "57014" }),
                Effect.catchAll((error) =>
                  Effect.logWarning(`projection ${name}: releasing the lock failed; ending its session`, error).pipe(
                    Effect.zipRight(lockPid === undefined ? Effect.void : sql`SELECT pg_terminate_backend(${lockPid})`),
                    Effect.catchAll((error) =>
                      Effect.logWarning(`projection ${name}: ending the lock's session failed`, error)
                    )
                  )
                )
              )
            )
            const [row] = yield* connection.run(
              `SELECT pg_try_advisory_lock(${lockHash}) AS locked, pg_backend_pid() AS pid,
                      (SELECT backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()) AS started`,
              [lockKey(name)]
            )
            const [locked, pid, started] = row ?? []
            if (locked !== true) return yield* Effect.fail(new NotAcquired())
            lockPid = Number(pid)
            return { connection, pid: Number(pid), started: String(started) }
          }).pipe(Effect.uninterruptible)
          return yield* acquired.pipe(Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))))
        })
        const { connection, pid, started } = yield* attempt.pipe(
          Effect.retry({ schedule: retry, while: (error) => error instanceof NotAcquired }),
          Effect.catchIf(
            (error): error is NotAcquired => error instanceof NotAcquired,
            () =>
              Effect.fail(
                new Projection.ProjectionError({
                  projection: name,
                  method: "lock",
                  message: "gave up waiting for the projection's lock"
                })
              )
          ),
          Effect.mapError((error) =>
            error instanceof Projection.ProjectionError ? error : failure(name, "lock")(error)
          )
        )
        // The lock lives as long as its session: the same session still there means it is held.
        const held = executor
          .run(
            { name: "", text: "SELECT 1 FROM pg_stat_get_activity($1::int) WHERE backend_start::text = $2::text" },
            [pid, started],
            (row) => row
          )
          .pipe(
            Effect.mapError(failure(name, "lock")),
            Effect.flatMap((rows) =>
              rows.length > 0
                ? Effect.void
                : Effect.fail(
                    new Projection.ProjectionError({
                      projection: name,
                      method: "lock",
                      message: `lost the projection's lock: its session (pid ${pid}) is gone`
                    })
                  )
            )
          )
        // Fails as soon as the lock's session is gone: the runner must stop at once. The query
        // is never interrupted (its cancel could hit the unlock that follows), only left behind.
        const lost = connection.run("SELECT 1", []).pipe(
          Effect.uninterruptible,
          Effect.disconnect,
          Effect.timeoutFail({
            duration: heartbeatTimeout,
            onTimeout: () => new Error(`no heartbeat answer within ${Duration.format(heartbeatTimeout)}`)
          }),
          Effect.repeat(Schedule.spaced(heartbeat)),
          Effect.zipRight(Effect.never),
          Effect.mapError(
            (cause) =>
              new Projection.ProjectionError({
                projection: name,
                method: "lock",
                message: `lost the projection's lock: ${cause.message}`,
                cause
              })
          )
        )
        return { lost, held }
      })

    return Projection.ProjectionRuntime.of({ name: "postgresql", exactlyOnce: true, transaction, lock })
  })

/**
 * The PostgreSQL `ProjectionRuntime`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRuntime = (
  options: Options = {}
): Layer.Layer<Projection.ProjectionRuntime, never, SqlClient.SqlClient> =>
  Layer.effect(Projection.ProjectionRuntime, makeRuntime(options))

/**
 * Everything a projection runner needs besides the `EventStore`: the runtime, the
 * `CheckpointStore` and the `DeadLetterQueue`, all on the `SqlClient` in context.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<
  Projection.ProjectionRuntime | CheckpointStore.CheckpointStore | DeadLetterQueue.DeadLetterQueue,
  never,
  SqlClient.SqlClient
> => Layer.mergeAll(layerRuntime(options), PgCheckpointStore.layer, PgDeadLetterQueue.layer)
